"""The official TransforMatcher backbone (one doubled, groups=2 ResNet-101) as two jaxmatch ResNet streams.

Ground truth: fixture `transformatcher_backbone` (official PyTorch code). Stream s of every official tensor
is rows [s*n/2, (s+1)*n/2) (split=(s, 2)); channels of official feature maps split the same way.
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES, load_fixture, require_file

from jaxmatch.convert.keys import KeyAccountant
from jaxmatch.convert.resnet import (bottleneck_from_torch, resnet_from_torch, resnet_to_torch,
                                     stem_from_torch)
from jaxmatch.models.resnet import RESNET_STAGES, Bottleneck, ResNet, Stem

NAME = "transformatcher_backbone"
PREFIX = "backbone."
STREAMS = (0, 1)  # 0 = source (first half), 1 = target (second half)
ATOL_OUT = 2e-6   # manifest 'suggested_tolerance_float32_port' for out/* (|values| <= 2)
RTOL_TRAIN = 1e-5  # train/*: max |diff| relative to each tensor's max |value| (float32 port)
CHAIN = (1, 1)     # stem -> layer1.0 -> layer2.0, as in the fixture's chain


def ignore_unused(acc):
  acc.ignore_matching(lambda k: k.endswith("num_batches_tracked"), "scalar shared by both streams")
  acc.ignore_matching(lambda k: k.startswith(PREFIX + "fc."), "not doubled, never used by TransforMatcher")


def half(x, stream, axis=1):
  n = x.shape[axis] // 2
  return np.take(x, np.arange(stream * n, (stream + 1) * n), axis=axis)


def nhwc(x):
  return jnp.asarray(np.transpose(x, (0, 2, 3, 1)))


def nchw(x):
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


def stored_sd(fx):
  return {k[len("sd/"):]: v for k, v in fx.items() if k.startswith("sd/")}


def stream_images(fx):
  return {0: nhwc(fx["in/src_img"]), 1: nhwc(fx["in/trg_img"])}


def assert_rel_close(got, ref, name, rtol=RTOL_TRAIN):
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  assert got.shape == ref.shape, f"{name}: shape {got.shape} vs {ref.shape}"
  err = np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12)
  assert err < rtol, f"{name}: relative error {err:.3g} >= {rtol}"


def row_index_tensor(shape):
  """A read-only zero-copy int32 tensor of `shape` whose value is its dim-0 index (scalars: 7)."""
  if not shape:
    return np.array(7)
  rows = np.arange(shape[0], dtype=np.int32).reshape((-1,) + (1,) * (len(shape) - 1))
  return np.broadcast_to(rows, shape)


def test_key_mapping_covers_all_626_official_keys():
  path = require_file(FIXTURES / f"{NAME}.json")
  mapping = json.loads(path.read_text())["key_mapping"]
  assert len(mapping) == 626
  # Zero-copy stand-in checkpoint: each tensor's value is its dim-0 row index (integers skip the
  # float32 cast), so the converted leaves show which official rows they came from.
  sd = {k: row_index_tensor(e["shape"]) for k, e in mapping.items()}
  acc = KeyAccountant(sd, "official TransforMatcher backbone")
  streams = [resnet_from_torch(acc, RESNET_STAGES[101], PREFIX, split=(s, 2)) for s in STREAMS]
  ignore_unused(acc)
  acc.finish()  # every key mapped or ignored, nothing missing or mis-shaped
  ignored = {k for k, e in mapping.items() if "src" not in e}
  assert set(acc.ignored) == ignored
  assert ignored == {k for k in mapping if k.startswith(PREFIX + "fc.") or k.endswith("num_batches_tracked")}

  model_shapes = jax.eval_shape(ResNet(RESNET_STAGES[101]).init, jax.random.PRNGKey(0),
                                jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  for s, variables in zip(STREAMS, streams):
    assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda a: a.shape, model_shapes)
    back = resnet_to_torch(variables, RESNET_STAGES[101])
    assert len(back) == len(mapping) - len(ignored)
    for key, e in mapping.items():
      if key in ignored:
        continue
      value = back[e["torchvision_key"]]
      assert list(value.shape) == e["torchvision_shape"], key
      lo, hi = e["src"] if s == 0 else e["trg"]
      np.testing.assert_array_equal(value.reshape(value.shape[0], -1)[:, 0], np.arange(lo, hi), err_msg=key)


@pytest.mark.parametrize("stream", STREAMS)
def test_eval_outputs_match_official(stream):
  fx = load_fixture(NAME)
  acc = KeyAccountant(stored_sd(fx), "stored backbone subset")
  split = (stream, 2)
  stem_vars = stem_from_torch(acc, PREFIX, split)
  l10_vars = bottleneck_from_torch(acc, PREFIX + "layer1.0.", 64, 64, True, split)
  l20_vars = bottleneck_from_torch(acc, PREFIX + "layer2.0.", 256, 128, True, split)
  ignore_unused(acc)
  acc.finish()

  stem, inter = Stem().apply(stem_vars, stream_images(fx)[stream], capture_intermediates=True)
  np.testing.assert_allclose(nchw(inter["intermediates"]["conv1"]["__call__"][0]),
                             half(fx["out/conv1"], stream), atol=ATOL_OUT, err_msg="conv1")
  np.testing.assert_allclose(nchw(inter["intermediates"]["bn1"]["__call__"][0]),
                             half(fx["out/bn1"], stream), atol=ATOL_OUT, err_msg="bn1")
  np.testing.assert_allclose(nchw(stem), half(fx["out/stem"], stream), atol=ATOL_OUT, err_msg="stem")
  # Each block on the OFFICIAL output of the previous one, as the fixture does.
  l10 = Bottleneck(64, 1, True).apply(l10_vars, nhwc(half(fx["out/stem"], stream)))
  np.testing.assert_allclose(nchw(l10), half(fx["out/layer1_0"], stream), atol=ATOL_OUT, err_msg="layer1.0")
  l20 = Bottleneck(128, 2, True).apply(l20_vars, nhwc(half(fx["out/layer1_0"], stream)))
  np.testing.assert_allclose(nchw(l20), half(fx["out/layer2_0"], stream), atol=ATOL_OUT, err_msg="layer2.0")


def train_step(streams, images, r):
  """L = sum over both streams of sum(layer2.0 output * R-half), train-mode BN."""
  model = ResNet(CHAIN, num_stages=2)

  def loss_fn(params):
    total, outs, stats = 0.0, [], []
    for s in STREAMS:
      out, upd = model.apply({"params": params[s], "batch_stats": streams[s]["batch_stats"]}, images[s],
                             train=True, mutable=["batch_stats"])
      total = total + jnp.sum(out["blocks"][1][0] * nhwc(half(r, s)))
      outs.append(out)
      stats.append(upd)
    return total, (outs, stats)

  params = [v["params"] for v in streams]
  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)


def doubled(per_stream: list[dict]) -> dict:
  """Two torch-layout stream dicts -> official doubled tensors (concatenated along dim 0)."""
  return {PREFIX + k: np.concatenate([per_stream[0][k], per_stream[1][k]], 0) for k in per_stream[0]}


def test_train_mode_outputs_running_stats_and_grads_match_official():
  fx = load_fixture(NAME)
  acc = KeyAccountant(stored_sd(fx), "stored backbone subset")
  streams = [resnet_from_torch(acc, CHAIN, PREFIX, split=(s, 2), num_stages=2) for s in STREAMS]
  ignore_unused(acc)
  acc.finish()
  (loss, (outs, stats)), grads = train_step(streams, stream_images(fx), fx["in/train_R"].astype(np.float32))

  assert_rel_close(loss, fx["train/L"], "L")
  for s in STREAMS:
    assert_rel_close(nchw(outs[s]["stem"]), half(fx["train/stem"], s), f"train stem {s}")
    assert_rel_close(nchw(outs[s]["blocks"][1][0]), half(fx["train/layer2_0"], s), f"train layer2.0 {s}")

  # num_batches_tracked (7 -> 8 in the fixture) has no counterpart: momentum 0.1 never reads it.
  bn_after = doubled([resnet_to_torch(u, CHAIN) for u in stats])
  expected = {k[len("train/bn_after/"):]: v for k, v in fx.items()
              if k.startswith("train/bn_after/") and not k.endswith("num_batches_tracked")}
  assert set(bn_after) == set(expected)
  for key, ref in expected.items():
    assert_rel_close(bn_after[key], ref, f"bn_after {key}")

  got = doubled([resnet_to_torch({"params": g}, CHAIN) for g in grads])
  expected = {k[len("train/grad/"):]: v for k, v in fx.items() if k.startswith("train/grad/")}
  assert set(got) == set(expected) and len(got) == 27
  for key, ref in expected.items():
    assert_rel_close(got[key], ref, f"grad {key}")
