"""TransforMatcher geometry: 4-D upsampling, keypoint (un)normalisation, kernel soft-argmax flow,
soft sampler and keypoint transfer (official `geometry.Geometry`, reference sections 2.6 and 3).

Conventions (channel-last port of the official tensors):
* corr [B, S, T]: S = source cell y*G + x, T = target cell y*G + x on a G x G grid (G = 30 for
  240 px input);
* grid g(i) = linspace(-1, 1, G)[i], built like torch.linspace in float32;
* keypoints [B, K, 2] as (x, y) plus a boolean mask [B, K] (the official code uses [B, 2, 40]
  padded with -2 and n_pts);
* normalised keypoints k_n = (k - S//2) / (S//2) for an S x S image (the official
  `imside // 2`; cell 0 <-> pixel 0, cell G-1 <-> pixel S: a deliberate copy of the code).

Keypoint transfer (`Geometry.transfer_kps_diff`):
 1. kernel soft-argmax: m = argmax_t corr[s, t] (under stop_gradient, first index on ties),
    G[s, t] = exp(-((t_x - m_x)^2 + (t_y - m_y)^2) / (2 sigma^2)) in cell units, multiplied into
    the RAW scores; P = softmax_t(G * corr) (temperature 1);
 2. flow x_s = sum_t P[s, t] g(t_x), y_s = sum_t P[s, t] g(t_y);
 3. soft sampler: d_s = sqrt(|(g(s_x), g(s_y)) - k|^2 + 1e-5), w_s = max(tau - d_s, 0),
    w <- w / (sum_s w_s + 1e-5); prediction = sum_s w_s (x_s, y_s).
tau = 0.1 in training, 0.05 at validation / test; sigma = 10 cells.

Dense target -> source positions (`dense_source_positions`, not in the official code): the same kernel
soft-argmax taken over the SOURCE cells of each target cell's column of corr, i.e. the official
source -> target transfer applied to corr^T, returned in source-image pixels (e.g. to warp the source).
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import numpy as np
import jax
import jax.numpy as jnp

from jaxmatch.models.transformatcher.correlation import interpolate_axis_align_corners

TAU_TRAIN = 0.1
TAU_EVAL = 0.05
SIGMA = 10.0
PAD_VALUE = -2.0


def _divide_exactly(x: jnp.ndarray, c: float) -> jnp.ndarray:
  """x / c as a true (correctly rounded) division, like PyTorch's.

  XLA turns division by a constant or by a broadcast scalar into multiplication by its rounded
  reciprocal (1 ulp off for e.g. 120 or 200, enough to move soft-sampler weights by 1e-5); a
  full-shape divisor behind an optimization barrier keeps the true division.
  """
  return x / jax.lax.optimization_barrier(jnp.full(x.shape, c, x.dtype))


# ----------------------------------------------------------------------------- 4-D upsampling
def upsample4d_align_corners(x: jnp.ndarray, size: int | Sequence[int]) -> jnp.ndarray:
  """Official `Geometry.interpolate4d` on [B, h1, w1, h2, w2]: separable bilinear align_corners.

  `size` = G (G x G), (H, W) for both source and target grids (as the code), or (H1, W1, H2, W2). First the
  (h1, w1) plane is resized (width then height, as PyTorch's kernel), then the (h2, w2) plane.
  """
  if isinstance(size, int):
    size = (size, size)
  if len(size) == 2:
    size = (size[0], size[1], size[0], size[1])
  h1, w1, h2, w2 = (int(s) for s in size)
  x = interpolate_axis_align_corners(x, axis=2, out_size=w1)
  x = interpolate_axis_align_corners(x, axis=1, out_size=h1)
  x = interpolate_axis_align_corners(x, axis=4, out_size=w2)
  return interpolate_axis_align_corners(x, axis=3, out_size=h2)


# ----------------------------------------------------------------------------- keypoints
def normalize_kps(kps_px: jnp.ndarray, img_size: int = 240, mask: Optional[jnp.ndarray] = None,
                  pad_value: float = PAD_VALUE) -> jnp.ndarray:
  """(k - S//2) / (S//2) (official `normalize_kps`, imside // 2). Masked-out entries -> pad_value."""
  half = float(int(img_size) // 2)
  kps_px = jnp.asarray(kps_px, jnp.promote_types(jnp.asarray(kps_px).dtype, jnp.float32))
  out = _divide_exactly(kps_px - half, half)
  if mask is not None:
    out = jnp.where(mask[..., None], out, pad_value)
  return out


def unnormalize_kps(kps_norm: jnp.ndarray, img_size: int = 240,
                    mask: Optional[jnp.ndarray] = None, pad_value: float = PAD_VALUE) -> jnp.ndarray:
  """k * (S//2) + S//2 (official `unnormalize_kps`). Masked-out entries -> pad_value."""
  half = float(int(img_size) // 2)
  out = kps_norm * half + half
  if mask is not None:
    out = jnp.where(mask[..., None], out, pad_value)
  return out


# ----------------------------------------------------------------------------- grids
@functools.lru_cache(maxsize=16)
def torch_linspace_np(start: float, end: float, steps: int) -> np.ndarray:
  """torch.linspace(start, end, steps) in float32, bit-exact with PyTorch's CPU kernel.

  The kernel computes step = (end - start) / (steps - 1) in float32, then start + step * i for
  i < steps // 2 and end - step * (steps - 1 - i) otherwise, each with a single rounding (fused
  multiply-add). Here the product and sum are exact in float64 and rounded once to float32.
  """
  start32, end32 = np.float32(start), np.float32(end)
  if steps == 1:
    return np.array([start32], np.float32)
  step = np.float64(np.float32((end32 - start32) / np.float32(steps - 1)))
  idx = np.arange(steps, dtype=np.float64)
  lo = np.float64(start32) + step * idx
  hi = np.float64(end32) - step * (steps - 1 - idx)
  out = np.where(idx < steps // 2, lo, hi).astype(np.float32)
  out.setflags(write=False)
  return out


def grid_coords(grid_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(gx, gy), each [G*G] float32: normalised (x, y) of cell y*G + x (official grid_x / grid_y)."""
  g = torch_linspace_np(-1.0, 1.0, int(grid_size))
  gx = np.tile(g, grid_size)
  gy = np.repeat(g, grid_size)
  return gx, gy


def _grid_size_of(corr: jnp.ndarray, grid: Optional[int]) -> int:
  if grid is not None:
    return int(grid)
  side = math.isqrt(corr.shape[-1])
  if side * side != corr.shape[-1]:
    raise ValueError(f"cannot infer a square grid from {corr.shape[-1]} target cells")
  return side


# ----------------------------------------------------------------------------- soft-argmax flow
def argmax_centers(corr: jnp.ndarray) -> jnp.ndarray:
  """[B, S] int32 target cell of the row maximum (first index on ties), not differentiated."""
  return jnp.argmax(jax.lax.stop_gradient(corr), axis=-1).astype(jnp.int32)


@functools.lru_cache(maxsize=16)
def gaussian_table(grid: int, sigma: float) -> np.ndarray:
  """exp(-d2 / (2 sigma^2)) for every integer squared cell distance d2 = 0 .. 2 (G-1)^2.

  As the code: float32 quotient -d2 / (2 sigma^2) (correctly rounded), then exp (here taken in
  float64 and rounded once to float32). A lookup table keeps it exact and cheap under jit.
  """
  d2 = np.arange(2 * (grid - 1) ** 2 + 1, dtype=np.float32)
  quotient = (-d2 / np.float32(2.0 * sigma ** 2)).astype(np.float32)
  table = np.exp(quotient.astype(np.float64)).astype(np.float32)
  table.setflags(write=False)
  return table


def gaussian_kernel_filter(corr: jnp.ndarray, grid: Optional[int] = None,
                           sigma: float = SIGMA,
                           centers: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """Official `apply_gaussian_kernel`: Gaussian (in cells) around each row's argmax times raw scores.

  `centers` [B, S] (target-cell indices) overrides the argmax (e.g. to inject reference centres
  at near-tie rows); by default they are the argmax under stop_gradient.
  """
  g = _grid_size_of(corr, grid)
  if centers is None:
    centers = argmax_centers(corr)
  centers = jax.lax.stop_gradient(centers)
  cy, cx = centers // g, centers % g
  cells = jnp.arange(g, dtype=jnp.int32)
  dy = cells[None, None, :] - cy[..., None]          # [B, S, G] offsets over target rows
  dx = cells[None, None, :] - cx[..., None]          # [B, S, G] offsets over target columns
  d2 = dx[..., None, :] ** 2 + dy[..., :, None] ** 2  # [B, S, G(y), G(x)] integer squared distance
  kernel = jnp.asarray(gaussian_table(g, float(sigma)))[d2]
  return kernel.reshape(corr.shape) * corr


def kernel_soft_argmax_flow(corr: jnp.ndarray, grid: Optional[int] = None,
                            sigma: float = SIGMA, centers: Optional[jnp.ndarray] = None,
                            return_pdf: bool = False):
  """Dense flow from corr [B, S, T]: (flow_x, flow_y) [B, S] in normalised target coordinates.

  With return_pdf=True returns (flow_x, flow_y, pdf [B, S, T]).
  """
  g = _grid_size_of(corr, grid)
  filtered = gaussian_kernel_filter(corr.astype(jnp.float32), g, sigma, centers)
  pdf = jax.nn.softmax(filtered, axis=-1)
  gx, gy = grid_coords(g)
  flow_x = jnp.sum(pdf * jnp.asarray(gx), axis=-1)
  flow_y = jnp.sum(pdf * jnp.asarray(gy), axis=-1)
  if return_pdf:
    return flow_x, flow_y, pdf
  return flow_x, flow_y


# ----------------------------------------------------------------------------- soft sampler
def soft_sampler_weights(kps_norm: jnp.ndarray, grid: int, tau: float) -> jnp.ndarray:
  """Official `attentive_indexing`: [B, K, 2] normalised (x, y) -> weights [B, K, G*G] (cell y*G+x)."""
  eps = 1e-5
  gx, gy = grid_coords(int(grid))
  dx = jnp.asarray(gx) - kps_norm[..., 0:1]           # [B, K, G*G]
  dy = jnp.asarray(gy) - kps_norm[..., 1:2]
  dist = jnp.sqrt(dx ** 2 + dy ** 2 + eps)
  w = jnp.maximum(tau - dist, 0.0)
  return w / (jnp.sum(w, axis=-1, keepdims=True) + eps)


def transfer_keypoints(corr: jnp.ndarray, src_kps_norm: jnp.ndarray, mask: jnp.ndarray,
                       grid: Optional[int] = None, tau: float = TAU_EVAL,
                       sigma: float = SIGMA, centers: Optional[jnp.ndarray] = None,
                       pad_value: float = PAD_VALUE) -> jnp.ndarray:
  """Official `transfer_kps_diff` (normalised in and out): [B, K, 2]; masked slots = pad_value.

  tau: 0.1 for training (TAU_TRAIN), 0.05 for validation / test (TAU_EVAL).
  """
  g = _grid_size_of(corr, grid)
  flow_x, flow_y = kernel_soft_argmax_flow(corr, g, sigma, centers)
  flow = jnp.stack([flow_x, flow_y], axis=-1)                       # [B, S, 2]
  weights = soft_sampler_weights(src_kps_norm.astype(jnp.float32), g, tau)   # [B, K, S]
  pred = jnp.sum(weights[..., None] * flow[:, None, :, :], axis=2)  # [B, K, 2]
  return jnp.where(mask[..., None], pred, pad_value)


# ----------------------------------------------------------------------------- dense target -> source
def dense_source_positions(corr: jnp.ndarray, img_size: int, grid: Optional[int] = None,
                           sigma: float = SIGMA) -> jnp.ndarray:
  """corr [B, S, T] -> [B, G, G, 2]: for target cell (y, x), the (x, y) source position in pixels.

  Kernel soft-argmax over the source cells (rows of corr) of each target cell (column), symmetric to
  `kernel_soft_argmax_flow`; normalised coordinates map to pixels as the keypoints do
  (`unnormalize_kps`: v * S//2 + S//2 for an S x S image).
  """
  if corr.ndim != 3 or corr.shape[1] != corr.shape[2]:
    raise ValueError(f"dense_source_positions expects square corr [B, G*G, G*G], got {corr.shape}")
  g = _grid_size_of(corr, grid)
  flow_x, flow_y = kernel_soft_argmax_flow(jnp.swapaxes(corr, 1, 2), g, sigma)
  pos = unnormalize_kps(jnp.stack([flow_x, flow_y], axis=-1), img_size)
  return pos.reshape(corr.shape[0], g, g, 2)
