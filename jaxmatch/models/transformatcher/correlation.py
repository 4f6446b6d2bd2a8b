"""Multi-layer correlation of TransforMatcher (official `Geometry.cosine_similarity`, reference 2.2).

Per tap pair (F, F^) with C channels (NHWC here):
  1. L2-normalise every spatial vector over channels (no epsilon, as `utils.l2normalize`);
  2. resize the *normalised feature maps* to size x size with bilinear align_corners=True
     (identity for conv4_x maps, 8 -> 15 for conv5_x maps);
  3. C[b, h1, w1, h2, w2] = <F_n[b, h1, w1, :], F^_n[b, h2, w2, :]>;
  4. stack the taps in tap order on the LAST axis -> [B, size, size, size, size, L].
The ReLU is applied by Match2Match (the output here is pre-ReLU, as the fixtures store it).

Single-channel variants (paper Table A2, not in the official code; `correlation_by_mode`):
* 'multi'  (default) the L-channel map above;
* 'concat' "concatenating the multi-layer features along the channel dimension prior to correlation
  computation": every tap is first resized to size x size (they must share a grid to be concatenated;
  bilinear align_corners, as the multi-channel path), the taps are concatenated per image
  (23 x 1024 + 3 x 2048 = 29,696 channels for ResNet-101), and ONE cosine map of the concatenated
  vectors is taken -> [..., 1], pre-ReLU. Each tap enters with its own magnitude (no per-tap
  normalisation: with it, the cosine of the concatenation would just be the mean of the L cosines);
* 'mean'   "taking the mean of the multi-channel correlation map": the map the paper defines is the
  rectified one (ReLU of the cosines, Eq. 4), so this is mean_l ReLU(C_l) -> [..., 1] (already
  non-negative; Match2Match's ReLU leaves it unchanged).

The align-corners resize is written by hand (jax.image.resize has no align-corners mode) and
reproduces PyTorch's CPU kernel: ratio = float32(in - 1) / float32(out - 1), source position
ratio * i in float32, taps floor / floor + 1 (clamped), separable interpolation first along the
width, then along the height. Equal sizes are an exact identity.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import jax
import jax.numpy as jnp


def l2_normalize(x: jnp.ndarray) -> jnp.ndarray:
  """x / ||x||_2 over the last (channel) axis, computed in at least float32. No epsilon (as the code)."""
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))


@functools.lru_cache(maxsize=64)
def align_corners_taps(in_size: int, out_size: int):
  """(i0, i1, w0, w1) for one axis of PyTorch's bilinear align_corners=True resize (numpy)."""
  if out_size > 1:
    ratio = np.float32(in_size - 1) / np.float32(out_size - 1)
  else:
    ratio = np.float32(0.0)
  real = (ratio * np.arange(out_size, dtype=np.float32)).astype(np.float32)
  i0 = np.minimum(np.floor(real).astype(np.int32), in_size - 1)
  w1 = np.clip(real - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
  i1 = (i0 + (i0 < in_size - 1)).astype(np.int32)
  w0 = (np.float32(1.0) - w1).astype(np.float32)
  return i0, i1, w0, w1


@functools.lru_cache(maxsize=64)
def align_corners_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] float32 matrix with w0 at (o, i0) and w1 at (o, i1): the resize as one contraction."""
  i0, i1, w0, w1 = align_corners_taps(in_size, out_size)
  m = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  m[rows, i0] += w0
  m[rows, i1] += w1
  return m


def interpolate_axis_align_corners(x: jnp.ndarray, axis: int, out_size: int) -> jnp.ndarray:
  """1-D linear interpolation (align_corners=True) of `x` along `axis` to `out_size` samples.

  A contraction with a constant [out, in] matrix rather than two gathers: each output is still
  w0 * x[i0] + w1 * x[i1] (the other terms are exact zeros), but the gradient is a matmul instead of
  a scatter-add, which is slow on accelerators and makes XLA constant-fold for seconds at compile time.
  """
  axis = axis % x.ndim
  in_size = x.shape[axis]
  if in_size == out_size:
    return x
  m = jnp.asarray(align_corners_matrix(in_size, out_size), dtype=x.dtype)
  y = jnp.tensordot(x, m, axes=((axis,), (1,)), precision=jax.lax.Precision.HIGHEST)
  return jnp.moveaxis(y, -1, axis)


def resize_bilinear_align_corners(x_nhwc: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
  """F.interpolate(mode='bilinear', align_corners=True) for NHWC input; exact identity for equal sizes."""
  out_h, out_w = size
  x = interpolate_axis_align_corners(x_nhwc, axis=2, out_size=out_w)   # width first (as PyTorch)
  return interpolate_axis_align_corners(x, axis=1, out_size=out_h)


def correlation_map(src: jnp.ndarray, trg: jnp.ndarray, size: int,
                    precision=jax.lax.Precision.HIGHEST) -> jnp.ndarray:
  """One tap: [B, h, w, C] x [B, h', w', C] -> cosine map [B, size, size, size, size] (pre-ReLU)."""
  src = resize_bilinear_align_corners(l2_normalize(src), (size, size))
  trg = resize_bilinear_align_corners(l2_normalize(trg), (size, size))
  return jnp.einsum("bijc,bklc->bijkl", src, trg, precision=precision)


def _check_taps(src_feats: Sequence[jnp.ndarray], trg_feats: Sequence[jnp.ndarray]) -> None:
  if len(src_feats) != len(trg_feats):
    raise ValueError(f"{len(src_feats)} source taps but {len(trg_feats)} target taps")
  if not src_feats:
    raise ValueError("a correlation needs at least one tap")


def multilayer_correlation(src_feats: Sequence[jnp.ndarray], trg_feats: Sequence[jnp.ndarray],
                           size: int, precision=jax.lax.Precision.HIGHEST) -> jnp.ndarray:
  """Stacked per-tap cosine maps, [B, size, size, size, size, L] (L = number of taps), PRE-ReLU.

  Source cell (h1, w1), target cell (h2, w2); channel l = tap l in backbone order.
  """
  _check_taps(src_feats, trg_feats)
  maps = [correlation_map(s, t, size, precision) for s, t in zip(src_feats, trg_feats)]
  return jnp.stack(maps, axis=-1)


CORRELATION_MODES = ("multi", "concat", "mean")


def concat_correlation(src_feats: Sequence[jnp.ndarray], trg_feats: Sequence[jnp.ndarray], size: int,
                       precision=jax.lax.Precision.HIGHEST) -> jnp.ndarray:
  """Table A2 'concat': one cosine map of the channel-concatenated taps, [B, s, s, s, s, 1] pre-ReLU."""
  _check_taps(src_feats, trg_feats)

  def stacked(feats):
    resized = [resize_bilinear_align_corners(f.astype(jnp.promote_types(f.dtype, jnp.float32)), (size, size))
               for f in feats]
    return l2_normalize(jnp.concatenate(resized, axis=-1))

  src, trg = stacked(src_feats), stacked(trg_feats)
  return jnp.einsum("bijc,bklc->bijkl", src, trg, precision=precision)[..., None]


def mean_correlation(src_feats: Sequence[jnp.ndarray], trg_feats: Sequence[jnp.ndarray], size: int,
                     precision=jax.lax.Precision.HIGHEST) -> jnp.ndarray:
  """Table A2 'mean': mean over taps of the rectified cosine maps, [B, s, s, s, s, 1] (non-negative)."""
  corr = multilayer_correlation(src_feats, trg_feats, size, precision)
  return jnp.mean(jax.nn.relu(corr), axis=-1, keepdims=True)


def correlation_by_mode(mode: str, src_feats: Sequence[jnp.ndarray], trg_feats: Sequence[jnp.ndarray],
                        size: int, precision=jax.lax.Precision.HIGHEST) -> jnp.ndarray:
  """The correlation Match2Match reads, chosen by config.model.correlation ('multi' | 'concat' | 'mean')."""
  if mode == "multi":
    return multilayer_correlation(src_feats, trg_feats, size, precision)
  if mode == "concat":
    return concat_correlation(src_feats, trg_feats, size, precision)
  if mode == "mean":
    return mean_correlation(src_feats, trg_feats, size, precision)
  raise ValueError(f"config.model.correlation must be one of {CORRELATION_MODES}, got {mode!r}")
