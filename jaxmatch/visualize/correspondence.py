"""Pictures of semantic correspondence results (pure functions: numpy in, uint8 RGB out; PIL only).

  keypoint_figure  source | target with the transferred keypoints: ground truth as rings, predictions as
                   dots coloured correct (green) / wrong (red) at a PCK threshold, an error line from each
                   prediction to its ground truth, and the source keypoints in the same colours
  warp_figure      source | target | source warped into the target frame by a dense target->source map
                   (the paper's Fig. 5 layout)
  save_png         writes such an array as a PNG

Images are [H, W, 3] (or [H, W]) uint8, or floats in [0, 1] (un-normalise model inputs first).
Keypoints are [K, 2] (x, y) in pixels of their own image; rows that are padding (negative or non-finite
source or ground-truth coordinates, e.g. the datasets' -2) are skipped.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

CORRECT = (0, 200, 0)
WRONG = (230, 0, 0)
UNJUDGED = (255, 200, 0)   # predictions when no threshold is given
GROUND_TRUTH = (255, 255, 255)


def as_rgb_uint8(img, what: str = "image") -> np.ndarray:
  """[H, W, 3] uint8 from uint8 or [0, 1]-float, RGB or grey; anything else is a ValueError."""
  a = np.asarray(img)
  if a.ndim == 2:
    a = np.repeat(a[..., None], 3, axis=-1)
  if a.ndim != 3 or a.shape[-1] not in (1, 3) or a.shape[0] == 0 or a.shape[1] == 0:
    raise ValueError(f"{what} must be [H, W, 3] or [H, W], got shape {a.shape}")
  if a.shape[-1] == 1:
    a = np.repeat(a, 3, axis=-1)
  if a.dtype == np.uint8:
    return a
  if np.issubdtype(a.dtype, np.floating):
    return np.round(np.clip(np.nan_to_num(a), 0.0, 1.0) * 255.0).astype(np.uint8)
  raise ValueError(f"{what} must be uint8 or float in [0, 1], got dtype {a.dtype}")


def side_by_side(images: list[np.ndarray]) -> np.ndarray:
  """Concatenates RGB images left to right, padding shorter ones with black at the bottom."""
  height = max(im.shape[0] for im in images)
  padded = [np.pad(im, ((0, height - im.shape[0]), (0, 0), (0, 0))) for im in images]
  return np.concatenate(padded, axis=1)


def save_png(path: str, array) -> str:
  """Writes a uint8 [H, W, 3] or [H, W] array as PNG (parent folders created); returns the path."""
  a = np.asarray(array)
  if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
    raise ValueError(f"save_png expects uint8 [H, W], [H, W, 3] or [H, W, 4], got {a.dtype} {a.shape}")
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  Image.fromarray(a).save(path, format="PNG")
  return path


# ----------------------------------------------------------------------------- keypoints
def _keypoints(kps, name: str, count: int | None = None) -> np.ndarray:
  a = np.asarray(kps, np.float64)
  if a.ndim != 2 or a.shape[1] != 2 or (count is not None and a.shape[0] != count):
    want = f"[{count}, 2]" if count is not None else "[K, 2]"
    raise ValueError(f"{name} must be {want} (x, y) pixels, got shape {a.shape}")
  return a


def _marker_radius(img: np.ndarray) -> int:
  return max(2, round(min(img.shape[:2]) / 80))


def keypoint_figure(src_img, trg_img, src_kps, trg_kps, pred_kps, threshold: float | None = None) -> np.ndarray:
  """Source | target with predicted vs ground-truth target keypoints; uint8 [max(Hs, Ht), Ws + Wt, 3].

  threshold: PCK distance in target pixels (e.g. alpha * max(bbox side)); a prediction within it (<=) is
  correct (green), else wrong (red). None draws every prediction in amber.
  """
  src, trg = as_rgb_uint8(src_img, "src_img"), as_rgb_uint8(trg_img, "trg_img")
  src_k = _keypoints(src_kps, "src_kps")
  trg_k = _keypoints(trg_kps, "trg_kps", len(src_k))
  pred_k = _keypoints(pred_kps, "pred_kps", len(src_k))
  if threshold is not None and not threshold > 0:
    raise ValueError(f"threshold must be a positive distance in pixels or None, got {threshold}")
  canvas = Image.fromarray(side_by_side([src, trg]))
  draw = ImageDraw.Draw(canvas)
  offset, r = src.shape[1], _marker_radius(trg)
  h_t, w_t = trg.shape[:2]
  valid = np.all(np.isfinite(src_k) & np.isfinite(trg_k) & np.isfinite(pred_k), axis=1)
  valid &= np.all(src_k >= 0, axis=1) & np.all(trg_k >= 0, axis=1)
  errors = np.linalg.norm(pred_k - trg_k, axis=1)
  for i in np.flatnonzero(valid):
    colour = UNJUDGED if threshold is None else (CORRECT if errors[i] <= threshold else WRONG)
    # Predictions may leave the target image; draw them on its border instead of over the source.
    px, py = np.clip(pred_k[i], 0, [w_t - 1, h_t - 1]) + [offset, 0]
    gx, gy = trg_k[i] + [offset, 0]
    sx, sy = src_k[i]
    draw.line([(px, py), (gx, gy)], fill=colour, width=max(1, r // 2))
    draw.ellipse([gx - r - 1, gy - r - 1, gx + r + 1, gy + r + 1], outline=GROUND_TRUTH, width=1)
    draw.ellipse([px - r, py - r, px + r, py + r], fill=colour)
    draw.ellipse([sx - r, sy - r, sx + r, sy + r], fill=colour, outline=GROUND_TRUTH)
  return np.asarray(canvas, dtype=np.uint8)


# ----------------------------------------------------------------------------- dense warp
def _align_corners_coords(n_out: int, n_in: int) -> np.ndarray:
  """Positions in a length-n_in grid of n_out samples whose first and last coincide with the grid's ends."""
  if n_out == 1 or n_in == 1:
    return np.zeros(n_out)
  return np.arange(n_out) * ((n_in - 1) / (n_out - 1))


def _interp_axis(a: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
  lo = np.clip(np.floor(coords).astype(int), 0, a.shape[axis] - 1)
  hi = np.minimum(lo + 1, a.shape[axis] - 1)
  w = (coords - lo).reshape([-1 if d == axis else 1 for d in range(a.ndim)])
  return np.take(a, lo, axis=axis) * (1 - w) + np.take(a, hi, axis=axis) * w


def upsample_map(trg_to_src: np.ndarray, height: int, width: int) -> np.ndarray:
  """[h, w, 2] -> [height, width, 2] bilinearly, grid corners on image corners (TransforMatcher's grid:
  cell 0 at pixel 0, the last cell at the far edge). A map already at image size is returned unchanged."""
  h, w = trg_to_src.shape[:2]
  out = _interp_axis(trg_to_src.astype(np.float64), _align_corners_coords(height, h), 0)
  return _interp_axis(out, _align_corners_coords(width, w), 1)


def bilinear_sample(img: np.ndarray, xy: np.ndarray) -> np.ndarray:
  """img [H, W, C] at continuous pixel positions xy [..., 2] (integer = pixel index); outside -> 0."""
  h, w = img.shape[:2]
  x, y = xy[..., 0], xy[..., 1]
  inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
  x0 = np.clip(np.floor(x), 0, w - 1).astype(int)
  y0 = np.clip(np.floor(y), 0, h - 1).astype(int)
  x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
  fx, fy = (np.clip(x, 0, w - 1) - x0)[..., None], (np.clip(y, 0, h - 1) - y0)[..., None]
  img = img.astype(np.float64)
  top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
  bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
  return np.where(inside[..., None], top * (1 - fy) + bottom * fy, 0.0)


def warp_figure(src_img, trg_img, trg_to_src) -> np.ndarray:
  """Source | target | source warped to the target frame; uint8 [max(Hs, Ht), Ws + 2 Wt, 3].

  trg_to_src [h, w, 2]: for each target grid cell (or pixel, when [Ht, Wt, 2]) the source position (x, y)
  in source pixels. It is upsampled bilinearly to the target size (grid corners on image corners), the
  source is sampled bilinearly there, and positions outside the source are black.
  """
  src, trg = as_rgb_uint8(src_img, "src_img"), as_rgb_uint8(trg_img, "trg_img")
  flow = np.asarray(trg_to_src)
  if flow.ndim != 3 or flow.shape[-1] != 2 or min(flow.shape[:2]) < 1:
    raise ValueError(f"trg_to_src must be [h, w, 2] source (x, y) per target cell, got shape {flow.shape}")
  if not np.all(np.isfinite(flow)):
    raise ValueError("trg_to_src has non-finite values")
  dense = upsample_map(flow, *trg.shape[:2])
  warped = np.round(bilinear_sample(src, dense)).astype(np.uint8)
  return side_by_side([src, trg, warped])
