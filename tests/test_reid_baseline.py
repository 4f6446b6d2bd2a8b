"""Strong baseline (ResNet + BNNeck + ID/triplet/center losses): shapes and parameter groups, the frozen
BNNeck shift under real optimizer steps, train vs eval BatchNorm, the test-feature modes, the centres'
own rescaled SGD, ImageNet loading from a torchvision file, and a tiny network that learns a toy batch.
Backbone parity with torchvision lives in tests/test_resnet.py.

Speed: a ResNet with one block per stage on 32x16 images; one shared model whose loss gradient and
forward are compiled once; other configurations reuse its outputs through `BaselineModel.losses` or run
eagerly (eager primitives are cached by shape, so repeated eager forwards are cheap)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from jaxmatch import convert, models
from jaxmatch.losses import center_loss
from jaxmatch.models.reid import BaselineModel, BNNeck
from jaxmatch.train.state import make_optimizer

from conftest import optional_import

TINY = (1, 1, 1, 1)
IMG = (32, 16)
NUM_IDS, PER_ID = 4, 2
DIM = 16  # the projection variant (NFormer's encoder shape, smaller)


def model_cfg(**kw) -> ConfigDict:
  base = dict(name="baseline", depth=50, stage_sizes=TINY, last_stride=1, stem_relu=True, embed_dim=DIM,
              num_classes=NUM_IDS, neck="bnneck", neck_feat="after", feat_norm=True, id_loss_weight=1.0,
              label_smoothing=0.1, triplet_weight=1.0, triplet_margin=0.3, triplet_squared=False,
              triplet_normalize=False, center_loss_weight=5e-4, pretrained="", dtype="float32")
  base.update(kw)
  return ConfigDict(base)


def train_cfg(lr=1e-3, **kw) -> ConfigDict:
  base = dict(optimizer="adam", b1=0.9, b2=0.999, eps=1e-8, weight_decay=5e-4, momentum=0.0,
              grad_clip_norm=0.0, schedule="constant", warmup_steps=0, milestones=(), gamma=0.1,
              learning_rates=dict(backbone=lr, head=lr, centers=0.5),
              group_overrides=dict(centers=dict(optimizer="sgd", weight_decay=0.0, grad_scale=1 / 5e-4)))
  base.update(kw)
  return ConfigDict(base)


def toy_batch(seed=0, noise=0.3, view_seed=None):
  """NUM_IDS identities, each a fixed random low-frequency pattern, PER_ID noisy views each."""
  protos = np.random.default_rng(seed).normal(size=(NUM_IDS, 4, 2, 3))
  protos = np.repeat(np.repeat(protos, IMG[0] // 4, axis=1), IMG[1] // 2, axis=2)
  labels = np.repeat(np.arange(NUM_IDS), PER_ID)
  views = np.random.default_rng(seed + 1 if view_seed is None else view_seed)
  images = protos[labels] + noise * views.normal(size=(len(labels),) + IMG + (3,))
  return {"image": jnp.asarray(images, jnp.float32), "label": jnp.asarray(labels, jnp.int32)}


class Tiny:
  """The shared tiny baseline; its loss gradient and forward are compiled once."""

  def __init__(self):
    self.model = BaselineModel(model_cfg(), img_size=IMG)
    self.params, self.state = self.model.init_variables(jax.random.key(0))
    self.loss = jax.jit(self.model.loss_fn)
    self.value_and_grad = jax.jit(jax.value_and_grad(self.model.loss_fn, has_aux=True))
    self.forward = jax.jit(self.model.module.apply, static_argnames=("train", "mutable"))

  def net_params(self, params=None):
    return {k: v for k, v in (self.params if params is None else params).items() if k != "centers"}

  def grad(self, params, batch):
    return self.value_and_grad(params, self.state, batch, None)[1]

  def train_outputs(self, batch):
    return self.forward({"params": self.net_params(), **self.state}, batch["image"], train=True,
                        mutable=("batch_stats",))


@pytest.fixture(scope="module")
def tiny():
  return Tiny()


def test_registry_builds_the_baseline():
  cfg = ConfigDict(dict(model=model_cfg(), data=dict(img_size=IMG)))
  assert isinstance(models.build(cfg), BaselineModel)


def test_shapes_and_parameter_groups(tiny):
  model, params, state = tiny.model, tiny.params, tiny.state
  assert set(params) == {"backbone", "projection", "neck", "centers"}
  assert params["projection"]["kernel"].shape == (2048, DIM) and model.feat_dim == DIM
  assert params["centers"].shape == (NUM_IDS, DIM)
  assert params["neck"]["classifier"]["kernel"].shape == (DIM, NUM_IDS)
  assert "bias" not in params["neck"]["classifier"]
  assert set(state["batch_stats"]) == {"backbone", "neck"}
  labels = model.param_labels(params)
  assert set(jax.tree.leaves(labels["backbone"])) == {"backbone"}
  assert labels["neck"]["bottleneck"]["bias"] == "frozen"   # outside the official optimizer
  labels["neck"]["bottleneck"]["bias"] = "head"
  assert set(jax.tree.leaves([labels["neck"], labels["projection"]])) == {"head"}
  assert labels["centers"] == "centers"
  out = tiny.forward({"params": tiny.net_params(), **state}, toy_batch()["image"])
  assert out["global_feat"].shape == out["feat"].shape == (NUM_IDS * PER_ID, DIM)
  assert out["logits"].shape == (NUM_IDS * PER_ID, NUM_IDS)
  # Official inits: classifier N(0, 0.001^2), BNNeck weight 1 and bias 0.
  assert 5e-4 < float(jnp.std(params["neck"]["classifier"]["kernel"])) < 2e-3
  assert np.all(np.asarray(params["neck"]["bottleneck"]["scale"]) == 1)
  assert np.all(np.asarray(params["neck"]["bottleneck"]["bias"]) == 0)


def test_bnneck_bias_gets_no_gradient_and_stays_zero_after_optimizer_steps(tiny):
  params, batch = tiny.params, toy_batch()
  grads = tiny.grad(params, batch)
  assert np.all(np.asarray(grads["neck"]["bottleneck"]["bias"]) == 0)
  assert np.any(np.asarray(grads["neck"]["bottleneck"]["scale"]) != 0)
  for opt in ("adam", "adamw", "sgd"):
    tx = make_optimizer(train_cfg(optimizer=opt, momentum=0.9), tiny.model.param_labels(params))
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    p = optax.apply_updates(params, updates)
    assert np.all(np.asarray(p["neck"]["bottleneck"]["bias"]) == 0), opt
    assert np.any(np.asarray(p["neck"]["bottleneck"]["scale"]) != 1.0), opt


def test_train_mode_uses_batch_statistics_and_updates_running_ones(tiny):
  batch = toy_batch()
  out, updates = tiny.train_outputs(batch)
  g = np.asarray(out["global_feat"], np.float64)
  # Train-mode BNNeck output: batch-normalised with the biased batch variance (scale 1, bias 0).
  np.testing.assert_allclose(out["feat"], (g - g.mean(0)) / np.sqrt(g.var(0) + 1e-5), atol=2e-4)
  neck = updates["batch_stats"]["neck"]["bottleneck"]
  n = len(g)
  np.testing.assert_allclose(neck["mean"], 0.1 * g.mean(0), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(neck["var"], 0.9 + 0.1 * g.var(0) * n / (n - 1), rtol=1e-4)
  # Other rows of the batch change image 0's train-mode feature, never its eval-mode (test) feature.
  other = dict(batch, image=batch["image"].at[1:].set(toy_batch(seed=9)["image"][1:]))
  out_other, _ = tiny.train_outputs(other)
  assert not np.allclose(out_other["feat"][0], out["feat"][0], atol=1e-3)
  net = {"params": tiny.net_params(), **tiny.state}
  np.testing.assert_allclose(tiny.forward(net, other["image"])["feat"][0],
                             tiny.forward(net, batch["image"])["feat"][0], atol=1e-6)


def test_embed_modes(tiny):
  params, batch = tiny.params, toy_batch()
  # Non-trivial running statistics so that 'after' and 'before' differ.
  rs = jax.random.split(jax.random.key(3), 2)
  bn = {"mean": jax.random.normal(rs[0], (DIM,)) * 0.1,
        "var": jax.random.uniform(rs[1], (DIM,), minval=0.5, maxval=1.5)}
  state = {"batch_stats": {**tiny.state["batch_stats"], "neck": {"bottleneck": bn}}}
  g = np.asarray(tiny.forward({"params": tiny.net_params(), **state}, batch["image"])["global_feat"])

  def embed(**kw):
    return np.asarray(BaselineModel(model_cfg(**kw), img_size=IMG).embed(params, state, batch))

  np.testing.assert_allclose(embed(neck_feat="before", feat_norm=False), g, atol=1e-5)
  after = embed(neck_feat="after", feat_norm=False)
  np.testing.assert_allclose(after, (g - bn["mean"]) / np.sqrt(np.asarray(bn["var"]) + 1e-5), rtol=1e-4,
                             atol=1e-5)
  normed = embed(neck_feat="after")
  np.testing.assert_allclose(normed, after / np.linalg.norm(after, axis=1, keepdims=True), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(tiny.model.embed(params, state, batch, normalize=False)), after,
                             rtol=1e-5)
  with pytest.raises(ValueError, match="neck_feat"):
    embed(neck_feat="middle")


def test_no_neck_without_projection_classifies_the_pooled_feature():
  model = BaselineModel(model_cfg(neck="no", embed_dim=0, center_loss_weight=0.0), img_size=IMG)
  params, state = model.init_variables(jax.random.key(4))
  assert set(params) == {"backbone", "classifier"} and "bias" in params["classifier"]
  assert params["classifier"]["kernel"].shape == (2048, NUM_IDS) and model.feat_dim == 2048
  batch = toy_batch()
  out = model.module.apply({"params": params, **state}, batch["image"])
  np.testing.assert_array_equal(out["feat"], out["global_feat"])
  assert model.embed(params, state, batch).shape == (NUM_IDS * PER_ID, 2048)
  terms = model.losses(params, out, batch["label"])
  assert np.isfinite(float(terms["total"])) and "center_loss" not in terms


def test_loss_is_the_configured_weighted_sum(tiny):
  params, batch = tiny.params, toy_batch()
  loss, (new_state, m) = tiny.loss(params, tiny.state, batch, None)
  np.testing.assert_allclose(float(loss), float(m["id_loss"] + m["triplet_loss"] + 5e-4 * m["center_loss"]),
                             rtol=1e-6)
  assert float(m["dist_ap"]) > 0 and float(m["dist_an"]) > 0 and 0 <= float(m["accuracy"]) <= 1
  assert not np.allclose(new_state["batch_stats"]["neck"]["bottleneck"]["mean"], 0)
  outputs, _ = tiny.train_outputs(batch)

  def terms(**kw):
    return BaselineModel(model_cfg(**kw), img_size=IMG).losses(params, outputs, batch["label"])

  np.testing.assert_allclose(float(terms()["total"]), float(loss), rtol=1e-5)
  w = terms(id_loss_weight=0.5, triplet_weight=2.0, center_loss_weight=1e-2)
  np.testing.assert_allclose(float(w["total"]), float(0.5 * w["id_loss"] + 2 * w["triplet_loss"]
                                                      + 1e-2 * w["center_loss"]), rtol=1e-6)
  soft, hard = terms(triplet_margin=0.0)["triplet_loss"], terms()["triplet_loss"]
  assert float(soft) > 0 and float(soft) != float(hard)
  assert float(terms(triplet_squared=True)["dist_ap"]) != float(m["dist_ap"])
  assert float(terms(triplet_normalize=True)["dist_ap"]) <= 2.0  # unit vectors
  assert "triplet_loss" not in terms(triplet_weight=0.0)
  no_smooth = float(terms(label_smoothing=0.0)["id_loss"])
  assert no_smooth != float(m["id_loss"])


def test_centres_move_with_their_own_sgd_on_the_unweighted_gradient(tiny):
  params, batch = tiny.params, toy_batch()
  tx = make_optimizer(train_cfg(), tiny.model.param_labels(params))
  updates, _ = tx.update(tiny.grad(params, batch), tx.init(params), params)
  feats = tiny.train_outputs(batch)[0]["global_feat"]
  unweighted = jax.grad(center_loss, argnums=2)(feats, batch["label"], params["centers"])
  np.testing.assert_allclose(updates["centers"], -0.5 * unweighted, rtol=1e-4, atol=1e-6)


def test_tiny_network_learns_a_toy_batch(tiny):
  params, state = tiny.params, tiny.state
  tx = make_optimizer(train_cfg(lr=3e-3), tiny.model.param_labels(params))
  opt_state = tx.init(params)
  update = jax.jit(tx.update)
  batch = toy_batch(seed=6)
  history = []
  for _ in range(20):
    (loss, (state, metrics)), grads = tiny.value_and_grad(params, state, batch, None)
    updates, opt_state = update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    history.append(float(loss))
  assert np.all(np.isfinite(history))
  assert history[-1] < 0.6 * history[0], history
  assert float(metrics["accuracy"]) == 1.0 and float(metrics["triplet_loss"]) < 1e-3
  # Fresh noisy views of the same identities: nearest neighbours of the test feature share the id.
  f = np.asarray(tiny.model.embed(params, state, toy_batch(seed=6, view_seed=100)))
  d = ((f[:, None] - f[None]) ** 2).sum(-1) + np.eye(len(f)) * 1e9
  labels = np.repeat(np.arange(NUM_IDS), PER_ID)
  assert np.mean(labels[d.argmin(1)] == labels) >= 0.75


def test_pretrained_backbone_comes_from_a_torchvision_file(tmp_path):
  torchvision = optional_import("torchvision")
  sd = {k: v.numpy() for k, v in torchvision.models.resnet50().state_dict().items()}
  path = tmp_path / "resnet50.npz"
  np.savez(path, **sd)
  config = ConfigDict(dict(model=model_cfg(stage_sizes=None, pretrained=str(path)), data=dict(img_size=IMG),
                           train=dict(seed=0)))
  fresh = jax.eval_shape(models.build(config).init_variables, jax.random.key(0))
  fresh = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), {"params": fresh[0], **fresh[1]})
  variables = convert.imagenet_start(config, sd, fresh)
  loaded, stats = variables["params"], variables["batch_stats"]
  np.testing.assert_array_equal(loaded["backbone"]["stem"]["conv1"]["kernel"],
                                np.transpose(sd["conv1.weight"], (2, 3, 1, 0)))
  np.testing.assert_array_equal(stats["backbone"]["layer4_2"]["bn3"]["var"], sd["layer4.2.bn3.running_var"])
  assert "neck" in loaded  # the head keeps its fresh initialisation
  params, state = convert.with_configured_pretrained(config, fresh["params"],
                                                     {"batch_stats": fresh["batch_stats"]})
  np.testing.assert_array_equal(params["backbone"]["stem"]["conv1"]["kernel"],
                                np.transpose(sd["conv1.weight"], (2, 3, 1, 0)))
  assert "neck" in state["batch_stats"]
  with pytest.raises(ValueError, match="stage_sizes"):
    BaselineModel(model_cfg(pretrained=str(path)), img_size=IMG).init_variables(jax.random.key(0))


@pytest.mark.parametrize("kw,match", [
    (dict(neck="bn"), "neck must be"),
    (dict(num_classes=1), "num_classes"),
    (dict(stage_sizes=(1, 1)), "4 stages"),
    (dict(dtype="float64"), "dtype"),
    (dict(depth=34, stage_sizes=None), "depth"),
])
def test_bad_config_is_named(kw, match):
  with pytest.raises(ValueError, match=match):
    BaselineModel(model_cfg(**kw), img_size=IMG).init_variables(jax.random.key(0))


def test_bad_image_size_is_named():
  with pytest.raises(ValueError, match="img_size"):
    BaselineModel(model_cfg(), img_size=(32, 16, 3)).init_variables(jax.random.key(0))


def test_official_stem_without_relu():
  """stem_relu=False is the BoT/NFormer stem: same parameters, different features."""
  model = BaselineModel(model_cfg(stem_relu=False), img_size=IMG)
  params, state = model.init_variables(jax.random.key(0))
  with_relu = BaselineModel(model_cfg(), img_size=IMG)
  batch = toy_batch()
  assert not np.allclose(model.embed(params, state, batch), with_relu.embed(params, state, batch))


def test_bnneck_rejects_unpooled_input():
  with pytest.raises(ValueError, match=r"\[batch, dim\]"):
    BNNeck(3).init(jax.random.key(0), jnp.zeros((2, 4, 4, 8)))
