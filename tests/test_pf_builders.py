"""PF-PASCAL and PF-WILLOW TFDS builders (no TensorFlow) on tiny datasets written in the distributed
layouts, their synthetic generators' exact ground truth, and the errors for wrong layouts."""
from __future__ import annotations

import csv
import json
import pathlib
import re
import shutil

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds

from input_pipeline.errors import CorruptImageError, DatasetLayoutError
from input_pipeline.correspondence.pfpascal import (PFPASCAL_CATEGORIES, pfpascal_sources, prepare_pfpascal,
                                                    validate_pfpascal_layout, visible_in_both)
from input_pipeline.correspondence.pfwillow import (PFWILLOW_CATEGORIES, image_name, pfwillow_sources,
                                                    prepare_pfwillow, validate_pfwillow_layout)
from input_pipeline.correspondence.synthetic_pf import (pascal_slots, write_synthetic_pfpascal,
                                                        write_synthetic_pfwillow)
from input_pipeline.correspondence.synthetic_spair import target_coords

PASCAL = {'trn': 10, 'val': 4, 'test': 4}
WILLOW = 8


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  tfds.disable_progress_bar()
  base = tmp_path_factory.mktemp('pf')
  pascal = pathlib.Path(write_synthetic_pfpascal(base / 'manual', PASCAL, seed=1))
  willow = pathlib.Path(write_synthetic_pfwillow(base / 'manual', WILLOW, seed=1))
  data_dir = base / 'tfds'
  return (pascal, pfpascal_sources(prepare_pfpascal(pascal, data_dir)),
          willow, pfwillow_sources(prepare_pfwillow(willow, data_dir)))


def _csv_rows(path):
  with open(path, newline='') as f:
    return list(csv.reader(f))


# ----------------------------------------------------------------------------- PF-PASCAL

def test_pascal_records_follow_the_official_loader(built):
  root, sources, _, _ = built
  assert set(sources) == {'images', 'trn', 'val', 'test'}
  assert len(sources['images']) == len(list((root / 'JPEGImages').glob('*.jpg')))
  for split, n in PASCAL.items():
    rows = _csv_rows(root / f'{split}_pairs.csv')
    assert rows[0][:3] == ['source_image', 'target_image', 'class'] and len(rows) == n + 1
    assert len(sources[split]) == n
    for i, row in enumerate(rows[1:]):
      rec = sources[split][i]
      category = PFPASCAL_CATEGORIES[int(row[2]) - 1]
      assert rec['category'] == int(row[2]) - 1
      src_name, trg_name = (pathlib.Path(p).name for p in row[:2])
      assert (rec['src_name'].decode(), rec['trg_name'].decode()) == (src_name, trg_name)
      assert sources['images'][rec['src_image']]['name'].decode() == src_name
      mats = [scipy.io.loadmat(root / 'Annotations' / category / f'{pathlib.Path(n).stem}.mat')
              for n in (src_name, trg_name)]
      keep = ~(np.isnan(mats[0]['kps']).any(1) | np.isnan(mats[1]['kps']).any(1))
      np.testing.assert_array_equal(rec['src_kps'], np.float32(mats[0]['kps'][keep]))
      np.testing.assert_array_equal(rec['trg_kps'], np.float32(mats[1]['kps'][keep]))
      np.testing.assert_array_equal(rec['trg_bbox'], np.float32(mats[1]['bbox'][0]))
      assert rec['flip'] == (int(row[3]) if split == 'trn' else 0)
  flips = [sources['trn'][i]['flip'] for i in range(PASCAL['trn'])]
  assert 0 < sum(flips) < len(flips)                 # both kinds of trn rows are exercised


def test_pascal_synthetic_ground_truth_is_exact(built):
  """Every warped copy's visible keypoints are its source's keypoints mapped through the stored warp."""
  root, _, _, _ = built
  warps = json.loads((root / 'synthetic.json').read_text())
  assert warps
  mats = {p.stem: (p.parent.name, scipy.io.loadmat(p)) for p in root.glob('Annotations/*/*.mat')}
  for stem, entry in warps.items():
    category, copy = mats[stem]
    source_category, source = mats[entry['source']]
    assert category == source_category and len(copy['kps']) == pascal_slots(category)
    vis = ~np.isnan(copy['kps']).any(1)
    assert not np.isnan(source['kps'][vis]).any()                 # visible here -> visible in source
    np.testing.assert_allclose(target_coords(entry['warp'], source['kps'][vis]), copy['kps'][vis],
                               atol=1e-6)
  hidden = [np.isnan(m['kps']).any(1).mean() for _, m in mats.values()]
  assert 0 < np.mean(hidden) < 0.5                                 # some invisible slots, as real data


def test_visible_in_both_drops_nan_rows_and_truncates_like_zip():
  src = np.float32([[1, 2], [np.nan, np.nan], [5, 6], [7, 8]])
  trg = np.float32([[10, 20], [30, 40], [np.nan, 1]])
  s, t = visible_in_both(src, trg)
  np.testing.assert_array_equal(s, [[1, 2]])
  np.testing.assert_array_equal(t, [[10, 20]])


def _pascal_copy(tmp_path) -> pathlib.Path:
  return pathlib.Path(write_synthetic_pfpascal(tmp_path, {'trn': 3, 'val': 2, 'test': 2}, seed=2))


def test_pascal_wrong_folder_names_the_expected_layout(tmp_path):
  (tmp_path / 'photos' / 'JPEGImages').mkdir(parents=True)
  with pytest.raises(DatasetLayoutError) as err:
    prepare_pfpascal(tmp_path / 'photos', tmp_path / 'tfds')
  msg = str(err.value)
  for part in ('Expected layout', 'Annotations/<class>/<stem>.mat', 'missing folder Annotations/',
               'missing file trn_pairs.csv', 'missing file test_pairs.csv'):
    assert part in msg
  assert 'missing folder JPEGImages/' not in msg


def test_pascal_parent_folder_stray_class_and_missing_annotation(tmp_path):
  root = _pascal_copy(tmp_path)
  assert validate_pfpascal_layout(root.parent) == root
  (root / 'Annotations' / 'giraffe').mkdir()
  with pytest.raises(DatasetLayoutError, match=r"not PASCAL VOC classes: \['giraffe'\]"):
    validate_pfpascal_layout(root)
  (root / 'Annotations' / 'giraffe').rmdir()
  victim = sorted(root.glob('Annotations/*/*.mat'))[0]
  victim.unlink()
  with pytest.raises(DatasetLayoutError, match=victim.name):
    prepare_pfpascal(root, tmp_path / 'tfds')


def test_pascal_bad_csv_rows_are_named(tmp_path):
  root = _pascal_copy(tmp_path)
  rows = (root / 'val_pairs.csv').read_text().splitlines()
  fields = rows[2].split(',')
  missing = ','.join(['PF-dataset-PASCAL/JPEGImages/2099_000001.jpg'] + fields[1:])
  (root / 'val_pairs.csv').write_text('\n'.join(rows[:2] + [missing]) + '\n')
  with pytest.raises(DatasetLayoutError, match='JPEGImages/2099_000001.jpg used by val_pairs.csv row 3'):
    prepare_pfpascal(root, tmp_path / 'tfds')
  (root / 'val_pairs.csv').write_text('\n'.join(rows[:2] + [','.join(fields[:2] + ['21'])]) + '\n')
  with pytest.raises(DatasetLayoutError, match='val_pairs.csv row 3: class id .21. is not in 1..20'):
    prepare_pfpascal(root, tmp_path / 'tfds2')
  trn = (root / 'trn_pairs.csv').read_text().splitlines()
  (root / 'trn_pairs.csv').write_text('\n'.join([trn[0], ','.join(trn[1].split(',')[:3])]) + '\n')
  with pytest.raises(DatasetLayoutError, match='trn_pairs.csv row 2 has 3 columns, expected at least 4'):
    prepare_pfpascal(root, tmp_path / 'tfds3')


def test_pascal_corrupt_image_names_the_file(tmp_path):
  root = _pascal_copy(tmp_path)
  bad = sorted(root.glob('JPEGImages/*.jpg'))[1]
  bad.write_bytes(bad.read_bytes()[:300])
  with pytest.raises(CorruptImageError, match=bad.name):
    prepare_pfpascal(root, tmp_path / 'tfds')


def test_sources_before_preparing_raise(tmp_path):
  with pytest.raises(DatasetLayoutError, match='prepare_pfpascal'):
    pfpascal_sources(tmp_path)
  with pytest.raises(DatasetLayoutError, match='prepare_pfwillow'):
    pfwillow_sources(tmp_path)


# ----------------------------------------------------------------------------- PF-WILLOW

def test_willow_records_follow_the_official_loader(built):
  _, _, root, sources = built
  assert set(sources) == {'images', 'test'} and len(sources['test']) == WILLOW
  rows = _csv_rows(root / 'test_pairs.csv')
  assert len(rows[0]) == 42 and rows[0][:3] == ['imageA', 'imageB', 'XA1']
  for i, row in enumerate(rows[1:]):
    rec = sources['test'][i]
    values = np.float32([float(v) for v in row[2:]])
    np.testing.assert_array_equal(rec['src_kps'], values[:20].reshape(2, 10).T)   # 10 x, then 10 y
    np.testing.assert_array_equal(rec['trg_kps'], values[20:].reshape(2, 10).T)
    category = row[0].split('/')[1]
    assert rec['category'] == PFWILLOW_CATEGORIES.index(category)
    assert rec['src_name'].decode() == '/'.join(row[0].split('/')[1:])
    image = sources['images'][rec['trg_image']]
    assert image['name'] == rec['trg_name']
    assert image['image'] == (root / rec['trg_name'].decode()).read_bytes()      # PNG kept as is
    kps = rec['trg_kps']
    np.testing.assert_array_equal(rec['trg_bbox'], np.r_[kps.min(0), kps.max(0)])  # no boxes in WILLOW


def test_willow_synthetic_ground_truth_is_exact(built):
  _, _, root, _ = built
  warps = json.loads((root / 'synthetic.json').read_text())
  points = {}
  for row in _csv_rows(root / 'test_pairs.csv')[1:]:
    values = np.array([float(v) for v in row[2:]])
    for path, xy in ((row[0], values[:20]), (row[1], values[20:])):
      points['/'.join(path.split('/')[1:])] = xy.reshape(2, 10).T
  checked = 0
  for name, entry in warps.items():
    if name in points and entry['source'] in points:
      np.testing.assert_allclose(target_coords(entry['warp'], points[entry['source']]), points[name],
                                 atol=1e-6)
      checked += 1
  assert checked >= 2


def test_willow_bad_layouts(tmp_path):
  root = pathlib.Path(write_synthetic_pfwillow(tmp_path, 3, seed=2))
  assert validate_pfwillow_layout(tmp_path) == root
  (tmp_path / 'empty').mkdir()
  with pytest.raises(DatasetLayoutError) as err:
    validate_pfwillow_layout(tmp_path / 'empty')
  assert 'missing file test_pairs.csv' in str(err.value) and 'car(G)' in str(err.value)
  rows = (root / 'test_pairs.csv').read_text().splitlines()
  (root / 'test_pairs.csv').write_text('\n'.join([rows[0], rows[1].rsplit(',', 1)[0]]) + '\n')
  with pytest.raises(DatasetLayoutError, match='row 2 has 41 columns, expected at least 42'):
    prepare_pfwillow(root, tmp_path / 'tfds')
  with pytest.raises(DatasetLayoutError, match="'x.png' is not <folder>/<category>/<file>"):
    image_name('x.png', 'row 2')
  shutil.rmtree(root)
  write_synthetic_pfwillow(tmp_path, 3, seed=2)
  used = _csv_rows(root / 'test_pairs.csv')[1][0]               # PF-dataset/<category>/<file>
  (root / '/'.join(used.split('/')[1:])).unlink()
  with pytest.raises(DatasetLayoutError, match=re.escape(f"image {'/'.join(used.split('/')[1:])} used by")):
    prepare_pfwillow(root, tmp_path / 'tfds2')
