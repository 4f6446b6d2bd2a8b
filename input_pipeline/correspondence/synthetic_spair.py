"""A small synthetic SPair-71k written in the real on-disk layout, with exact ground truth.

Source images are smooth multi-scale colour textures (low-frequency colour fields, oriented gratings,
Gaussian blobs) with an elliptical "object" of its own texture. Each target is a known warp of its
source: a random affine (rotation +-25 deg, scale 0.8-1.25, shear, translation) composed with a small
thin-plate-spline displacement, rendered by inverse mapping, plus a per-channel gain/bias change.
Source keypoints are sampled on the object and mapped exactly through the forward warp (the TPS part
is inverted by fixed-point iteration to ~1e-9 px); keypoints leaving the target are dropped. Every
source image serves 2-4 pairs and every pair writes its own target image, like the real dataset where
images are shared between pairs. The warp of each pair is stored under the extra JSON field
'synthetic' (the real builder ignores it), so tests can re-project keypoints. Deterministic per seed.
"""
from __future__ import annotations

import json
import math
import pathlib

import numpy as np
from PIL import Image

from input_pipeline.correspondence.spair import SPAIR_CATEGORIES, VOC_CLASS_IDS

SPLITS = ('trn', 'val', 'test')
DEFAULT_NUM_PAIRS = {'trn': 60, 'val': 20, 'test': 20}
DEFAULT_CATEGORIES = ('aeroplane', 'car', 'cat', 'dog')
_SIZE_RANGE = (160, 320)


# ----------------------------------------------------------------------------- textures

def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
  ys, xs = np.mgrid[0:h, 0:w]
  return xs.astype(np.float32), ys.astype(np.float32)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """Smooth float32 [h, w, 3] texture in [0, 255] with structure at several scales.

  Gratings and Gaussian blobs are separable in x and y, so all of them together cost a few
  [h, n] x [n, w] products instead of per-pixel transcendental functions. Products go through
  np.einsum rather than BLAS: multi-threaded OpenBLAS is 100x slower on such tiny products when the
  cores are busy (e.g. inside data-loader workers).
  """
  low = rng.uniform(40, 215, size=(4, 4, 3)).astype(np.float32)
  img = np.stack([np.asarray(Image.fromarray(low[..., c], 'F').resize((w, h), Image.BICUBIC))
                  for c in range(3)], axis=-1)
  xs, ys = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
  cols, rows, colours = [], [], []
  for _ in range(3):                       # oriented gratings, period 14-40 px: sin(a x + b y + c)
    theta, period = rng.uniform(0, math.pi), rng.uniform(14, 40)
    a, b = (2 * math.pi / period) * math.cos(theta), (2 * math.pi / period) * math.sin(theta)
    c, amp = rng.uniform(0, 2 * math.pi), rng.uniform(-25, 25, size=3)
    rows += [np.sin(a * xs), np.cos(a * xs)]
    cols += [np.cos(b * ys + c), np.sin(b * ys + c)]
    colours += [amp, amp]
  for _ in range(14):                      # coloured blobs, sigma 5-18 px
    cx, cy, sig = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(5, 18)
    rows.append(np.exp(-(xs - cx) ** 2 / (2 * sig * sig)))
    cols.append(np.exp(-(ys - cy) ** 2 / (2 * sig * sig)))
    colours.append(rng.uniform(-70, 70, size=3))
  col, row = np.stack(cols, 1), np.stack(rows, 0)            # [h, n], [n, w]
  for ch, weights in enumerate(np.stack(colours, 1).astype(np.float32)):
    img[..., ch] += np.einsum('hn,nw->hw', col * weights, row)
  return np.clip(img, 0, 255).astype(np.float32)


def source_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns (image float32 [H, W, 3], object mask bool [H, W], object ellipse (cx, cy, rx, ry))."""
  w, h = (int(v) for v in rng.integers(_SIZE_RANGE[0], _SIZE_RANGE[1] + 1, size=2))
  background, foreground = _texture(rng, h, w), _texture(rng, h, w)
  ellipse = np.array([w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6),
                      w * rng.uniform(0.25, 0.38), h * rng.uniform(0.25, 0.38)])
  xs, ys = _grid(h, w)
  inside = ((xs - ellipse[0]) / ellipse[2]) ** 2 + ((ys - ellipse[1]) / ellipse[3]) ** 2 <= 1.0
  return np.where(inside[..., None], foreground, background), inside, ellipse


def object_points(rng: np.random.Generator, ellipse: np.ndarray, n: int) -> np.ndarray:
  """n integer keypoints inside the object ellipse (shrunk a little to stay off its rim)."""
  r = 0.9 * np.sqrt(rng.uniform(0, 1, n))
  t = rng.uniform(0, 2 * math.pi, n)
  pts = np.stack([ellipse[0] + r * ellipse[2] * np.cos(t), ellipse[1] + r * ellipse[3] * np.sin(t)], 1)
  return np.round(pts)


# ----------------------------------------------------------------------------- warps

def _tps_kernel(r2: np.ndarray) -> np.ndarray:
  """Thin-plate radial basis U(r) = r^2 log r, written with r^2 (U(0) = 0)."""
  with np.errstate(divide='ignore', invalid='ignore'):
    return np.where(r2 > 0, 0.5 * r2 * np.log(r2), 0.0)


def _tps_fit(ctrl: np.ndarray, disp: np.ndarray) -> np.ndarray:
  """Coefficients [n + 3, 2] of the TPS interpolating displacements `disp` at `ctrl`."""
  n = len(ctrl)
  k = _tps_kernel(((ctrl[:, None] - ctrl[None]) ** 2).sum(-1))
  p = np.concatenate([np.ones((n, 1)), ctrl], axis=1)
  lhs = np.block([[k, p], [p.T, np.zeros((3, 3))]])
  return np.linalg.solve(lhs, np.concatenate([disp, np.zeros((3, 2))]))


def _tps_displacement(warp: dict, pts: np.ndarray) -> np.ndarray:
  ctrl, coef = np.asarray(warp['tps_ctrl']), np.asarray(warp['tps_coef'])
  r2 = ((pts[:, None, :] - ctrl[None]) ** 2).sum(-1)
  k = _tps_kernel(r2)
  # einsum, not BLAS matmul (see _texture).
  return np.einsum('nk,kd->nd', k, coef[:-3]) + coef[-3] + np.einsum('nj,jd->nd', pts, coef[-2:])


def source_coords(warp: dict, trg_pts: np.ndarray) -> np.ndarray:
  """Inverse warp, target pixel coords -> source pixel coords: s = u + d(u), u = A^-1 t."""
  a = np.asarray(warp['affine'], np.float64)                 # [2, 3]: u -> t = a[:, :2] u + a[:, 2]
  u = np.einsum('nj,ij->ni', np.asarray(trg_pts, np.float64) - a[:, 2], np.linalg.inv(a[:, :2]))
  return u + _tps_displacement(warp, u)


def target_coords(warp: dict, src_pts: np.ndarray, iters: int = 200) -> np.ndarray:
  """Forward warp: solves s = u + d(u) for u by fixed-point iteration (|grad d| << 1), then t = A u."""
  s = np.asarray(src_pts, np.float64)
  u = s.copy()
  for _ in range(iters):
    u_next = s - _tps_displacement(warp, u)
    done = np.abs(u_next - u).max(initial=0.0) < 1e-10
    u = u_next
    if done:
      break
  a = np.asarray(warp['affine'], np.float64)
  return np.einsum('nj,ij->ni', u, a[:, :2]) + a[:, 2]


def random_warp(rng: np.random.Generator, src_wh, trg_wh) -> dict:
  """Affine (about the image centres) composed with a small TPS on a 3x3 control grid."""
  (sw, sh), (tw, th) = src_wh, trg_wh
  angle, scale = math.radians(rng.uniform(-25, 25)), rng.uniform(0.8, 1.25)
  shear = rng.uniform(-0.15, 0.15)
  fit = math.sqrt((tw * th) / (sw * sh))                     # keep the content at a similar size
  rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
  lin = scale * fit * rot @ np.array([[1.0, shear], [0.0, 1.0]])
  shift = np.array([tw, th]) * (0.5 + rng.uniform(-0.08, 0.08, 2))
  offset = shift - lin @ np.array([sw / 2, sh / 2])
  gx, gy = np.meshgrid(np.linspace(0, sw, 3), np.linspace(0, sh, 3))
  ctrl = np.stack([gx.ravel(), gy.ravel()], 1)
  disp = rng.normal(0, 0.025 * min(sw, sh), size=ctrl.shape)
  return {'affine': np.concatenate([lin, offset[:, None]], 1).tolist(), 'tps_ctrl': ctrl.tolist(),
          'tps_coef': _tps_fit(ctrl, disp).tolist(), 'angle_deg': math.degrees(angle),
          'scale': scale, 'shear': shear}


def _bilinear(img: np.ndarray, xy: np.ndarray, fill: np.ndarray) -> np.ndarray:
  """Samples img [H, W, C] at float (x, y) [N, 2]; points outside take `fill` [N, C]."""
  h, w = img.shape[:2]
  x, y = xy[:, 0], xy[:, 1]
  inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
  x0 = np.clip(np.floor(x), 0, w - 2).astype(np.int64)
  y0 = np.clip(np.floor(y), 0, h - 2).astype(np.int64)
  fx, fy = (np.clip(x, 0, w - 1) - x0)[:, None], (np.clip(y, 0, h - 1) - y0)[:, None]
  top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
  bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
  return np.where(inside[:, None], top * (1 - fy) + bottom * fy, fill)


def _nearest_mask(mask: np.ndarray, xy: np.ndarray) -> np.ndarray:
  h, w = mask.shape
  ix, iy = np.round(xy[:, 0]).astype(np.int64), np.round(xy[:, 1]).astype(np.int64)
  inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
  return inside & mask[np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)]


def render_target(rng, warp, src_img, src_mask, trg_wh):
  tw, th = trg_wh
  xs, ys = _grid(th, tw)
  s = source_coords(warp, np.stack([xs.ravel(), ys.ravel()], 1))
  background = _texture(rng, th, tw).reshape(-1, 3)
  img = _bilinear(src_img, s, background).reshape(th, tw, 3)
  mask = _nearest_mask(src_mask, s)
  gain, bias = rng.uniform(0.85, 1.15, 3), rng.uniform(-15, 15, 3)
  img = np.clip(img * gain + bias, 0, 255)
  return img, mask.reshape(th, tw), {'gain': gain.tolist(), 'bias': bias.tolist()}


# ----------------------------------------------------------------------------- writing

def _bbox(pts: np.ndarray, wh, margin: float = 8.0) -> list[int]:
  lo = np.floor(pts.min(0) - margin)
  hi = np.ceil(pts.max(0) + margin)
  return [int(max(lo[0], 0)), int(max(lo[1], 0)), int(min(hi[0], wh[0] - 1)),
          int(min(hi[1], wh[1] - 1))]


def _difficulty(warp: dict, dropped: int) -> dict:
  """SPair-like flags from the known warp: 0 easy, 1 medium, 2 hard."""
  vp = int(abs(warp['angle_deg']) >= 8) + int(abs(warp['angle_deg']) >= 16)
  sc = int(abs(math.log(warp['scale'])) >= math.log(1.08)) + \
      int(abs(math.log(warp['scale'])) >= math.log(1.16))
  return {'viewpoint_variation': vp, 'scale_variation': sc, 'truncation': int(dropped > 0),
          'occlusion': 0}


def _save(root: pathlib.Path, category: str, stem: str, img: np.ndarray, mask: np.ndarray):
  Image.fromarray(np.round(img).astype(np.uint8)).save(
      root / 'JPEGImages' / category / f'{stem}.jpg', quality=92)
  seg = (mask * VOC_CLASS_IDS[category]).astype(np.uint8)   # VOC class-index PNG
  Image.fromarray(seg, 'L').save(root / 'Segmentation' / category / f'{stem}.png')


def _make_pair(rng, src_img, src_mask, ellipse, src_wh):
  """Draws a warp whose target keeps >= 3 keypoints; returns everything the pair needs."""
  for _ in range(20):
    trg_wh = tuple(int(v) for v in rng.integers(_SIZE_RANGE[0], _SIZE_RANGE[1] + 1, size=2))
    warp = random_warp(rng, src_wh, trg_wh)
    src_kps = object_points(rng, ellipse, int(rng.integers(5, 21)))
    trg_kps = target_coords(warp, src_kps)
    keep = (trg_kps[:, 0] >= 0) & (trg_kps[:, 0] <= trg_wh[0] - 1) & \
        (trg_kps[:, 1] >= 0) & (trg_kps[:, 1] <= trg_wh[1] - 1)
    if keep.sum() >= 3:
      break
  else:
    raise RuntimeError('could not draw a warp that keeps 3 keypoints inside the target')
  img, mask, photo = render_target(rng, warp, src_img, src_mask, trg_wh)
  return warp, trg_wh, src_kps[keep], trg_kps[keep], int((~keep).sum()), img, mask, photo


def _pair_annotation(pair_id, category, src_stem, trg_stem, src_wh, trg_wh, src_kps, trg_kps,
                     warp, photo, dropped) -> dict:
  ann = {'pair_id': pair_id, 'category': category,
         'src_imname': f'{src_stem}.jpg', 'trg_imname': f'{trg_stem}.jpg',
         'src_imsize': [src_wh[0], src_wh[1], 3], 'trg_imsize': [trg_wh[0], trg_wh[1], 3],
         'src_kps': src_kps.astype(int).tolist(), 'trg_kps': trg_kps.tolist(),
         'src_bndbox': _bbox(src_kps, src_wh), 'trg_bndbox': _bbox(trg_kps, trg_wh),
         'kps_ids': list(range(len(src_kps))), 'mirror': 0,
         'synthetic': {**warp, **photo}}
  ann.update(_difficulty(warp, dropped))
  return ann


def _uses_per_source(rng: np.random.Generator, num_pairs: int) -> list[int]:
  uses = []
  while sum(uses) < num_pairs:
    uses.append(int(rng.integers(2, 5)))
  uses[-1] -= sum(uses) - num_pairs
  return [u for u in uses if u > 0]


def _write_split(root, split, num_pairs, categories, seed, first_pair_id) -> list[str]:
  rng = np.random.default_rng([seed, SPLITS.index(split)])
  lines, pair_id = [], first_pair_id
  (root / 'PairAnnotation' / split).mkdir(parents=True, exist_ok=True)
  for i, uses in enumerate(_uses_per_source(rng, num_pairs)):
    category = categories[int(rng.integers(len(categories)))]
    src_stem = f'{split}_{i:05d}'
    src_img, src_mask, ellipse = source_image(rng)
    src_wh = (src_img.shape[1], src_img.shape[0])
    _save(root, category, src_stem, src_img, src_mask)
    for k in range(uses):
      warp, trg_wh, s_kps, t_kps, dropped, img, mask, photo = _make_pair(
          rng, src_img, src_mask, ellipse, src_wh)
      trg_stem = f'{src_stem}_t{k}'
      _save(root, category, trg_stem, img, mask)
      line = f'{pair_id:06d}-{src_stem}-{trg_stem}:{category}'
      ann = _pair_annotation(pair_id, category, src_stem, trg_stem, src_wh, trg_wh, s_kps, t_kps,
                             warp, photo, dropped)
      (root / 'PairAnnotation' / split / f'{line}.json').write_text(json.dumps(ann, sort_keys=True))
      lines.append(line)
      pair_id += 1
  return lines


def write_synthetic_spair(root, num_pairs: dict[str, int] | None = None, seed: int = 0,
                          categories=DEFAULT_CATEGORIES) -> str:
  """Writes `<root>/SPair-71k` in the distributed layout and returns that folder's path."""
  num_pairs = {**DEFAULT_NUM_PAIRS, **(num_pairs or {})}
  unknown = sorted(set(categories) - set(SPAIR_CATEGORIES))
  if unknown:
    raise ValueError(f'unknown SPair categories {unknown}; choose from {SPAIR_CATEGORIES}')
  out = pathlib.Path(root) / 'SPair-71k'
  for sub in ('JPEGImages', 'Segmentation'):
    for category in categories:
      (out / sub / category).mkdir(parents=True, exist_ok=True)
  (out / 'Layout' / 'large').mkdir(parents=True, exist_ok=True)
  pair_id = 1
  for split in SPLITS:
    lines = _write_split(out, split, num_pairs[split], tuple(categories), seed, pair_id)
    pair_id += len(lines)
    # Trailing newline, as distributed: the official loader drops the text after the last '\n'.
    (out / 'Layout' / 'large' / f'{split}.txt').write_text(''.join(f'{ln}\n' for ln in lines))
  return str(out)
