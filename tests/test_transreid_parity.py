"""TransReID against the official code (fixtures transreid_small: camera SIE, 256x128; and
transreid_small_vehicle: camera x view SIE, 256x256, shift 8, 441 patches so the JPM pads): the official
`build_transformer_local` with a 64-d, 3-block, 4-head ViT, weights perturbed away from the init.

* converter: every key mapped or ignored with a reason, exact round trip, checkpoint / config mismatch;
* eval: every stored stage and both test features;
* one training step with the recorded drop-path draws: outputs, every loss term, gradients, BNNeck running
  statistics, and the parameters after one SGD step of the official optimizer (bias groups at 2x lr);
* sensitivity: a 1% change of any parameter group moves some compared output beyond its tolerance.
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES, load_fixture
from ml_collections import ConfigDict

from jaxmatch.convert import KeyAccountant
from jaxmatch.convert.keys import get_path
from jaxmatch.convert.transreid import (DEAD_REASON, FC_REASON, NUM_BATCHES_REASON, claim, complete_config,
                                        transreid_tensors,
                                        transreid_from_torch, transreid_to_torch)
from jaxmatch.models.transreid import TransReIDModel
from jaxmatch.param_groups import FROZEN
from jaxmatch.train.state import make_optimizer

# Activations / features are O(1-10); the official fp32 run differs from fp64 by <= 3.5e-6 (manifest).
ATOL = 2e-5
# Gradients: manifest advice ~1e-6 abs; relative to each tensor's largest entry.
GRAD_RTOL = 1e-4
GRAD_ATOL = 1e-6

CASES = {
    "transreid_small": dict(img=(256, 128), num_cameras=15, num_views=1, sie_view=False, shift_num=5),
    "transreid_small_vehicle": dict(img=(256, 256), num_cameras=20, num_views=8, sie_view=True, shift_num=8),
}


class Case:
  def __init__(self, name: str):
    self.name = name
    self.fx = load_fixture(name)
    self.manifest = json.loads((FIXTURES / f"{name}.json").read_text())
    spec = CASES[name]
    self.img = spec["img"]
    self.cfg = ConfigDict(dict(
        name="transreid", backbone="vit_base", embed_dim=64, depth=3, num_heads=4, mlp_ratio=4.0, stride=12,
        drop_path=0.1, sie_camera=True, sie_view=spec["sie_view"], sie_coe=3.0,
        num_cameras=spec["num_cameras"], num_views=spec["num_views"], jpm=True, rearrange=True,
        shift_num=spec["shift_num"], shuffle_groups=2, num_parts=4, num_classes=10, neck_feat="before"))
    self.sd = {k[3:]: v for k, v in self.fx.items() if k.startswith("sd/")}
    self.model = TransReIDModel(self.cfg, img_size=self.img)
    v = transreid_from_torch(self.sd, self.cfg, self.img)
    self.params = jax.tree.map(jnp.asarray, v["params"])
    self.state = {"batch_stats": jax.tree.map(jnp.asarray, v["batch_stats"])}
    self.batch = {"image": jnp.asarray(np.transpose(self.fx["in/images"], (0, 2, 3, 1))),
                  "camera": jnp.asarray(self.fx["in/cam_label"], jnp.int32),
                  "view": jnp.asarray(self.fx["in/view_label"], jnp.int32),
                  "label": jnp.asarray(self.fx["in/labels"], jnp.int32)}

  def drop_path_u(self) -> dict:
    """The recorded torch.rand draws, in the manifest's call order, at the modules that consume them."""
    u = self.fx["rand/drop_path_u"]
    pair = lambda a, m: {"drop_path_attn": {"u": jnp.asarray(a)}, "drop_path_mlp": {"u": jnp.asarray(m)}}  # noqa
    b2_attn = np.concatenate([u[4 + 2 * k] for k in range(4)])  # group-major, as b2 runs the groups stacked
    b2_mlp = np.concatenate([u[5 + 2 * k] for k in range(4)])
    return {"drop_path_u": {"base": {"blocks_1": pair(u[0], u[1])}, "b1": {"block": pair(u[2], u[3])},
                            "b2": {"block": pair(b2_attn, b2_mlp)}}}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
  return Case(request.param)


def eval_stages(case, params):
  out, _ = case.model.apply(params, case.state, case.batch, train=False)
  stages = {"patch_embed": out["patch_embed"], "tokens_after_pos_sie": out["tokens"],
            "base_block0": out["blocks"][0], "base_block1": out["blocks"][1], "b1_out": out["b1_out"],
            "global_feat": out["feats"][0], "jpm_rearranged": out["rearranged"],
            "bn_global_feat": out["bn_feats"][0], "eval_feat": case.model.test_feature(out)}
  for k in range(1, 5):
    stages[f"b2_out_{k}"] = out["b2_out"][k - 1]
    stages[f"local_feat_{k}"] = out["feats"][k]
    stages[f"bn_local_feat_{k}"] = out["bn_feats"][k]
  after = TransReIDModel(ConfigDict({**case.cfg.to_dict(), "neck_feat": "after"}), img_size=case.img)
  stages["eval_feat_neck_after"] = after.test_feature(out)
  return stages


def train_outputs(case, params):
  out, new_state = case.model.apply(params, case.state, case.batch, train=True, extra=case.drop_path_u())
  terms = case.model.losses(out, case.batch["label"])
  res = {"loss_total": terms["total"], "loss_id": terms["id_loss"], "loss_triplet": terms["triplet_loss"],
         "ce_per_branch": terms["ce_per_branch"], "triplet_per_branch": terms["triplet_per_branch"],
         "dist_ap": terms["dist_ap"], "dist_an": terms["dist_an"]}
  for k in range(5):
    res[f"logits_{k}"] = out["logits"][k]
    res[f"feat_{k}"] = out["feats"][k]
  return res, new_state


def max_errors(got: dict, fx, prefix: str) -> dict:
  return {k: float(np.max(np.abs(np.asarray(v) - fx[f"{prefix}{k}"]))) for k, v in got.items()}


# ---------------------------------------------------------------- converter

def test_every_key_is_mapped_or_ignored_with_a_reason(case):
  acc = KeyAccountant(case.sd)
  claim(acc, case.cfg, case.img)
  acc.finish()
  dead = set(case.manifest["state_dict"]["ignore_keys"])
  tracked = {k for k in case.sd if k.endswith("num_batches_tracked")}
  assert set(acc.ignored) == dead | tracked
  assert {acc.ignored[k] for k in dead if k.startswith("base.fc.")} == {FC_REASON}
  assert {acc.ignored[k] for k in dead if not k.startswith("base.fc.")} == {DEAD_REASON}
  assert {acc.ignored[k] for k in tracked} == {NUM_BATCHES_REASON}


def test_round_trip_is_exact_and_the_tree_is_the_models(case):
  back = transreid_to_torch({"params": case.params, **case.state}, case.cfg, case.img)
  ignored = set(case.manifest["state_dict"]["ignore_keys"])
  assert sorted(back) == sorted(k for k in case.sd if k not in ignored and not k.endswith("num_batches_tracked"))
  for key, value in back.items():
    np.testing.assert_array_equal(value, case.sd[key].astype(np.float32), err_msg=key)
  shapes = jax.eval_shape(case.model.init_variables, jax.random.key(0))
  assert jax.tree.map(jnp.shape, case.params) == jax.tree.map(lambda s: s.shape, shapes[0])
  module_prefixed = {f"module.{k}": v for k, v in case.sd.items()}
  again = transreid_from_torch(module_prefixed, case.cfg, case.img)
  assert jax.tree.map(np.shape, again["params"]) == jax.tree.map(jnp.shape, case.params)


def test_complete_config_reads_classifier_and_sie_sizes(case):
  cfg = ConfigDict({**case.cfg.to_dict(), "num_classes": 0, "num_cameras": 0})
  complete_config(ConfigDict({"model": cfg}), case.sd)
  assert cfg.num_classes == 10 and cfg.num_cameras == case.cfg.num_cameras


def test_checkpoint_for_another_model_is_named(case):
  for change, what in ((dict(num_classes=11), "num_classes: checkpoint 10, config 11"),
                       (dict(stride=16), "num_patches"), (dict(depth=4), "depth: checkpoint 3, config 4"),
                       (dict(sie_camera=False, sie_view=False), "sie_rows"), (dict(jpm=False), "jpm")):
    cfg = ConfigDict({**case.cfg.to_dict(), **change})
    with pytest.raises(ValueError, match=what):
      transreid_from_torch(case.sd, cfg, case.img)


# ---------------------------------------------------------------- eval and train

def test_eval_every_stage_matches(case):
  errors = max_errors(eval_stages(case, case.params), case.fx, "out/")
  bad = {k: v for k, v in errors.items() if v > ATOL}
  assert not bad, bad


def test_embed_is_the_normalised_official_feature(case):
  feat = case.model.embed(case.params, case.state, case.batch)
  ref = case.fx["out/eval_feat"]
  np.testing.assert_allclose(feat, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-6)
  assert feat.shape[1] == case.model.feat_dim == 5 * 64


def test_train_step_outputs_losses_and_bn_statistics(case):
  got, new_state = train_outputs(case, case.params)
  errors = max_errors(got, case.fx, "train/")
  bad = {k: v for k, v in errors.items() if v > ATOL}
  assert not bad, bad
  stats = transreid_to_torch(new_state, case.cfg, case.img)
  for key in (k for k in case.fx if k.startswith("train/bn_after/") and not k.endswith("num_batches_tracked")):
    np.testing.assert_allclose(stats[key[len("train/bn_after/"):]], case.fx[key], atol=1e-6, err_msg=key)


def _grads(case):
  def loss(params):
    return case.model.losses(case.model.apply(params, case.state, case.batch, train=True,
                                              extra=case.drop_path_u())[0], case.batch["label"])["total"]
  return jax.grad(loss)(case.params)


def test_gradients_and_one_sgd_step(case):
  flax_grads = _grads(case)
  grads = transreid_to_torch({"params": flax_grads}, case.cfg, case.img)
  frozen = set(case.manifest["state_dict"]["frozen_params"])
  stored = {k[len("train/grad/"):] for k in case.fx if k.startswith("train/grad/")}
  assert stored == set(grads) - frozen
  for key in stored:
    ref = case.fx[f"train/grad/{key}"]
    tol = GRAD_ATOL + GRAD_RTOL * float(np.max(np.abs(ref)))
    assert float(np.max(np.abs(grads[key] - ref))) <= tol, key
  for key in frozen:
    assert not np.any(grads[key]), key
  # The official optimizer: SGD momentum 0.9, coupled L2 1e-4, lr of epoch 1 (bias names at 2x).
  opt = case.manifest["train"]["optimizer"]
  train_cfg = ConfigDict(dict(optimizer="sgd", momentum=opt["momentum"], weight_decay=opt["WEIGHT_DECAY"],
                              schedule="constant", learning_rates=dict(base=opt["lr_used_weights"][0],
                                                                       bias=opt["lr_used_bias"][0])))
  labels = case.model.param_labels(case.params)
  tx = make_optimizer(train_cfg, labels)
  updates, _ = tx.update(flax_grads, tx.init(case.params), case.params)
  stepped = transreid_to_torch({"params": jax.tree.map(jnp.add, case.params, updates)}, case.cfg, case.img)
  for key in (k for k in case.fx if k.startswith("train/param_after_step/")):
    name = key[len("train/param_after_step/"):]
    # The dead tensors (never run, no gradient) stay as loaded; they are not part of the model here.
    np.testing.assert_allclose(stepped.get(name, case.sd[name]), case.fx[key], atol=1e-6, err_msg=name)


def test_parameter_labels_follow_the_official_optimizer(case):
  tree = case.model.param_labels(case.params)
  labels = {t.torch_key: get_path(tree, t.path) for t in transreid_tensors(case.cfg, case.img)
            if t.collection == "params"}
  assert sorted(jax.tree.leaves(tree)) == sorted(labels.values())
  for key, label in labels.items():
    if key.startswith("bottleneck") and key.endswith(".bias"):
      assert label == FROZEN, key
    else:
      assert label == ("bias" if "bias" in key else "base"), key


# ---------------------------------------------------------------- sensitivity

GROUPS = {
    "patch_embed": ("base", "patch_embed"), "pos_embed": ("base", "pos_embed"), "cls_token": ("base", "cls_token"),
    "sie_embed": ("sie_embed",), "block0": ("base", "blocks_0"), "block1": ("base", "blocks_1"),
    "b1": ("b1",), "b2": ("b2",), **{f"neck{k}_bn": (n, "bottleneck") for k, n in
                                    enumerate(["neck", "neck_1", "neck_2", "neck_3", "neck_4"])},
    **{f"neck{k}_classifier": (n, "classifier")
       for k, n in enumerate(["neck", "neck_1", "neck_2", "neck_3", "neck_4"])},
}


def _scaled(params, path, factor):
  params = jax.tree.map(lambda x: x, params)
  node = params
  for key in path[:-1]:
    node[key] = dict(node[key])
    node = node[key]
  node[path[-1]] = jax.tree.map(lambda x: x * factor, node[path[-1]])
  return params


def test_a_one_percent_change_of_any_group_fails_the_comparison(case):
  @jax.jit
  def compared(params):
    return eval_stages(case, params), train_outputs(case, params)[0]

  moved = {}
  for group, path in GROUPS.items():
    ev, tr = compared(_scaled(case.params, path, 1.01))
    err = max(max(max_errors(ev, case.fx, "out/").values()), max(max_errors(tr, case.fx, "train/").values()))
    moved[group] = err
  quiet = {g: e for g, e in moved.items() if e <= ATOL}
  assert not quiet, f"a 1% change does not fail the comparison for {quiet}"
