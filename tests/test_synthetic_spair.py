"""The synthetic SPair-71k: real layout, exact ground truth through the stored warp, determinism."""
from __future__ import annotations

import collections
import json
import pathlib

import numpy as np
import pytest

from input_pipeline.images import decode_image
from input_pipeline.correspondence.spair import parse_pair_line
from input_pipeline.correspondence.synthetic_spair import (source_coords, target_coords,
                                                           write_synthetic_spair)

NUM = {'trn': 14, 'val': 5, 'test': 5}


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  return pathlib.Path(write_synthetic_spair(tmp_path_factory.mktemp('syn'), NUM, seed=3))


def _pairs(root):
  for split in NUM:
    for line in (root / 'Layout' / 'large' / f'{split}.txt').read_text().splitlines():
      yield split, line, json.loads((root / 'PairAnnotation' / split / f'{line}.json').read_text())


def test_layout_matches_the_distributed_one(root):
  assert root.name == 'SPair-71k'
  for split, n in NUM.items():
    text = (root / 'Layout' / 'large' / f'{split}.txt').read_text()
    assert text.endswith('\n') and len(text.splitlines()) == n
  fields = {'src_kps', 'trg_kps', 'src_bndbox', 'trg_bndbox', 'category', 'viewpoint_variation',
            'scale_variation', 'truncation', 'occlusion', 'src_imname', 'trg_imname', 'pair_id',
            'src_imsize', 'trg_imsize'}
  for split, line, ann in _pairs(root):
    _, src, trg, category = parse_pair_line(line)
    assert fields <= set(ann) and ann['category'] == category
    for stem in (src, trg):
      assert (root / 'JPEGImages' / category / f'{stem}.jpg').is_file()
      mask = np.asarray(decode_image(root / 'Segmentation' / category / f'{stem}.png'))
      assert mask.any()                                    # the object is in the VOC-index mask


def test_source_images_are_shared_between_pairs(root):
  uses = collections.Counter(ann['src_imname'] for _, _, ann in _pairs(root))
  targets = {ann['trg_imname'] for _, _, ann in _pairs(root)}
  assert len(targets) == sum(NUM.values())                 # every pair has its own target
  assert max(uses.values()) <= 4 and np.mean(list(uses.values())) >= 2


def test_keypoints_inside_images_and_boxes(root):
  for _, _, ann in _pairs(root):
    for side in ('src', 'trg'):
      kps = np.asarray(ann[f'{side}_kps'], float)
      w, h = ann[f'{side}_imsize'][:2]
      x1, y1, x2, y2 = ann[f'{side}_bndbox']
      assert 3 <= len(kps) <= 20
      assert np.all((kps >= 0) & (kps <= [w - 1, h - 1]))
      assert np.all((kps >= [x1, y1]) & (kps <= [x2, y2]))


def test_ground_truth_is_exact_through_the_stored_warp(root):
  worst = 0.0
  for _, _, ann in _pairs(root):
    warp = ann['synthetic']
    src, trg = np.asarray(ann['src_kps'], float), np.asarray(ann['trg_kps'], float)
    worst = max(worst, np.abs(source_coords(warp, trg) - src).max())
    np.testing.assert_allclose(target_coords(warp, src), trg, atol=1e-6)
  # The TPS inverse is solved to 1e-10 px; JSON keeps doubles. Anything above 1e-6 px is a bug.
  assert worst < 1e-6


def _bilinear(img, pts):
  x, y = pts[:, 0], pts[:, 1]
  x0 = np.clip(np.floor(x).astype(int), 0, img.shape[1] - 2)
  y0 = np.clip(np.floor(y).astype(int), 0, img.shape[0] - 2)
  fx, fy = (x - x0)[:, None], (y - y0)[:, None]
  img = img.astype(float)
  return ((img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx) * (1 - fy)
          + (img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx) * fy)


def test_pixel_colours_agree_at_corresponding_keypoints(root):
  """Target colour = gain * source colour + bias at matching keypoints, up to JPEG/resampling noise."""
  matched, shuffled = [], []
  rng = np.random.default_rng(0)
  for _, line, ann in _pairs(root):
    _, src_stem, trg_stem, category = parse_pair_line(line)
    src_img = decode_image(root / 'JPEGImages' / category / f'{src_stem}.jpg')
    trg_img = decode_image(root / 'JPEGImages' / category / f'{trg_stem}.jpg')
    src = _bilinear(src_img, np.asarray(ann['src_kps'], float))
    expected = np.clip(src * ann['synthetic']['gain'] + ann['synthetic']['bias'], 0, 255)
    trg_kps = np.asarray(ann['trg_kps'], float)
    matched.append(np.abs(_bilinear(trg_img, trg_kps) - expected).ravel())
    others = rng.uniform([0, 0], np.array(ann['trg_imsize'][:2]) - 1, size=trg_kps.shape)
    shuffled.append(np.abs(_bilinear(trg_img, others) - expected).ravel())
  matched, shuffled = np.concatenate(matched), np.concatenate(shuffled)
  assert np.median(matched) < 4 and np.median(shuffled) > 15, (np.median(matched),
                                                               np.median(shuffled))


def _tree_bytes(path: pathlib.Path) -> dict:
  return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob('*')) if p.is_file()}


def test_deterministic_per_seed(tmp_path):
  small = {'trn': 3, 'val': 2, 'test': 2}
  a = _tree_bytes(pathlib.Path(write_synthetic_spair(tmp_path / 'a', small, seed=7)))
  b = _tree_bytes(pathlib.Path(write_synthetic_spair(tmp_path / 'b', small, seed=7)))
  c = _tree_bytes(pathlib.Path(write_synthetic_spair(tmp_path / 'c', small, seed=8)))
  assert a == b
  assert a != c
