"""The ResNet BNNeck strong baseline against the official NFormer / BoT encoder (`nformer_encoder_small`:
the official `Baseline` with one bottleneck per stage, 256x128 inputs, projection 2048 -> 256, 10 ids).

* converter: every official key mapped or ignored with a reason, exact round trip, NFormer / BoT /
  DataParallel prefixes, mismatched checkpoints named key by key, the classifier size and its drop;
* eval: every stored stage (stem max-pool, layer1..4 of image 0, pooled, projected, after the BNNeck) and
  both test features;
* one training step of the recipe (configs/baseline_market.py, only the network shrunk to the fixture's):
  train-mode outputs, every loss term, gradients, BatchNorm running statistics, and the parameters after
  the shared loop's step with the recipe's optimizer (Adam + coupled L2 at the epoch-1 warmup lr, centres
  by their own SGD on the unweighted gradient);
* `python -m jaxmatch.convert`'s workdir writer on the official file.

The loss functions themselves are checked against this fixture in tests/test_reid_losses.py; here the
model's wiring of them (which feature, which weights) is."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, load_fixture

from jaxmatch.config_utils import load_config
from jaxmatch.convert import CheckpointMismatchError, KeyAccountant, from_torch
from jaxmatch.convert.baseline import (NFORMER_REASON, NUM_BATCHES_REASON, baseline_from_torch,
                                       baseline_to_torch, encoder_from_torch)
from jaxmatch.models.reid import BaselineModel
from jaxmatch.train.loop import make_train_step
from jaxmatch.train.state import create_state, make_optimizer

IMG = (256, 128)
STAGES = (1, 1, 1, 1)
NUM_IDS, EMBED = 10, 256
# Eval: float32 port vs float32 official, values O(1-6). The official code itself moves by up to 3.8e-6
# between 1 and 2 CPU threads and by 4.8e-6 against float64 (manifest tolerances_observed).
EVAL_ATOL = 1e-5
# Gradients: train-mode BatchNorm backward and ReLU / max-pool kinks make fp32 gradients depend on the
# summation order: per-tensor relative L2 error <= 2.6e-3 official fp32 vs fp64 (manifest advice 1e-2).
GRAD_REL_L2 = 1e-2
STEPS_PER_EPOCH = 100  # any epoch length: the first step runs at epoch 1 of the warmup either way
EPOCH1_LR = 3.5e-4 * (0.01 + 0.99 * 1 / 10)  # the official lr of the fixture's step (manifest lr_used)


@pytest.fixture(scope="module")
def fx():
  return load_fixture("nformer_encoder_small")


@pytest.fixture(scope="module")
def official_sd(fx):
  """The official encoder state_dict: keys exactly as in nformer_model.pth (prefix 'backbone.')."""
  return {k[len("sd/"):]: v for k, v in fx.items() if k.startswith("sd/")}


@pytest.fixture(scope="module")
def recipe():
  """configs/baseline_market.py as shipped (stem without ReLU, last stride 1, BNNeck, losses, optimizer)
  with only the network sized like the fixture: one block per stage, NFormer's 256-d projection."""
  config = load_config(os.path.join(REPO, "configs", "baseline_market.py"))
  config.model.update(dict(stage_sizes=STAGES, embed_dim=EMBED, num_classes=NUM_IDS))
  return config


@pytest.fixture(scope="module")
def converted(official_sd, recipe):
  return baseline_from_torch(official_sd, recipe.model)


def model_cfg(recipe, **kw):
  cfg = recipe.model.copy_and_resolve_references()
  cfg.update(kw)
  return cfg


def as_jax(variables):
  params = jax.tree.map(jnp.asarray, variables["params"])
  return params, {"batch_stats": jax.tree.map(jnp.asarray, variables["batch_stats"])}


def images(fx):
  return jnp.asarray(np.transpose(fx["in/images"], (0, 2, 3, 1)))  # NCHW -> NHWC


def nchw(x):
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


# ---------------------------------------------------------------- converter

def test_every_official_key_is_mapped_or_ignored_with_a_reason(official_sd, recipe):
  with_head = dict(official_sd)
  with_head["nformer.h.0.attn.c_attn.w"] = np.zeros((256, 768), np.float32)  # the wrapper's other half
  with_head["nformer.classifier.weight"] = np.zeros((751, 256), np.float32)
  acc = KeyAccountant(with_head)
  encoder_from_torch(acc, recipe.model)
  acc.finish()
  tracked = {k for k in official_sd if k.endswith("num_batches_tracked")}
  assert len(tracked) == 18  # 17 ResNet BatchNorms + the BNNeck
  assert acc.ignored == {**{k: NUM_BATCHES_REASON for k in tracked},
                         "nformer.h.0.attn.c_attn.w": NFORMER_REASON, "nformer.classifier.weight": NFORMER_REASON}


def test_round_trip_is_exact(official_sd, recipe, converted):
  back = baseline_to_torch(converted, recipe.model)
  assert sorted(back) == sorted(k for k in official_sd if not k.endswith("num_batches_tracked"))
  for key, value in back.items():
    np.testing.assert_array_equal(value, official_sd[key].astype(np.float32), err_msg=key)
  # The flax tree is exactly the model's (centres drawn fresh: the official file has none).
  expected = jax.eval_shape(BaselineModel(recipe.model, img_size=IMG).init_variables, jax.random.key(0))
  assert jax.tree.map(np.shape, converted["params"]) == jax.tree.map(lambda s: s.shape, expected[0])
  assert jax.tree.map(np.shape, converted["batch_stats"]) == jax.tree.map(lambda s: s.shape,
                                                                          expected[1]["batch_stats"])


def test_bot_and_dataparallel_prefixes_convert_alike(official_sd, recipe, converted):
  bot = {k[len("backbone."):]: v for k, v in official_sd.items()}  # base.*, bottleneck.*, classifier.*
  wrapped = {f"module.{k}": v for k, v in official_sd.items()}
  for sd in (bot, wrapped):
    other = baseline_from_torch(sd, recipe.model)
    jax.tree.map(np.testing.assert_array_equal, other, converted)
  assert baseline_to_torch(converted, recipe.model, prefix="").keys() <= bot.keys()


def test_mismatched_checkpoint_names_every_key(official_sd, recipe):
  broken = dict(official_sd)
  broken["backbone.base.layer1.0.conv2.weight"] = broken["backbone.base.layer1.0.conv2.weight"][:, :32]
  del broken["backbone.base.layer3.0.bn3.running_var"]
  broken["backbone.base.fc.weight"] = np.zeros((1000, 2048), np.float32)
  with pytest.raises(CheckpointMismatchError) as err:
    baseline_from_torch(broken, recipe.model)
  message = str(err.value)
  assert "missing (1)" in message and "backbone.base.layer3.0.bn3.running_var [1024]" in message
  assert "unexpected (1)" in message and "backbone.base.fc.weight" in message
  assert "wrong shape (1)" in message
  assert "backbone.base.layer1.0.conv2.weight: checkpoint [64, 32, 3, 3], model expects [64, 64, 3, 3]" in message


def test_projection_mismatch_hints_at_embed_dim(official_sd, recipe):
  with pytest.raises(CheckpointMismatchError, match="set config.model.embed_dim=256"):
    baseline_from_torch(official_sd, model_cfg(recipe, embed_dim=0))
  plain_bot = {k: v for k, v in official_sd.items() if ".projection." not in k}
  with pytest.raises(CheckpointMismatchError, match="set config.model.embed_dim=0"):
    baseline_from_torch(plain_bot, recipe.model)


def test_classifier_of_other_identities_is_an_error_unless_dropped(official_sd, recipe, converted):
  cfg = model_cfg(recipe, num_classes=7)
  with pytest.raises(CheckpointMismatchError, match="covers 10 training identities.*drop_classifier=True"):
    baseline_from_torch(official_sd, cfg)
  dropped = baseline_from_torch(official_sd, cfg, drop_classifier=True)
  kernel = dropped["params"]["neck"]["classifier"]["kernel"]
  assert kernel.shape == (EMBED, 7) and 0 < np.std(kernel) < 0.01  # official N(0, 0.001^2) init
  assert dropped["params"]["centers"].shape == (7, EMBED)
  same = lambda a, b: np.testing.assert_array_equal(a, b)  # noqa: E731
  jax.tree.map(same, dropped["params"]["backbone"], converted["params"]["backbone"])
  jax.tree.map(same, dropped["batch_stats"], converted["batch_stats"])
  no_classifier = {k: v for k, v in official_sd.items() if "classifier" not in k}
  assert baseline_from_torch(no_classifier, recipe.model, drop_classifier=True)["params"]["neck"]["classifier"]


def test_bot_without_neck_has_a_biased_classifier_on_the_pooled_feature(official_sd, recipe):
  """BoT's NECK 'no': no projection, no BNNeck, nn.Linear(2048 -> ids) with bias."""
  rng = np.random.default_rng(0)
  sd = {k[len("backbone."):]: v for k, v in official_sd.items() if ".base." in k}
  sd["classifier.weight"] = rng.normal(size=(NUM_IDS, 2048)).astype(np.float32)
  sd["classifier.bias"] = rng.normal(size=(NUM_IDS,)).astype(np.float32)
  cfg = model_cfg(recipe, embed_dim=0, neck="no")
  variables = baseline_from_torch(sd, cfg)
  np.testing.assert_array_equal(variables["params"]["classifier"]["kernel"], sd["classifier.weight"].T)
  np.testing.assert_array_equal(variables["params"]["classifier"]["bias"], sd["classifier.bias"])
  assert "neck" not in variables["params"] and variables["params"]["centers"].shape == (NUM_IDS, 2048)
  back = baseline_to_torch(variables, cfg, prefix="")
  assert sorted(back) == sorted(k for k in sd if not k.endswith("num_batches_tracked"))


def test_stem_relu_model_refuses_official_weights(official_sd, recipe):
  with pytest.raises(ValueError, match="stem_relu=False"):
    baseline_from_torch(official_sd, model_cfg(recipe, stem_relu=True))


def test_registered_for_the_baseline_recipe(official_sd, recipe, converted):
  variables = from_torch(recipe, official_sd)
  jax.tree.map(np.testing.assert_array_equal, variables["params"]["neck"], converted["params"]["neck"])


# ---------------------------------------------------------------- eval forward

@pytest.fixture(scope="module")
def eval_outputs(fx, recipe, converted):
  """One jitted eval forward with the ResNet's output (stem and every block) captured."""
  model = BaselineModel(recipe.model, img_size=IMG)
  params, state = as_jax(converted)
  net = {k: v for k, v in params.items() if k != "centers"}
  backbone_only = lambda module, method: module.name == "backbone" and method == "__call__"  # noqa: E731
  forward = jax.jit(lambda p, s, x: model.module.apply({"params": p, **s}, x, train=False,
                                                       capture_intermediates=backbone_only))
  outputs, captured = jax.device_get(forward(net, state, images(fx)))
  resnet = captured["intermediates"]["backbone"]["__call__"][0]
  return outputs, resnet


@pytest.mark.parametrize("stage", ["stem_maxpool", "layer1", "layer2", "layer3", "layer4"])
def test_eval_stages_match_official(fx, eval_outputs, stage):
  _, resnet = eval_outputs
  ours = resnet["stem"] if stage == "stem_maxpool" else resnet["blocks"][int(stage[-1]) - 1][-1]
  official = fx[f"out/{stage}_imgs0-0"]
  np.testing.assert_allclose(nchw(ours[:1]), official, rtol=0, atol=EVAL_ATOL)
  if stage == "stem_maxpool":
    assert official.min() < 0  # no ReLU in the official stem: negative values survive the max-pool


def test_eval_features_match_official(fx, eval_outputs):
  outputs, resnet = eval_outputs
  gap = np.mean(resnet["blocks"][3][-1], axis=(1, 2))
  np.testing.assert_allclose(gap, fx["out/gap"], rtol=0, atol=EVAL_ATOL)
  np.testing.assert_allclose(outputs["global_feat"], fx["out/global_feat"], rtol=0, atol=EVAL_ATOL)
  np.testing.assert_allclose(outputs["feat"], fx["out/feat"], rtol=0, atol=EVAL_ATOL)


@pytest.mark.parametrize("neck_feat,key", [("after", "out/feat"), ("before", "out/feat_neck_before")])
def test_test_feature_matches_official(fx, recipe, converted, neck_feat, key):
  model = BaselineModel(model_cfg(recipe, neck_feat=neck_feat), img_size=IMG)
  params, state = as_jax(converted)
  embed = jax.jit(lambda p, s, b: model.embed(p, s, b, normalize=False))
  np.testing.assert_allclose(embed(params, state, {"image": images(fx)}), fx[key], rtol=0, atol=EVAL_ATOL)
  # The recipe's FEAT_NORM: the official L2-normalised feature.
  official = fx[key] / np.linalg.norm(fx[key], axis=1, keepdims=True)
  normalized = jax.jit(model.embed)(params, state, {"image": images(fx)})
  np.testing.assert_allclose(normalized, official, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- one training step

@pytest.fixture(scope="module")
def train_step(fx, recipe, converted):
  """The fixture's official iteration through the shared loop's step with the recipe's optimizer;
  train-mode outputs and gradients from the same jitted call."""
  model = BaselineModel(recipe.model, img_size=IMG)
  params, state = as_jax(converted)
  params["centers"] = jnp.asarray(fx["in/center_criterion.centers"], jnp.float32)
  tx = make_optimizer(recipe.train, model.param_labels(params), total_steps=120 * STEPS_PER_EPOCH,
                      steps_per_epoch=STEPS_PER_EPOCH)
  step = make_train_step(model.loss_fn, tx)
  batch = {"image": images(fx), "label": jnp.asarray(fx["in/labels"], jnp.int32)}

  def run(params, state, batch):
    net = {k: v for k, v in params.items() if k != "centers"}
    outputs, _ = model.module.apply({"params": net, **state}, batch["image"], train=True, mutable=["batch_stats"])
    grads = jax.grad(lambda p: model.loss_fn(p, state, batch, None)[0])(params)
    new_state, metrics = step(create_state(params, state, tx), batch, jax.random.key(0))
    return {"outputs": outputs, "grads": grads, "state": new_state, "metrics": metrics}

  out = jax.device_get(jax.jit(run)(params, state, batch))
  out["before"] = jax.device_get(params)
  return out


def test_train_forward_and_losses_match_official(fx, train_step):
  outputs, metrics = train_step["outputs"], train_step["metrics"]
  # Logits O(2) after batch-statistics BatchNorms: official fp32 vs fp64 differ by 5.2e-6.
  np.testing.assert_allclose(outputs["logits"], fx["train/cls_score"], rtol=0, atol=2 * EVAL_ATOL)
  np.testing.assert_allclose(outputs["global_feat"], fx["train/global_feat"], rtol=0, atol=EVAL_ATOL)
  assert bool(metrics["finite"])
  for ours, official in (("loss", "loss_total"), ("id_loss", "loss_xent_labelsmooth"),
                         ("triplet_loss", "loss_triplet"), ("center_loss", "loss_center")):
    np.testing.assert_allclose(metrics[ours], fx[f"train/{official}"], rtol=1e-5, err_msg=ours)
  # The metrics are the batch means of the official per-anchor hardest distances.
  np.testing.assert_allclose(metrics["dist_ap"], fx["train/dist_ap"].mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["dist_an"], fx["train/dist_an"].mean(), rtol=1e-5)


def rel_l2(ours, official):
  return np.linalg.norm(ours - official) / np.linalg.norm(official)


def test_gradients_match_official(fx, recipe, train_step):
  grads = baseline_to_torch({"params": train_step["grads"]}, recipe.model)
  stored = [k[len("train/grad/"):] for k in fx if k.startswith("train/grad/")]
  assert len(stored) == 47
  zero = "backbone.base.bn1.bias"  # exactly 0 in exact arithmetic (manifest): both sides are round-off
  for key in stored:
    if key == zero:
      continue
    assert rel_l2(grads[key], fx[f"train/grad/{key}"]) < GRAD_REL_L2, key
  scale = np.linalg.norm(grads["backbone.base.bn1.weight"])
  assert np.linalg.norm(grads[zero]) < 1e-5 * scale and np.linalg.norm(fx[f"train/grad/{zero}"]) < 1e-5 * scale
  # The frozen BNNeck shift (official requires_grad False) gets exactly no gradient.
  assert np.all(grads["backbone.bottleneck.bias"] == 0)
  np.testing.assert_allclose(train_step["grads"]["centers"], fx["train/center_grad"], rtol=1e-5, atol=1e-10)


def test_running_statistics_after_the_train_forward_match_official(fx, recipe, train_step):
  stats = baseline_to_torch(train_step["state"].model_state, recipe.model)
  keys = [k[len("train/bn_after/"):] for k in fx if k.startswith("train/bn_after/")]
  compared = 0
  for key in keys:
    if key.endswith("num_batches_tracked"):
      continue  # the port keeps no counter: with momentum 0.1 it is never read
    np.testing.assert_allclose(stats[key], fx[f"train/bn_after/{key}"], rtol=0, atol=1e-6, err_msg=key)
    compared += 1
  assert compared == 36  # mean and (unbiased) var of all 18 BatchNorms


def test_parameters_after_one_recipe_step_match_official(fx, recipe, train_step):
  """Adam's first step moves each element by ~lr * sign(g + 5e-4 p): elements whose gradient is at
  round-off level may take the other sign (a 2 lr difference, manifest); everything else agrees to 1e-6."""
  params = train_step["state"].params
  after = baseline_to_torch({"params": params}, recipe.model)
  keys = [k[len("train/param_after_step/"):] for k in fx if k.startswith("train/param_after_step/")]
  assert len(keys) == 42
  for key in keys:
    diff = np.abs(after[key] - fx[f"train/param_after_step/{key}"])
    assert diff.max() <= 2 * EPOCH1_LR * 1.01, key
    assert np.sum(diff > 2e-6) <= max(1, diff.size // 100), key
  # The BNNeck shift is outside the official optimizer: the fixture's non-zero value must not move.
  before = baseline_to_torch({"params": train_step["before"]}, recipe.model)
  np.testing.assert_array_equal(after["backbone.bottleneck.bias"], before["backbone.bottleneck.bias"])
  assert np.any(before["backbone.bottleneck.bias"] != 0)
  # Centres: their own SGD, lr 0.5 on the gradient rescaled by 1 / 0.0005.
  np.testing.assert_allclose(params["centers"], fx["train/centers_after_step"], rtol=0, atol=1e-6)
  # The step ran at the official epoch-1 warmup lr: a parameter with a large gradient moved by exactly it.
  w0 = baseline_to_torch({"params": train_step["before"]}, recipe.model)["backbone.classifier.weight"]
  moved = np.abs(after["backbone.classifier.weight"] - w0)
  np.testing.assert_allclose(np.median(moved), EPOCH1_LR, rtol=1e-3)


# ---------------------------------------------------------------- python -m jaxmatch.convert

def test_official_file_converts_to_a_workdir_the_loop_restores(official_sd, recipe, converted, tmp_path):
  from jaxmatch.convert.to_workdir import convert_to_workdir
  from jaxmatch.train import checkpoint as ckpt
  from jaxmatch import parallel
  path = tmp_path / "nformer_encoder.npz"
  np.savez(path, **official_sd)
  config = recipe.copy_and_resolve_references()
  config.model.num_classes = 0  # as shipped: the task would count the ids; the file's classifier decides
  workdir = str(tmp_path / "converted")
  convert_to_workdir(config, workdir, torch_checkpoint=str(path))
  assert config.model.num_classes == NUM_IDS
  # The train state the loop builds for this recipe (epoch-based schedule) restores from it.
  model = BaselineModel(config.model, img_size=IMG)
  params, state = jax.eval_shape(model.init_variables, jax.random.key(0))
  tx = make_optimizer(config.train, model.param_labels(params), 1000, steps_per_epoch=STEPS_PER_EPOCH)
  template = jax.eval_shape(lambda p, s: create_state(p, s, tx), params, state)
  manager = ckpt.make_manager(workdir, with_data=False)
  restored, meta = ckpt.restore(manager, ckpt.abstract_like(template, parallel.replicated(parallel.make_mesh())))
  manager.close()
  assert meta["converted_from"] == "nformer_encoder.npz"
  ours = jax.tree.map(np.asarray, {k: v for k, v in restored.params.items() if k != "centers"})
  jax.tree.map(np.testing.assert_array_equal, ours,
               {k: v for k, v in converted["params"].items() if k != "centers"})
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, restored.model_state["batch_stats"]),
               converted["batch_stats"])
