"""The ViT / DeiT backbone against timm's models on random weights (nothing downloaded), the official
position-embedding resize against the transreid_posembed fixture, and the patch-grid rule."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES, load_fixture, optional_import

from jaxmatch.convert import CheckpointMismatchError
from jaxmatch.convert.vit import DIST_REASON, HEAD_REASON, imagenet_accountant, vit_from_timm, vit_to_torch
from jaxmatch.models.vit import VisionTransformer, arch_of, patch_grid, resize_pos_embed

# float32 against float32 on the same weights: values O(1-10) after 12 blocks; summation orders differ
# (XLA vs oneDNN matmuls), so ~1e-6 relative to each output's largest magnitude per block, 1e-5 allowed.
REL_TOL = 1e-5
# Bilinear resize: torch's CPU kernel rounds its weights / sums in another order; observed up to 5e-7 of
# the largest magnitude (a few float32 ulps), against 0 for an exact copy.
RESIZE_TOL = 1e-6


def timm_model(name: str, img_size, **kw):
  timm = optional_import("timm")
  torch = optional_import("torch")
  torch.manual_seed(0)
  model = timm.create_model(name, pretrained=False, img_size=img_size, **kw).eval()
  with torch.no_grad():  # livelier than the init: LN affine and biases away from 1 / 0
    for key, p in model.named_parameters():
      if key.endswith("bias") or "norm" in key:
        p.add_(0.1 * torch.randn_like(p))
  return model


def timm_stages(model, images: np.ndarray) -> dict:
  torch = optional_import("torch")
  with torch.no_grad():
    x = model.patch_embed(torch.from_numpy(images))
    out = {"patch_embed": x.numpy()}
    x = model._pos_embed(x)
    out["tokens"] = x.numpy()
    for i, block in enumerate(model.blocks):
      x = block(x)
      out[f"block{i}"] = x.numpy()
    out["norm"] = model.norm(x).numpy()
  return out


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def compare_with_timm(name: str, arch_name: str, img_size, **kw) -> dict:
  model = timm_model(name, img_size, **kw)
  arch = arch_of(arch_name, depth=kw.get("depth", 0))
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  variables = vit_from_timm(sd, arch, img_size, stride=16)
  images = np.random.default_rng(0).uniform(-1, 1, (2, 3) + tuple(img_size)).astype(np.float32)
  ref = timm_stages(model, images)
  vit = VisionTransformer(img_size, arch, stride=(16, 16))
  got = vit.apply(variables, jnp.asarray(np.transpose(images, (0, 2, 3, 1))))
  errors = {"patch_embed": rel_err(got["patch_embed"], ref["patch_embed"]),
            "tokens": rel_err(got["tokens"], ref["tokens"]), "norm": rel_err(got["out"], ref["norm"])}
  for i, block in enumerate(got["blocks"]):
    errors[f"block{i}"] = rel_err(block, ref[f"block{i}"])
  assert len(got["blocks"]) == len(model.blocks)
  bad = {k: v for k, v in errors.items() if v > REL_TOL}
  assert not bad, f"relative errors above {REL_TOL}: {bad}"
  # The flax tree is exactly the model's, and maps back to timm's keys (less the head) bit for bit.
  shapes = jax.eval_shape(vit.init, jax.random.key(0), jnp.zeros((1,) + tuple(img_size) + (3,)))
  assert jax.tree.map(np.shape, variables["params"]) == jax.tree.map(lambda s: s.shape, shapes["params"])
  back = vit_to_torch(variables["params"], arch, patch_grid(img_size, 16))
  assert sorted(back) == sorted(k for k in sd if not k.startswith("head"))
  for key, value in back.items():
    np.testing.assert_array_equal(value, sd[key], err_msg=key)
  return errors


def test_deit_small_matches_timm_every_block():
  compare_with_timm("deit_small_patch16_224", "deit_small", (64, 48))


def test_vit_base_full_depth_matches_timm():  # ~8 s on 2 CPU cores at 96x64
  compare_with_timm("vit_base_patch16_224", "vit_base", (96, 64))


def test_deit_distilled_keys_are_accounted_for():
  model = timm_model("deit_small_distilled_patch16_224", 224)
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  acc, variables = imagenet_accountant(sd, "deit_small", (256, 128), stride=12)
  acc.finish()
  assert acc.ignored["dist_token"] == DIST_REASON and acc.ignored["head_dist.weight"] == DIST_REASON
  assert acc.ignored["head.weight"] == HEAD_REASON
  expected = resize_pos_embed(sd["pos_embed"], (21, 10), distilled=True)
  np.testing.assert_array_equal(variables["params"]["pos_embed"], expected)


def test_wrong_architecture_is_named_key_by_key():
  model = timm_model("deit_small_patch16_224", 64, depth=1)
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  with pytest.raises(CheckpointMismatchError, match=r"wrong shape[\s\S]*blocks.0.attn.qkv.weight"):
    vit_from_timm(sd, arch_of("vit_base", depth=1), (64, 64))


@pytest.mark.parametrize("case", ["s12_256x128", "s16_256x128", "s11_256x128", "s12_384x128",
                                  "s12_256x256", "distilled_s12_256x128"])
def test_pos_embed_resize_matches_official(case):
  fx = load_fixture("transreid_posembed")
  meta = json.loads((FIXTURES / "transreid_posembed.json").read_text())["cases"][f"out/{case}"]
  distilled = case.startswith("distilled")
  source = fx["in/pos_embed_imagenet_distilled" if distilled else "in/pos_embed_imagenet"]
  grid = patch_grid(meta["img_size"], meta["stride"])
  assert list(grid) == meta["grid_hw"]
  got = resize_pos_embed(source, grid, distilled=distilled)
  want = fx[f"out/{case}"]
  assert got.shape == want.shape
  assert np.max(np.abs(got - want)) <= RESIZE_TOL * np.max(np.abs(want))


def test_pos_embed_resize_matches_torch_interpolate():
  torch = optional_import("torch")
  grid = np.random.default_rng(1).normal(size=(14, 14, 8)).astype(np.float32)
  for out_hw in ((21, 10), (7, 30), (14, 14)):
    t = torch.nn.functional.interpolate(torch.from_numpy(grid).permute(2, 0, 1)[None], size=out_hw,
                                        mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    pos = np.concatenate([np.zeros((1, 1, 8), np.float32), grid.reshape(1, -1, 8)], axis=1)
    got = resize_pos_embed(pos, out_hw)[0, 1:].reshape(out_hw + (8,))
    assert np.max(np.abs(got - t)) <= RESIZE_TOL * np.max(np.abs(t)), out_hw


def test_patch_grid_and_its_errors():
  assert patch_grid((256, 128), 12) == (21, 10)
  assert patch_grid((256, 128), 16) == (16, 8)
  assert patch_grid((256, 128), 14) == (18, 9)
  assert patch_grid((256, 128), 11) == (22, 11)
  with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
    patch_grid((12, 128), 12)
  with pytest.raises(ValueError, match="stride must be in 1..16"):
    patch_grid((256, 128), 20)
  vit = VisionTransformer((64, 48), arch_of("deit_small", depth=1), stride=(12, 12))
  with pytest.raises(ValueError, match=r"built for \(64, 48\)"):
    vit.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


def test_drop_path_follows_the_official_mask_and_rng():
  vit = VisionTransformer((32, 32), arch_of("deit_small", depth=2), drop_path_rate=0.5)
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)), jnp.float32)
  variables = vit.init(jax.random.key(0), x)
  rngs = {"droppath": jax.random.key(3)}
  a = vit.apply(variables, x, train=True, rngs=rngs)["out"]
  b = vit.apply(variables, x, train=True, rngs=rngs)["out"]
  c = vit.apply(variables, x, train=True, rngs={"droppath": jax.random.key(4)})["out"]
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  # u >= rate keeps every sample: the train output then equals the eval output up to the 1/keep scaling
  # of block 1's residual branches, so prescribing u = 0.99 everywhere keeps everything.
  keep_all = {"drop_path_u": {"blocks_1": {n: {"u": jnp.full((4,), 0.99)} for n in
                                            ("drop_path_attn", "drop_path_mlp")}}}
  kept = vit.apply({**variables, **keep_all}, x, train=True)["out"]
  drop_all = {"drop_path_u": {"blocks_1": {n: {"u": jnp.zeros((4,))} for n in
                                            ("drop_path_attn", "drop_path_mlp")}}}
  dropped = vit.apply({**variables, **drop_all}, x, train=True)["blocks"][1]
  block0 = vit.apply(variables, x)["blocks"][0]
  np.testing.assert_allclose(dropped, block0, atol=0)  # both branches of block 1 dropped
  assert np.all(np.isfinite(kept))
