"""The SPair-71k TFDS builder (no TensorFlow) on a tiny dataset written in the distributed layout."""
from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline.errors import CorruptImageError, DatasetLayoutError
from input_pipeline.images import decode_image
from input_pipeline.correspondence.spair import (SPAIR_CATEGORIES, parse_pair_line, prepare_spair,
                                                 read_layout, spair_sources, validate_spair_layout)
from input_pipeline.correspondence.synthetic_spair import write_synthetic_spair

NUM = {'trn': 6, 'val': 3, 'test': 3}
CATEGORIES = ('bicycle', 'dog', 'tvmonitor')


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  tfds.disable_progress_bar()
  base = tmp_path_factory.mktemp('spair')
  root = pathlib.Path(write_synthetic_spair(base / 'manual', NUM, seed=1, categories=CATEGORIES))
  data_dir = prepare_spair(root, base / 'tfds')
  return root, data_dir, spair_sources(data_dir)


def _small_copy(tmp_path) -> pathlib.Path:
  return pathlib.Path(write_synthetic_spair(tmp_path, {'trn': 2, 'val': 2, 'test': 2}, seed=2))


def test_splits_and_counts(built):
  root, _, sources = built
  assert set(sources) == {'images', 'trn', 'val', 'test'}
  for split, n in NUM.items():
    assert len(sources[split]) == n
  assert len(sources['images']) == len(list(root.glob('JPEGImages/*/*.jpg')))


def test_pairs_round_trip(built):
  root, _, sources = built
  for split in NUM:
    lines = read_layout(root / 'Layout' / 'large' / f'{split}.txt')
    for row, line in enumerate(lines):          # record order = layout order
      rec = sources[split][row]
      ann = json.loads((root / 'PairAnnotation' / split / f'{line}.json').read_text())
      pair_id, src_stem, trg_stem, category = parse_pair_line(line)
      assert rec['name'].decode() == line and rec['pair_id'] == int(pair_id)
      assert rec['category'] == SPAIR_CATEGORIES.index(category)   # index in the 18-name list
      for side in ('src', 'trg'):
        np.testing.assert_array_equal(rec[f'{side}_kps'],
                                      np.asarray(ann[f'{side}_kps'], np.float32))
        assert rec[f'{side}_kps'].shape == (len(ann['src_kps']), 2)
        np.testing.assert_array_equal(rec[f'{side}_bbox'], np.float32(ann[f'{side}_bndbox']))
      assert rec['src_name'].decode() == f'{category}/{src_stem}.jpg'
      assert rec['trg_name'].decode() == f'{category}/{trg_stem}.jpg'
      assert (rec['vpvar'], rec['scvar'], rec['trncn'], rec['occln']) == (
          ann['viewpoint_variation'], ann['scale_variation'], ann['truncation'], ann['occlusion'])


def test_images_stored_once_as_original_bytes(built):
  root, _, sources = built
  images = sources['images']
  names = [images[i]['name'].decode() for i in range(len(images))]
  assert len(set(names)) == len(names)
  for i in (0, len(images) - 1):
    rec = images[i]
    path = root / 'JPEGImages' / names[i]
    assert rec['image'] == path.read_bytes()                       # SkipDecoding: raw JPEG
    h, w = decode_image(path).shape[:2]
    assert (rec['width'], rec['height']) == (w, h)
    assert rec['category'] == SPAIR_CATEGORIES.index(names[i].split('/')[0])
  pair = sources['val'][0]                                         # pairs reference rows by number
  assert images[pair['src_image']]['name'] == pair['src_name']
  assert images[pair['trg_image']]['name'] == pair['trg_name']


def test_prepared_copy_is_reused(built, tmp_path):
  _, data_dir, _ = built
  files = sorted(pathlib.Path(data_dir).rglob('*.array_record*'))
  stamps = [f.stat().st_mtime_ns for f in files]
  assert prepare_spair(tmp_path / 'does-not-exist', data_dir) == data_dir
  assert [f.stat().st_mtime_ns for f in files] == stamps


def test_layout_with_and_without_trailing_newline(tmp_path):
  a, b = tmp_path / 'a.txt', tmp_path / 'b.txt'
  a.write_text('000001-x_1-x_2:cat\n000002-x_1-x_3:cat\n')
  b.write_text('000001-x_1-x_2:cat\n000002-x_1-x_3:cat')
  assert read_layout(a) == read_layout(b) == ['000001-x_1-x_2:cat', '000002-x_1-x_3:cat']
  assert parse_pair_line('000002-2008_000008-2009_001234:pottedplant') == (
      '000002', '2008_000008', '2009_001234', 'pottedplant')
  with pytest.raises(ValueError, match='malformed'):
    parse_pair_line('000002-2008_000008:cat')


def test_parent_folder_is_accepted(tmp_path):
  root = _small_copy(tmp_path)
  assert validate_spair_layout(root.parent) == root
  assert validate_spair_layout(root) == root


def test_wrong_folder_names_the_expected_layout(tmp_path):
  (tmp_path / 'photos').mkdir()
  with pytest.raises(DatasetLayoutError) as err:
    prepare_spair(tmp_path / 'photos', tmp_path / 'tfds')
  msg = str(err.value)
  for part in ('Expected layout', 'JPEGImages/<category>/<stem>.jpg', 'Layout/large',
               'PairAnnotation', 'missing folder JPEGImages/', 'missing file Layout/large/trn.txt'):
    assert part in msg


def test_missing_split_list_and_stray_folder_are_named(tmp_path):
  root = _small_copy(tmp_path)
  (root / 'Layout' / 'large' / 'val.txt').unlink()
  (root / 'JPEGImages' / 'sofa').mkdir()
  with pytest.raises(DatasetLayoutError) as err:
    validate_spair_layout(root)
  assert 'missing file Layout/large/val.txt' in str(err.value)
  assert "not SPair categories: ['sofa']" in str(err.value)
  assert 'trn.txt' not in str(err.value)


def test_missing_annotation_names_the_file(tmp_path):
  root = _small_copy(tmp_path)
  line = read_layout(root / 'Layout' / 'large' / 'test.txt')[1]
  (root / 'PairAnnotation' / 'test' / f'{line}.json').unlink()
  with pytest.raises(DatasetLayoutError, match=f'{line}.json'):
    prepare_spair(root, tmp_path / 'tfds')


def test_corrupt_jpeg_names_the_file(tmp_path):
  root = _small_copy(tmp_path)
  bad = sorted(root.glob('JPEGImages/*/*.jpg'))[3]
  data = bad.read_bytes()
  bad.write_bytes(data[:len(data) // 2])                          # truncated download
  with pytest.raises(CorruptImageError, match=str(bad)):
    prepare_spair(root, tmp_path / 'tfds')
  bad.write_bytes(data)                                           # fixed: the build now succeeds
  shutil.rmtree(tmp_path / 'tfds', ignore_errors=True)
  sources = spair_sources(prepare_spair(root, tmp_path / 'tfds'))
  assert len(sources['trn']) == 2


def test_sources_before_preparing_raise(tmp_path):
  with pytest.raises(DatasetLayoutError, match='prepare_spair'):
    spair_sources(tmp_path)
