"""Layout readers for CUHK03 (NP folders, NP from the original .mat, classic splits), VeRi-776 and
VehicleID, on tiny datasets written here in each real on-disk layout, plus broken layouts."""
from __future__ import annotations

import io
import itertools
import pathlib
import random
import warnings

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from input_pipeline.errors import DatasetLayoutError
from input_pipeline.reid import cuhk03, vehicleid, veri
from input_pipeline.reid.records import NO_VIEW


def _png(seed: int = 0) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (6, 4, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format='PNG')
  return buffer.getvalue()


def _touch_images(folder, names, data=b''):
  folder.mkdir(parents=True, exist_ok=True)
  for name in names:
    (folder / name).write_bytes(data or _png())


# ----------------------------------------------------------------------------- MATLAB v7.3 writer

class MatlabV73Writer:
  """Writes an HDF5 file the way MATLAB's `save -v7.3` lays it out.

  Arrays are stored transposed (MATLAB is column-major); cell arrays are datasets of object
  references into the '#refs#' group; an empty cell points at a 2-element uint64 dataset flagged
  MATLAB_empty; the 512-byte user block holds MATLAB's text header.
  """

  def __init__(self, path):
    self.path = path
    self.file = h5py.File(path, 'w', userblock_size=512)
    self.refs = self.file.create_group('#refs#')
    self.names = (f'r{i}' for i in itertools.count())
    empty = self.refs.create_dataset('a', data=np.zeros(2, np.uint64))
    empty.attrs['MATLAB_class'] = np.bytes_('double')
    empty.attrs['MATLAB_empty'] = np.uint8(1)
    self.empty = empty.ref

  def array(self, value: np.ndarray, matlab_class: str):
    node = self.refs.create_dataset(next(self.names), data=np.asarray(value).T)
    node.attrs['MATLAB_class'] = np.bytes_(matlab_class)
    return node.ref

  def cell(self, refs: np.ndarray, name: str | None = None):
    """refs: object array in MATLAB's (row-major) shape."""
    data = np.asarray(refs, dtype=object).T
    parent, key = (self.file, name) if name else (self.refs, next(self.names))
    node = parent.create_dataset(key, data=data, dtype=h5py.ref_dtype)
    node.attrs['MATLAB_class'] = np.bytes_('cell')
    return node.ref

  def close(self):
    self.file.close()
    header = b'MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .'
    with open(self.path, 'r+b') as f:
      f.write(header.ljust(116, b' ') + b'\0' * 8 + b'\x00\x02' + b'IM')


def _crop(pair: int, person: int, crop: int, variant: str) -> np.ndarray:
  """A deterministic, non-square H x W x 3 image per cell (H != W catches a missed transpose)."""
  seed = [pair, person, crop, cuhk03.VARIANTS.index(variant)]
  return np.random.default_rng(seed).integers(0, 256, (8 + crop, 5, 3), dtype=np.uint8)


# Persons per camera pair, and which crops (1..10) are present for each; 1-5 = camera 1.
TINY_CUHK03 = {
    1: {1: range(1, 11), 2: [1, 2, 6], 3: [1, 2, 3, 7, 8]},
    2: {1: [1, 6, 7], 2: [3, 4, 5]},   # pair 2 person 2: camera 1 only
}
TINY_TESTSETS = [[(1, 2), (2, 1)], [(1, 1), (1, 3)], [(2, 2), (1, 1)]]


def write_cuhk03_release(root, testsets=TINY_TESTSETS, variants=cuhk03.VARIANTS):
  """cuhk03_release/cuhk-03.mat with 'detected', 'labeled' and 'testsets' as MATLAB writes them."""
  path = root / 'cuhk03_release' / 'cuhk-03.mat'
  path.parent.mkdir(parents=True, exist_ok=True)
  mat = MatlabV73Writer(path)
  for variant in variants:
    pairs = []
    for pair, persons in TINY_CUHK03.items():
      table = np.empty((len(persons), 10), dtype=object)
      for person, crops in persons.items():
        for crop in range(1, 11):
          table[person - 1, crop - 1] = (mat.array(_crop(pair, person, crop, variant), 'uint8')
                                         if crop in crops else mat.empty)
      pairs.append(mat.cell(table))
    mat.cell(np.array(pairs, dtype=object).reshape(-1, 1), name=variant)   # a 5 x 1 cell
  sets = [mat.array(np.asarray(rows, np.float64), 'double') for rows in testsets]
  mat.cell(np.array(sets, dtype=object).reshape(-1, 1), name='testsets')
  mat.close()
  return path


def _cell_names(variant='detected'):
  """(file name, pid, camid) of every present crop, pids numbered over the pairs in order."""
  out, pid = [], 0
  for pair, persons in TINY_CUHK03.items():
    for person, crops in persons.items():
      pid += 1
      for crop in sorted(crops):
        out.append((cuhk03.image_file_name(pair, person, crop), pid, 1 if crop <= 5 else 2))
  return out


def write_new_protocol_config(root, variant, train, query, gallery):
  """cuhk03_new_protocol_config_<variant>.mat (MATLAB v5) over the crops, 1-based indices."""
  cells = _cell_names(variant)
  filelist = np.empty((len(cells), 1), dtype=object)
  filelist[:, 0] = [name for name, _, _ in cells]
  scipy.io.savemat(root / f'cuhk03_new_protocol_config_{variant}.mat', {
      'filelist': filelist,
      'labels': np.array([[pid] for _, pid, _ in cells], np.float64),
      'camId': np.array([[cam] for _, _, cam in cells], np.float64),
      'train_idx': np.array(train, np.float64).reshape(-1, 1) + 1,
      'query_idx': np.array(query, np.float64).reshape(-1, 1) + 1,
      'gallery_idx': np.array(gallery, np.float64).reshape(-1, 1) + 1})
  return cells


# ----------------------------------------------------------------------------- CUHK03 classic

def test_classic_split_from_v73_release(tmp_path):
  write_cuhk03_release(tmp_path / 'cuhk03')
  cache = tmp_path / 'cache'
  splits = cuhk03.read_cuhk03_classic(tmp_path, 'labeled', split_index=0, cache_dir=cache)
  cells = {name: (pid, cam) for name, pid, cam in _cell_names('labeled')}
  test_pids = {2, 4}                          # (1, 2) -> pid 2; (2, 1) -> pid 4
  assert {r.pid for r in splits['query']} == test_pids
  assert {r.pid for r in splits['train']} == {1, 3, 5}
  assert splits['gallery'] == splits['query']
  everything = splits['train'] + splits['query']
  assert len(everything) == len(cells) == sum(len(c) for p in TINY_CUHK03.values() for c in p.values())
  for record in everything:
    file_name = record.name.split('/')[-1]
    assert record.name == f'images_labeled/{file_name}'
    assert (record.pid, record.camid) == cells[file_name]
    assert record.viewid == NO_VIEW
    pair, person, _, crop = (int(x) for x in file_name[:-4].split('_'))
    with Image.open(record.path) as img:     # pixels survive the MATLAB transpose, H x W kept
      np.testing.assert_array_equal(np.asarray(img), _crop(pair, person, crop, 'labeled'))


def test_classic_extracts_once_and_resumes(tmp_path):
  write_cuhk03_release(tmp_path)
  splits = cuhk03.read_cuhk03_classic(tmp_path, 'detected', 2)   # default cache: dataset folder
  first = splits['train'][0].path
  assert first.startswith(str(tmp_path / 'images_detected'))
  stamp = (tmp_path / 'images_detected' / first.split('/')[-1]).stat().st_mtime_ns
  (tmp_path / 'images_detected' / splits['train'][1].path.split('/')[-1]).unlink()  # interrupted run
  again = cuhk03.read_cuhk03_classic(tmp_path, 'detected', 2)
  assert again == splits
  assert (tmp_path / 'images_detected' / first.split('/')[-1]).stat().st_mtime_ns == stamp
  assert all(pathlib.Path(r.path).is_file() for r in again['train'] + again['query'])
  assert not list((tmp_path / 'images_detected').glob('*.partial'))


def test_classic_splits_differ_and_both_merges(tmp_path):
  write_cuhk03_release(tmp_path)
  one = cuhk03.read_cuhk03_classic(tmp_path, 'detected', 1, cache_dir=tmp_path / 'c')
  assert {r.pid for r in one['query']} == {1, 3}
  both = cuhk03.read_cuhk03_classic(tmp_path, 'both', 1, cache_dir=tmp_path / 'c')
  assert len(both['query']) == 2 * len(one['query'])
  assert {r.name.split('/')[0] for r in both['query']} == {'images_detected', 'images_labeled'}
  assert len({r.name for r in both['train']}) == len(both['train'])   # names stay unique


def test_classic_bad_arguments_and_layouts(tmp_path):
  write_cuhk03_release(tmp_path / 'ok')
  with pytest.raises(ValueError, match='split_index must be in 0..2'):
    cuhk03.read_cuhk03_classic(tmp_path / 'ok', 'detected', 3, cache_dir=tmp_path / 'c')
  with pytest.raises(ValueError, match='variant must be one of'):
    cuhk03.read_cuhk03_classic(tmp_path / 'ok', 'hand', 0)
  write_cuhk03_release(tmp_path / 'ghost', testsets=[[(1, 1), (2, 7)]])
  with pytest.raises(DatasetLayoutError, match=r'missing from detected: \[\(2, 7\)\]') as err:
    cuhk03.read_cuhk03_classic(tmp_path / 'ghost', 'detected', 0, cache_dir=tmp_path / 'c')
  assert 'Expected layout' in str(err.value) and 'cuhk03_release/cuhk-03.mat' in str(err.value)
  (tmp_path / 'v5' / 'cuhk03_release').mkdir(parents=True)
  scipy.io.savemat(tmp_path / 'v5' / 'cuhk03_release' / 'cuhk-03.mat', {'detected': np.zeros(3)})
  with pytest.raises(DatasetLayoutError, match=r'not a MATLAB v7.3 \(HDF5\) file'):
    cuhk03.read_cuhk03_classic(tmp_path / 'v5', 'detected', 0, cache_dir=tmp_path / 'c')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(DatasetLayoutError, match='missing file cuhk03_release/cuhk-03.mat') as err:
    cuhk03.read_cuhk03_classic(tmp_path / 'empty')
  assert 'Expected layout' in str(err.value)
  write_cuhk03_release(tmp_path / 'half', variants=('labeled',))
  with pytest.raises(DatasetLayoutError, match="no 'detected' cell array"):
    cuhk03.read_cuhk03_classic(tmp_path / 'half', 'detected', cache_dir=tmp_path / 'c')


# ----------------------------------------------------------------------------- CUHK03-NP

def test_np_from_release_configs(tmp_path):
  write_cuhk03_release(tmp_path)
  cells = write_new_protocol_config(tmp_path, 'detected', train=[0, 1, 2, 3, 14, 15],
                                    query=[10, 4], gallery=[11, 12, 5, 6, 7])
  splits = cuhk03.read_cuhk03_np(tmp_path, 'detected', cache_dir=tmp_path / 'c')
  assert [r.name for r in splits['query']] == [f'images_detected/{cells[i][0]}' for i in (10, 4)]
  for split, idx in (('train', [0, 1, 2, 3, 14, 15]), ('gallery', [11, 12, 5, 6, 7])):
    assert [(r.pid, r.camid) for r in splits[split]] == [cells[i][1:] for i in idx]
  with Image.open(splits['query'][1].path) as img:
    name = cells[4][0]
    pair, person, _, crop = (int(x) for x in name[:-4].split('_'))
    np.testing.assert_array_equal(np.asarray(img), _crop(pair, person, crop, 'detected'))
  # the labeled config is absent: a clear error, naming both accepted layouts
  with pytest.raises(DatasetLayoutError, match='no cuhk03_new_protocol_config_labeled.mat') as err:
    cuhk03.read_cuhk03_np(tmp_path, 'labeled', cache_dir=tmp_path / 'c')
  assert 'bounding_box_train' in str(err.value) and 'Expected layout' in str(err.value)


def test_np_config_problems(tmp_path):
  write_cuhk03_release(tmp_path)
  write_new_protocol_config(tmp_path, 'labeled', train=[0], query=[1], gallery=[99])
  with pytest.raises(DatasetLayoutError, match='gallery_idx holds indices outside'):
    cuhk03.read_cuhk03_np(tmp_path, 'labeled', cache_dir=tmp_path / 'c')
  scipy.io.savemat(tmp_path / 'cuhk03_new_protocol_config_labeled.mat', {'train_idx': [[1]]})
  with pytest.raises(DatasetLayoutError, match=r"lacks fields \['query_idx'"):
    cuhk03.read_cuhk03_np(tmp_path, 'labeled', cache_dir=tmp_path / 'c')


def _write_np_folders(root, variant, extra=()):
  layout = {'bounding_box_train': ['0001_c1_1.png', '0001_c2_1.png', '0003_c1_2.png'],
            'query': ['0005_c1_1.png', '0005_c2_1.png'],
            'bounding_box_test': ['0005_c1_2.png', '0006_c2_3.png', *extra]}
  for folder, names in layout.items():
    _touch_images(root / variant / folder, names, data=_png())
  return layout


def test_np_distributed_folders(tmp_path):
  root = tmp_path / 'cuhk03-np'
  _write_np_folders(root, 'labeled')
  (root / 'labeled' / 'query' / 'Thumbs.db').write_bytes(b'x')       # ignored: not an image
  (root / 'labeled' / 'query' / '._0005_c1_1.png').write_bytes(b'x')  # ignored: macOS residue
  splits = cuhk03.read_cuhk03_np(tmp_path, 'labeled')                # parent folder accepted
  assert [(r.name, r.pid, r.camid) for r in splits['train']] == [
      ('labeled/bounding_box_train/0001_c1_1.png', 1, 1),
      ('labeled/bounding_box_train/0001_c2_1.png', 1, 2),
      ('labeled/bounding_box_train/0003_c1_2.png', 3, 1)]
  assert [r.pid for r in splits['query']] == [5, 5]
  assert [(r.pid, r.camid) for r in splits['gallery']] == [(5, 1), (6, 2)]
  assert splits['gallery'][0].path == str(root / 'labeled' / 'bounding_box_test' / '0005_c1_2.png')


def test_np_bad_folders(tmp_path):
  _write_np_folders(tmp_path, 'detected', extra=['person7.png'])
  with pytest.raises(DatasetLayoutError, match=r"1 names not in Market naming, e.g. \['person7.png'\]") as err:
    cuhk03.read_cuhk03_np(tmp_path, 'detected')
  assert 'Expected layout' in str(err.value) and 'cuhk03_release/cuhk-03.mat' in str(err.value)
  (tmp_path / 'detected' / 'bounding_box_test' / 'person7.png').unlink()
  for p in (tmp_path / 'detected' / 'query').iterdir():
    p.unlink()
  with pytest.raises(DatasetLayoutError, match=r'detected/query/ has no .png/.jpg images'):
    cuhk03.read_cuhk03_np(tmp_path, 'detected')
  with pytest.raises(DatasetLayoutError, match=r'no labeled/\{bounding_box_train'):
    cuhk03.read_cuhk03_np(tmp_path, 'labeled')
  with pytest.raises(DatasetLayoutError, match='the folder does not exist'):
    cuhk03.read_cuhk03_np(tmp_path / 'nowhere')


# ----------------------------------------------------------------------------- VeRi-776

VERI = {'image_train': ['0001_c001_00016450_0.jpg', '0001_c002_00016460_0.jpg',
                        '0002_c002_00030600_0.jpg', '0776_c020_00099999_1.jpg'],
        'image_query': ['0002_c003_00084280_0.jpg'],
        'image_test': ['0002_c004_00084290_0.jpg', '0003_c019_00001111_0.jpg']}
VIEWS = {'0001_c001_00016450_0.jpg': 3, '0001_c002_00016460_0.jpg': 0,
         '0002_c002_00030600_0.jpg': 7, '0776_c020_00099999_1.jpg': 5,
         '0002_c003_00084280_0.jpg': 1, '0002_c004_00084290_0.jpg': 2, '0003_c019_00001111_0.jpg': 6}


def _write_veri(root):
  for folder, names in VERI.items():
    _touch_images(root / folder, names, data=b'\xff\xd8jpeg')


def _write_keypoints(folder, skip=()):
  """keypoint_{train,test}.txt: path, 20 (x, y) key points, orientation last."""
  folder.mkdir(parents=True, exist_ok=True)
  for name, dirs in (('keypoint_train.txt', ['image_train']), ('keypoint_test.txt',
                                                              ['image_query', 'image_test'])):
    lines = [f'VeRi/{d}/{f} ' + ' '.join(['12'] * 40) + f' {VIEWS[f]}'
             for d in dirs for f in VERI[d] if f not in skip]
    (folder / name).write_text('\n'.join(lines) + '\n')


def test_veri_with_viewpoints(tmp_path):
  _write_veri(tmp_path / 'VeRi')
  _write_keypoints(tmp_path / 'VeRi')
  with open(tmp_path / 'VeRi' / 'keypoint_test.txt', 'a') as f:   # the train file wins, as in TransReID
    f.write('VeRi/image_train/0001_c001_00016450_0.jpg ' + ' '.join(['1'] * 40) + ' 4\n')
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    splits = veri.read_veri776(tmp_path)
  assert [(r.name, r.pid, r.camid, r.viewid) for r in splits['train']] == [
      ('image_train/0001_c001_00016450_0.jpg', 1, 1, 3),
      ('image_train/0001_c002_00016460_0.jpg', 1, 2, 0),
      ('image_train/0002_c002_00030600_0.jpg', 2, 2, 7),
      ('image_train/0776_c020_00099999_1.jpg', 776, 20, 5)]
  assert [(r.pid, r.camid, r.viewid) for r in splits['query']] == [(2, 3, 1)]
  assert [(r.pid, r.camid, r.viewid) for r in splits['gallery']] == [(2, 4, 2), (3, 19, 6)]


def test_veri_unannotated_images_left_out(tmp_path):
  _write_veri(tmp_path)
  _write_keypoints(tmp_path / 'kp', skip={'0003_c019_00001111_0.jpg', '0001_c001_00016450_0.jpg'})
  with pytest.warns(UserWarning) as caught:
    splits = veri.read_veri776(tmp_path, keypoint_dir=tmp_path / 'kp')
  assert sorted(str(w.message).split(' images')[0] for w in caught) == [
      'VeRi-776 gallery: 1 of 2', 'VeRi-776 train: 1 of 4']
  assert [r.pid for r in splits['gallery']] == [2]
  assert len(splits['train']) == 3


def test_veri_without_viewpoint_files(tmp_path):
  _write_veri(tmp_path)
  with pytest.warns(UserWarning, match='viewid is -1 for every image'):
    splits = veri.read_veri776(tmp_path)
  assert sum(len(v) for v in splits.values()) == sum(len(v) for v in VERI.values())
  assert {r.viewid for v in splits.values() for r in v} == {NO_VIEW}


def test_veri_bad_layouts(tmp_path):
  _write_veri(tmp_path)
  _write_keypoints(tmp_path)
  (tmp_path / 'keypoint_test.txt').unlink()
  with pytest.raises(DatasetLayoutError, match=r"only one viewpoint file; missing \['keypoint_test.txt'\]"):
    veri.read_veri776(tmp_path)
  (tmp_path / 'keypoint_test.txt').write_text('VeRi/image_test/x.jpg 1 2 left\n')
  with pytest.raises(DatasetLayoutError, match=r'keypoint_test.txt:1: expected the image path'):
    veri.read_veri776(tmp_path)
  with pytest.raises(DatasetLayoutError, match='neither of'):
    veri.read_veri776(tmp_path, keypoint_dir=tmp_path / 'image_train')
  (tmp_path / 'image_query' / 'car.jpg').write_bytes(b'x')
  with pytest.raises(DatasetLayoutError, match=r"image_query/ has 1 names not like .*\['car.jpg'\]") as err:
    veri.read_veri776(tmp_path)
  assert 'Expected layout' in str(err.value) and 'image_train/<vehicle>_c<camera>' in str(err.value)
  (tmp_path / 'other' / 'image_train').mkdir(parents=True)
  with pytest.raises(DatasetLayoutError, match=r'missing folder image_query/') as err:
    veri.read_veri776(tmp_path / 'other')
  assert 'missing folder image_test/' in str(err.value)


# ----------------------------------------------------------------------------- VehicleID

def _write_vehicleid(root, test_size=800):
  """Vehicles 10..13 for training, 20..24 for testing (3, 1, 4, 2, 5 images)."""
  train = [(f'{i:07d}', 10 + i % 4) for i in range(1, 9)]
  counts = {20: 3, 21: 1, 22: 4, 23: 2, 24: 5}
  stems = (f'{i:07d}' for i in itertools.count(100))
  test = [(next(stems), vid) for vid, n in counts.items() for _ in range(n)]
  random.Random(3).shuffle(test)                 # lists interleave vehicles
  split_dir = root / 'train_test_split'
  split_dir.mkdir(parents=True)
  (split_dir / 'train_list.txt').write_text(''.join(f'{s} {v}\n' for s, v in train))
  (split_dir / f'test_list_{test_size}.txt').write_text(''.join(f'{s} {v}\n' for s, v in test))
  _touch_images(root / 'image', [f'{s}.jpg' for s, _ in train + test], data=b'\xff\xd8jpeg')
  return train, test


def _official_draw(test, seed):
  """TransReID's rule, restated: per vehicle (first-appearance order) random.choice -> gallery."""
  state = random.getstate()
  random.seed(seed)
  by_vehicle = {}
  for stem, vid in test:
    by_vehicle.setdefault(vid, []).append((stem, vid))
  query, gallery = [], []
  for images in by_vehicle.values():
    images = list(images)
    sample = random.choice(images)
    images.remove(sample)
    query.extend(images)
    gallery.append(sample)
  random.setstate(state)
  return query, gallery


def test_vehicleid_splits_follow_transreid(tmp_path):
  train, test = _write_vehicleid(tmp_path / 'VehicleID_V1.0')
  galleries = set()
  for seed in range(10):
    splits = vehicleid.read_vehicleid(tmp_path, test_size=800, seed=seed)
    query, gallery = _official_draw(test, seed)
    assert [(r.name[6:-4], r.pid) for r in splits['query']] == query
    assert [(r.name[6:-4], r.pid) for r in splits['gallery']] == gallery
    galleries.add(tuple(r.name for r in splits['gallery']))
  assert len(galleries) > 1                             # the seed matters
  assert [r.pid for r in splits['gallery']] == [v for v in dict.fromkeys(v for _, v in test)]
  assert [(r.name, r.pid) for r in splits['train']] == [(f'image/{s}.jpg', v) for s, v in train]
  assert [(r.name, r.pid) for r in splits['test']] == [(f'image/{s}.jpg', v) for s, v in test]
  assert {r.camid for r in splits['train'] + splits['query']} == {0}
  assert {r.camid for r in splits['gallery']} == {1}
  assert {r.viewid for v in splits.values() for r in v} == {NO_VIEW}
  assert splits['train'][0].path == str(tmp_path / 'VehicleID_V1.0' / 'image' / f'{train[0][0]}.jpg')


def test_vehicleid_bad_layouts(tmp_path):
  with pytest.raises(ValueError, match='test_size must be one of'):
    vehicleid.read_vehicleid(tmp_path, test_size=900)
  _write_vehicleid(tmp_path, test_size=1600)
  with pytest.raises(DatasetLayoutError, match='missing file train_test_split/test_list_800.txt') as err:
    vehicleid.read_vehicleid(tmp_path)
  assert 'Expected layout' in str(err.value) and 'image/<stem>.jpg' in str(err.value)
  vehicleid.read_vehicleid(tmp_path, test_size=1600)    # the list that exists reads fine
  stem = (tmp_path / 'train_test_split' / 'train_list.txt').read_text().split()[0]
  (tmp_path / 'image' / f'{stem}.jpg').unlink()
  with pytest.raises(DatasetLayoutError, match=rf"train_list.txt names 1 images missing from image/, e.g. \['{stem}.jpg'\]"):
    vehicleid.read_vehicleid(tmp_path, test_size=1600)
  (tmp_path / 'train_test_split' / 'train_list.txt').write_text('0000001 12\n0000002\n')
  with pytest.raises(DatasetLayoutError, match=r'train_list.txt:2: expected "<image stem> <vehicle id>"'):
    vehicleid.read_vehicleid(tmp_path, test_size=1600)
