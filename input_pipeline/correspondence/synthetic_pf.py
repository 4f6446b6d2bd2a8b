"""Small synthetic PF-PASCAL and PF-WILLOW datasets written in their distributed layouts, exact ground truth.

Images come from the synthetic SPair generator (smooth multi-scale textures with an elliptical object;
targets are known affine + thin-plate-spline warps of a source, with a colour change). Unlike SPair,
PF annotations belong to images, not to pairs, so every "group" is one source image plus 2-3 warped
copies whose keypoints are the source keypoints mapped exactly through each warp; any two images of a
group then form a pair with index-matched ground truth (source-target and target-target pairs), like
the real datasets where every image takes part in several pairs.

PF-PASCAL: each class has a fixed number of keypoint slots; a slot is invisible (NaN row in the .mat)
when it was hidden in the source, left the warped image, or was hidden at random in a copy, so pairs
keep only the keypoints visible in both. PF-WILLOW: 10 keypoints per image, all visible (warps that
push one out are redrawn), coordinates in test_pairs.csv. The warps are stored in `synthetic.json`
at the dataset root (the real builders ignore it) so tests can re-project keypoints. Deterministic.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np
from PIL import Image

from input_pipeline.correspondence.pfpascal import PFPASCAL_CATEGORIES
from input_pipeline.correspondence.pfwillow import NUM_KPS, PFWILLOW_CATEGORIES
from input_pipeline.correspondence.synthetic_spair import (object_points, random_warp,
                                                           render_target, source_image,
                                                           target_coords)

PASCAL_SPLITS = ('trn', 'val', 'test')
DEFAULT_PASCAL_PAIRS = {'trn': 60, 'val': 20, 'test': 20}
DEFAULT_PASCAL_CATEGORIES = ('aeroplane', 'car', 'cat', 'dog')
DEFAULT_WILLOW_CATEGORIES = ('car(G)', 'duck(S)', 'motorbike(M)', 'winebottle(wC)')
_SIZE_RANGE = (160, 320)
_HIDE_SOURCE, _HIDE_COPY = 0.15, 0.1


def pascal_slots(category: str) -> int:
  """Fixed keypoint count per class (6..14), as every PF-PASCAL class has its own keypoint set."""
  return 6 + (3 * PFPASCAL_CATEGORIES.index(category)) % 9


def _inside(pts: np.ndarray, wh) -> np.ndarray:
  return (pts[:, 0] >= 0) & (pts[:, 0] <= wh[0] - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= wh[1] - 1)


def _warped_copy(rng, src_img, src_mask, src_pts, need_all: bool, tries: int = 30):
  """A warped copy: (image, keypoints with NaN where not visible, warp); None if none fits."""
  src_wh = (src_img.shape[1], src_img.shape[0])
  visible = ~np.isnan(src_pts).any(axis=1)
  for _ in range(tries):
    trg_wh = tuple(int(v) for v in rng.integers(_SIZE_RANGE[0], _SIZE_RANGE[1] + 1, size=2))
    warp = random_warp(rng, src_wh, trg_wh)
    pts = np.full_like(src_pts, np.nan)
    pts[visible] = target_coords(warp, src_pts[visible])
    inside = _inside(np.nan_to_num(pts, nan=-1.0), trg_wh) & visible
    if (inside.all() if need_all else inside.sum() >= 3):
      pts[~inside] = np.nan
      img, _, _ = render_target(rng, warp, src_img, src_mask, trg_wh)
      return img, pts, warp
  return None


def _group(rng, n_points: int, n_copies: int, hide: bool):
  """[(image, keypoints [n, 2] with NaN rows, warp or None for the source)]."""
  while True:
    src_img, src_mask, ellipse = source_image(rng)
    pts = object_points(rng, ellipse, n_points).astype(np.float64)
    if hide:
      pts[rng.uniform(size=n_points) < _HIDE_SOURCE] = np.nan
    images = [(src_img, pts, None)]
    for _ in range(n_copies):
      copy = _warped_copy(rng, src_img, src_mask, pts, need_all=not hide)
      if copy is not None:
        if hide:
          copy[1][rng.uniform(size=n_points) < _HIDE_COPY] = np.nan
        images.append(copy)
    if len(images) >= 2:
      return images


def _pairs_of(rng, images, min_common: int) -> list[tuple[int, int]]:
  """Index pairs (i, j), i != j, with >= min_common keypoints visible in both, in random order."""
  out = []
  for i in range(len(images)):
    for j in range(i + 1, len(images)):
      common = ~(np.isnan(images[i][1]).any(1) | np.isnan(images[j][1]).any(1))
      if common.sum() >= min_common:
        out.append((i, j) if rng.uniform() < 0.5 else (j, i))
  rng.shuffle(out)
  return out


def _save_image(path: pathlib.Path, img: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  array = Image.fromarray(np.round(img).astype(np.uint8))
  array.save(path, quality=92) if path.suffix == '.jpg' else array.save(path)


def _visible_box(pts: np.ndarray, wh, margin: float = 8.0) -> list[float]:
  vis = pts[~np.isnan(pts).any(axis=1)]
  lo, hi = np.floor(vis.min(0) - margin), np.ceil(vis.max(0) + margin)
  return [float(max(lo[0], 0)), float(max(lo[1], 0)), float(min(hi[0], wh[0] - 1)),
          float(min(hi[1], wh[1] - 1))]


def _warp_entry(warp, source: str) -> dict:
  return {'source': source, 'warp': warp}


# ----------------------------------------------------------------------------- PF-PASCAL

def _write_pascal_split(out: pathlib.Path, split: str, num_pairs: int, categories, seed: int,
                        warps: dict) -> list[str]:
  import scipy.io
  rng = np.random.default_rng([seed, PASCAL_SPLITS.index(split)])
  year = 2007 + PASCAL_SPLITS.index(split)         # VOC-like stems, distinct per split
  rows, counter = [], 0
  while len(rows) < num_pairs:
    category = categories[int(rng.integers(len(categories)))]
    images = _group(rng, pascal_slots(category), int(rng.integers(2, 4)), hide=True)
    stems = []
    for img, pts, warp in images:
      stem = f'{year}_{counter:06d}'
      counter += 1
      _save_image(out / 'JPEGImages' / f'{stem}.jpg', img)
      wh = (img.shape[1], img.shape[0])
      ann = out / 'Annotations' / category / f'{stem}.mat'
      ann.parent.mkdir(parents=True, exist_ok=True)
      scipy.io.savemat(ann, {'kps': pts, 'bbox': np.array([_visible_box(pts, wh)])})
      if warp is not None:
        warps[stem] = _warp_entry(warp, stems[0])
      stems.append(stem)
    class_id = PFPASCAL_CATEGORIES.index(category) + 1
    for i, j in _pairs_of(rng, images, 3)[:num_pairs - len(rows)]:
      row = [f'PF-dataset-PASCAL/JPEGImages/{stems[i]}.jpg', f'PF-dataset-PASCAL/JPEGImages/{stems[j]}.jpg',
             str(class_id)]
      rows.append(','.join(row + ([str(int(rng.integers(2)))] if split == 'trn' else [])))
  return rows


def write_synthetic_pfpascal(root, num_pairs: dict[str, int] | None = None, seed: int = 0,
                             categories=DEFAULT_PASCAL_CATEGORIES) -> str:
  """Writes `<root>/PF-PASCAL` in the distributed layout and returns that folder's path."""
  num_pairs = {**DEFAULT_PASCAL_PAIRS, **(num_pairs or {})}
  unknown = sorted(set(categories) - set(PFPASCAL_CATEGORIES))
  if unknown:
    raise ValueError(f'unknown PF-PASCAL classes {unknown}; choose from {PFPASCAL_CATEGORIES}')
  out = pathlib.Path(root) / 'PF-PASCAL'
  (out / 'JPEGImages').mkdir(parents=True, exist_ok=True)
  (out / 'Annotations').mkdir(parents=True, exist_ok=True)
  warps = {}
  for split in PASCAL_SPLITS:
    rows = _write_pascal_split(out, split, num_pairs[split], tuple(categories), seed, warps)
    header = 'source_image,target_image,class' + (',flip' if split == 'trn' else '')
    (out / f'{split}_pairs.csv').write_text('\n'.join([header, *rows]) + '\n')
  (out / 'synthetic.json').write_text(json.dumps(warps))
  return str(out)


# ----------------------------------------------------------------------------- PF-WILLOW

def _willow_header() -> str:
  cols = ['imageA', 'imageB']
  for side in ('A', 'B'):
    cols += [f'X{side}{k}' for k in range(1, NUM_KPS + 1)] + [f'Y{side}{k}' for k in range(1, NUM_KPS + 1)]
  return ','.join(cols)


def _coords(pts: np.ndarray) -> list[str]:
  return [repr(float(v)) for v in pts[:, 0]] + [repr(float(v)) for v in pts[:, 1]]


def write_synthetic_pfwillow(root, num_pairs: int = 20, seed: int = 0,
                             categories=DEFAULT_WILLOW_CATEGORIES) -> str:
  """Writes `<root>/PF-WILLOW` in the distributed layout and returns that folder's path."""
  unknown = sorted(set(categories) - set(PFWILLOW_CATEGORIES))
  if unknown:
    raise ValueError(f'unknown PF-WILLOW categories {unknown}; choose from {PFWILLOW_CATEGORIES}')
  out = pathlib.Path(root) / 'PF-WILLOW'
  out.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng([seed, 7])
  rows, warps, counter = [], {}, 0
  while len(rows) < num_pairs:
    category = categories[int(rng.integers(len(categories)))]
    images = _group(rng, NUM_KPS, int(rng.integers(2, 4)), hide=False)
    stems = []
    for img, _, warp in images:
      stem = f'{category.split("(")[0]}_{counter:04d}'
      counter += 1
      _save_image(out / category / f'{stem}.png', img)
      if warp is not None:
        warps[f'{category}/{stem}.png'] = _warp_entry(warp, f'{category}/{stems[0]}.png')
      stems.append(stem)
    for i, j in _pairs_of(rng, images, NUM_KPS)[:num_pairs - len(rows)]:
      paths = [f'PF-dataset/{category}/{stems[k]}.png' for k in (i, j)]
      rows.append(','.join(paths + _coords(images[i][1]) + _coords(images[j][1])))
  (out / 'test_pairs.csv').write_text('\n'.join([_willow_header(), *rows]) + '\n')
  (out / 'synthetic.json').write_text(json.dumps(warps))
  return str(out)

