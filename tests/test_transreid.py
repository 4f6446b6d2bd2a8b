"""TransReID beyond the fixtures: the JPM index rule, SIE table validation, the ablation switches, the
ImageNet start and the registry contract (tiny networks on small images)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import optional_import
from ml_collections import ConfigDict

from jaxmatch.convert.transreid import imagenet_start, transreid_tensors
from jaxmatch.models import registry
from jaxmatch.models.transreid import TransReIDModel, check_side_info, jpm_order
from jaxmatch.models.vit import resize_pos_embed

IMG = (64, 40)  # stride 12: 5 x 3 = 15 patches (odd: the JPM pads)


def tiny_cfg(**kw) -> ConfigDict:
  cfg = dict(name="transreid", backbone="deit_small", embed_dim=32, depth=2, num_heads=2, stride=12,
             num_cameras=3, num_views=2, sie_camera=True, sie_view=False, num_classes=4, shift_num=5)
  cfg.update(kw)
  return ConfigDict(cfg)


def batch(n=4, camera=(0, 1, 2, 0), view=(0, 1, 0, 1)):
  x = np.random.default_rng(0).uniform(-1, 1, (n,) + IMG + (3,)).astype(np.float32)
  return {"image": jnp.asarray(x), "camera": jnp.asarray(camera), "view": jnp.asarray(view),
          "label": jnp.asarray([0, 0, 1, 1])}


def init(cfg):
  model = TransReIDModel(cfg, img_size=IMG)
  return model, *model.init_variables(jax.random.key(0))


def test_jpm_order_is_the_codes_example():
  _, groups = jpm_order(210, shift=5, groups=2, parts=4)
  assert groups.shape == (4, 52)
  assert list(groups[0, :4]) == [4, 109, 5, 110] and list(groups[0, -4:]) == [28, 133, 29, 134]
  assert list(groups[1, :2]) == [30, 135] and list(groups[1, -2:]) == [55, 160]
  assert list(groups[3, :2]) == [82, 187] and list(groups[3, -4:]) == [106, 1, 107, 2]
  order, _ = jpm_order(210, shift=5, groups=2, parts=4)
  assert list(order[208:]) == [108, 3]  # in no group
  order, _ = jpm_order(441, shift=8, groups=2, parts=4)
  rotated = np.roll(np.arange(441), -7)
  assert order.size == 442 and order[-1] == rotated[-2]  # r[N-2] appended before the interleave
  _, plain = jpm_order(15, 5, 2, 4, rearrange=False)
  assert plain.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]


def test_side_info_outside_the_table_is_an_error():
  with pytest.raises(ValueError, match=r"camera id 3 is outside the SIE table of 3 cameras"):
    check_side_info(np.array([0, 3]), None, "camera", 3, 1)
  with pytest.raises(ValueError, match=r"view id -1 is outside the SIE table of 2 views"):
    check_side_info(np.array([0]), np.array([-1]), "both", 3, 2)
  check_side_info(np.array([2]), np.array([7]), "camera", 3, 1)  # views unused: not checked
  model, params, state = init(tiny_cfg())
  with pytest.raises(ValueError, match="camera id 5"):
    model.embed(params, state, batch(camera=(0, 5, 0, 0)))
  # Inside jit the host check cannot run; the gather then gives NaN rather than a clamped row.
  feat = jax.jit(lambda b: model.embed(params, state, b))(batch(camera=(0, 5, 0, 0)))
  assert np.all(np.isnan(feat[1])) and np.all(np.isfinite(feat[0]))


def test_single_valued_side_info_is_rejected_like_the_code_fails():
  with pytest.raises(ValueError, match="single camera value"):
    init(tiny_cfg(num_cameras=1))


@pytest.mark.parametrize("kw, dim, keys_absent", [
    (dict(), 5 * 32, []),
    (dict(jpm=False), 32, ["b1.0.norm1.weight", "classifier_1.weight"]),
    (dict(local_at_inference=False), 32, []),
    (dict(sie_camera=False), 5 * 32, ["base.sie_embed"]),
    (dict(sie_camera=False, sie_view=True), 5 * 32, []),
    (dict(sie_view=True), 5 * 32, []),
    (dict(rearrange=False, stride=16, neck_feat="after", feature_form="paper"), 5 * 32, []),
])
def test_ablation_switches(kw, dim, keys_absent):
  cfg = tiny_cfg(**kw)
  model, params, state = init(cfg)
  feat = model.embed(params, state, batch())
  assert feat.shape == (4, dim) == (4, model.feat_dim)
  np.testing.assert_allclose(np.linalg.norm(feat, axis=1), 1.0, rtol=1e-6)
  keys = {t.torch_key for t in transreid_tensors(cfg, IMG)}
  assert not keys & set(keys_absent)
  rows = {"base.sie_embed": t.torch_shape[0] for t in transreid_tensors(cfg, IMG) if t.torch_key == "base.sie_embed"}
  expected = {(True, False): 3, (False, True): 2, (True, True): 6}.get((cfg.sie_camera, cfg.sie_view))
  assert rows.get("base.sie_embed") == expected
  loss, (new_state, metrics) = model.loss_fn(params, state, batch(), jax.random.key(1))
  assert np.isfinite(loss) and set(metrics) >= {"id_loss", "triplet_loss", "accuracy"}


def test_paper_form_and_local_scaling():
  model, params, state = init(tiny_cfg())
  out, _ = model.apply(params, state, batch(), train=False)
  code = model.test_feature(out)
  paper = TransReIDModel(tiny_cfg(feature_form="paper"), img_size=IMG).test_feature(out)
  np.testing.assert_allclose(code[:, 32:] * 4, paper[:, 32:], rtol=1e-6)
  np.testing.assert_array_equal(code[:, :32], paper[:, :32])


def test_bfloat16_compute_keeps_float32_params():
  model, params, state = init(tiny_cfg(dtype="bfloat16"))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  feat = model.embed(params, state, batch())
  f32 = TransReIDModel(tiny_cfg(), img_size=IMG).embed(params, state, batch())
  assert feat.dtype == jnp.float32 and float(jnp.max(jnp.abs(feat - f32))) < 5e-2


def test_imagenet_start_copies_the_last_block_into_both_branches():
  timm = optional_import("timm")
  net = timm.create_model("deit_small_distilled_patch16_224", pretrained=False, depth=2)
  sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
  cfg = tiny_cfg(embed_dim=0, num_heads=0)
  model, params, state = init(cfg)
  config = ConfigDict({"model": cfg, "data": {"img_size": IMG}})
  out = imagenet_start(config, sd, {"params": params, **state})["params"]
  np.testing.assert_array_equal(out["base"]["pos_embed"], resize_pos_embed(sd["pos_embed"], (5, 3), distilled=True))
  for branch in ("b1", "b2"):
    np.testing.assert_array_equal(out[branch]["block"]["attn"]["qkv"]["kernel"], sd["blocks.1.attn.qkv.weight"].T)
    np.testing.assert_array_equal(out[branch]["norm"]["scale"], sd["norm.weight"])
  np.testing.assert_array_equal(out["base"]["blocks_0"]["mlp"]["fc2"]["bias"], sd["blocks.0.mlp.fc2.bias"])
  np.testing.assert_array_equal(out["sie_embed"], params["sie_embed"])  # not in the ImageNet file
  assert jax.tree.map(np.shape, out) == jax.tree.map(np.shape, params)


def test_registry_contract_builds_the_model():
  contract = registry.get_contract("transreid")
  assert contract.task == "reid" and "camera" in contract.train_fields and "view" in contract.eval_fields
  for member in ("build", "from_torch", "complete_config", "imagenet_start"):
    assert callable(contract.resolve(member))
  model = registry.build(ConfigDict({"model": tiny_cfg(), "data": {"img_size": IMG}}))
  assert isinstance(model, TransReIDModel)
