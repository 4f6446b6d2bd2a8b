"""Re-ID layout readers and the shared TFDS builder on tiny datasets written here in their real layouts.

Each test writes the few files it needs exactly as the owners distribute them (folder names, file
naming, list files), then checks what the reader or the prepared TFDS copy gives back, and that bad
layouts fail with a message naming the expected layout and the concrete problem.
"""
from __future__ import annotations

import inspect
import pathlib
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from input_pipeline.errors import CorruptImageError, DatasetLayoutError
from input_pipeline.reid.builder import READERS, config_name, get_reader, resolve_options
from input_pipeline.reid.market1501 import read_dukemtmc, read_market1501, read_occluded_duke
from input_pipeline.reid.msmt17 import read_msmt17
from input_pipeline.reid.own_folder import read_own_folder
from input_pipeline.reid.randperson import read_randperson
from input_pipeline.reid.records import NO_VIEW
from input_pipeline.reid.splits import merge_reid_splits, prepare_reid, reid_split


def _jpeg(path: pathlib.Path, colour=(90, 120, 200), size=(8, 16)) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new('RGB', size, colour).save(path, format='PNG' if path.suffix == '.png' else 'JPEG')
  return path


def _write(root: pathlib.Path, names: list[str]) -> pathlib.Path:
  for i, name in enumerate(names):
    _jpeg(root / name, colour=(10 * i % 255, 40, 200 - 5 * i % 200))
  return root


MARKET_FILES = [
    'bounding_box_train/0002_c1s1_000451_03.jpg', 'bounding_box_train/0002_c3s1_000551_01.jpg',
    'bounding_box_train/0007_c2s3_070952_01.jpg',
    'bounding_box_test/0001_c2s1_000301_01.jpg', 'bounding_box_test/0001_c5s1_001426_02.jpg',
    'bounding_box_test/0000_c1s1_000151_01.jpg', 'bounding_box_test/-1_c1s1_000401_03.jpg',
    'bounding_box_test/-1_c6s2_052000_00.jpg',
    'query/0001_c1s1_001051_00.jpg',
]


def _market(tmp_path) -> pathlib.Path:
  root = _write(tmp_path / 'Market-1501-v15.09.15', MARKET_FILES)
  (root / 'bounding_box_test' / 'Thumbs.db').write_bytes(b'not an image')
  (root / 'gt_bbox').mkdir()
  return root


def _names(records) -> list[str]:
  return [r.name for r in records]


def _fields(records) -> list[tuple]:
  return [(r.pid, r.camid, r.viewid) for r in records]


# ----------------------------------------------------------------------------- Market-style

def test_market_reads_splits_drops_junk_keeps_distractors(tmp_path):
  root = _market(tmp_path)
  splits = read_market1501(tmp_path)                      # the parent folder is accepted too
  assert set(splits) == {'train', 'query', 'gallery'}
  assert _names(splits['train']) == sorted(n for n in MARKET_FILES if 'train/' in n)
  assert _fields(splits['train']) == [(2, 1, NO_VIEW), (2, 3, NO_VIEW), (7, 2, NO_VIEW)]
  gallery = splits['gallery']
  assert sorted(r.pid for r in gallery) == [0, 1, 1]        # junk -1 dropped, distractor 0 kept
  assert {r.camid for r in gallery} == {1, 2, 5}
  assert all(pathlib.Path(r.path) == root / r.name for s in splits.values() for r in s)
  assert _fields(splits['query']) == [(1, 1, NO_VIEW)]


def test_market_optional_500k_distractors(tmp_path):
  root = _market(tmp_path)
  _write(root / 'images', ['0000_c3s2_000001_00.jpg', 'x_99.jpg'])
  assert 'distractors_500k' not in read_market1501(root)
  extra = read_market1501(root, distractors_500k=True)['distractors_500k']
  assert _names(extra) == ['images/0000_c3s2_000001_00.jpg', 'images/x_99.jpg']
  assert _fields(extra) == [(0, 3, NO_VIEW), (0, -1, NO_VIEW)]   # every one is a distractor
  with pytest.raises(DatasetLayoutError, match="distractors_500k=True but none of"):
    read_market1501(_market(tmp_path / 'other'), distractors_500k=True)


def test_market_bad_layouts_name_expected_layout_and_problem(tmp_path):
  root = _market(tmp_path)
  (root / 'query' / '0001_c1s1_001051_00.jpg').unlink()
  (root / 'query').rmdir()
  with pytest.raises(DatasetLayoutError) as err:
    read_market1501(root)
  message = str(err.value)
  assert 'Expected layout:' in message and 'bounding_box_train/<pid>_c<cam>s<seq>' in message
  assert 'missing folder query/' in message
  _write(root, ['query/0001_c1s1_001051_00.jpg', 'query/0001-c1-bad.jpg'])
  with pytest.raises(DatasetLayoutError, match=r"query/ has 1 file\(s\) not named like "
                                               r"0002_c1s1_000451_03.jpg: \['0001-c1-bad.jpg'\]"):
    read_market1501(root)
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(DatasetLayoutError, match='missing folder bounding_box_train/'):
    read_market1501(empty)


def test_duke_and_occluded_duke_share_the_naming(tmp_path):
  files = ['bounding_box_train/0005_c2_f0046985.jpg', 'bounding_box_train/0005_c5_f0051781.jpg',
           'bounding_box_test/0001_c2_f0046182.jpg', 'bounding_box_test/4430_c8_f0171443.jpg',
           'query/0001_c1_f0057706.jpg']
  duke = _write(tmp_path / 'DukeMTMC-reID', files)
  occluded = _write(tmp_path / 'occ' / 'Occluded_Duke', files)
  for reader, root in ((read_dukemtmc, duke), (read_occluded_duke, occluded.parent)):
    splits = reader(root)
    assert _fields(splits['train']) == [(5, 2, NO_VIEW), (5, 5, NO_VIEW)]
    assert _fields(splits['gallery']) == [(1, 2, NO_VIEW), (4430, 8, NO_VIEW)]
    assert _fields(splits['query']) == [(1, 1, NO_VIEW)]
  with pytest.raises(DatasetLayoutError, match='not named like 0002_c1s1_000451_03.jpg'):
    read_market1501(duke)                                  # a Duke folder is not Market
  with pytest.raises(DatasetLayoutError, match='(?s)Occluded_Duke/.*missing folder query/'):
    read_occluded_duke(tmp_path / 'nothing_here')
  with pytest.raises(DatasetLayoutError, match='(?s)DukeMTMC-reID/.*not named like '
                                               '0005_c2_f0046985.jpg'):
    read_dukemtmc(_market(tmp_path / 'm'))


# ----------------------------------------------------------------------------- MSMT17

MSMT_LISTS = {
    'train': ['0000/0000_000_01_0303morning_0015_0.jpg 0', '0000/0000_001_05_0303noon_0030_1.jpg 0',
              '0001/0001_000_15_0303afternoon_0100_0.jpg 1'],
    'val': ['0002/0002_000_03_0303morning_0200_2.jpg 2'],
    'query': ['0000/0000_000_02_0113morning_0010_0.jpg 0'],
    'gallery': ['0000/0000_001_07_0113noon_0401_0.jpg 0', '0001/0001_000_02_0113noon_0500_1.jpg 1'],
}


def _msmt(root: pathlib.Path, version: str = 'V1') -> pathlib.Path:
  folders = {'V1': ('train', 'test'), 'V2': ('mask_train_v2', 'mask_test_v2')}[version]
  for name, lines in MSMT_LISTS.items():
    folder = folders[0] if name in ('train', 'val') else folders[1]
    _write(root / folder, [ln.split()[0] for ln in lines])
    (root / f'list_{name}.txt').write_text(''.join(f'{ln}\n' for ln in lines))
  return root


def test_msmt17_v1_train_is_train_plus_val_with_cameras_as_named(tmp_path):
  root = _msmt(tmp_path / 'MSMT17_V1')
  splits = read_msmt17(tmp_path)
  assert set(splits) == {'train', 'query', 'gallery'}
  assert _fields(splits['train']) == [(0, 1, NO_VIEW), (0, 5, NO_VIEW), (1, 15, NO_VIEW),
                                      (2, 3, NO_VIEW)]
  assert splits['train'][3].name == 'train/0002/0002_000_03_0303morning_0200_2.jpg'
  assert _fields(splits['gallery']) == [(0, 7, NO_VIEW), (1, 2, NO_VIEW)]
  assert pathlib.Path(splits['query'][0].path) == root / 'test/0000/0000_000_02_0113morning_0010_0.jpg'


def test_msmt17_v2_and_msmt17all(tmp_path):
  root = _msmt(tmp_path / 'MSMT17_V2', 'V2')
  splits = read_msmt17(root, version='V2', msmt17all=True)
  assert list(splits) == ['train']
  train = splits['train']
  assert len(train) == sum(len(v) for v in MSMT_LISTS.values())
  # test pids restart at 0 in the lists: shifted past the largest training pid (2)
  assert [r.pid for r in train] == [0, 0, 1, 2, 3, 3, 4]
  assert train[-1].name == 'mask_test_v2/0001/0001_000_02_0113noon_0500_1.jpg'
  with pytest.raises(DatasetLayoutError, match="pass version='V2'"):
    read_msmt17(root, version='V1')
  with pytest.raises(ValueError, match="version must be one of"):
    read_msmt17(root, version='V3')


def test_msmt17_bad_lists_are_named(tmp_path):
  root = _msmt(tmp_path / 'MSMT17_V1')
  (root / 'test/0000/0000_001_07_0113noon_0401_0.jpg').unlink()
  with open(root / 'list_query.txt', 'a') as f:
    f.write('0003/badname.jpg 3\n')
  with pytest.raises(DatasetLayoutError) as err:
    read_msmt17(root)
  message = str(err.value)
  assert 'list_gallery.txt lists 1 image(s) that do not exist' in message
  assert "0000_001_07_0113noon_0401_0.jpg" in message
  assert "list_query.txt: 1 line(s)" in message and '0003/badname.jpg' in message
  (root / 'list_val.txt').unlink()
  with pytest.raises(DatasetLayoutError, match='(?s)list_train.txt, list_val.txt.*missing file '
                                               'list_val.txt'):
    read_msmt17(root)


# ----------------------------------------------------------------------------- RandPerson

def test_randperson_nested_folder_global_cameras(tmp_path):
  inner = tmp_path / 'randperson_subset' / 'randperson_subset'
  _write(inner, ['000000_s00_c01_f000264.jpg', '000000_s10_c03_f001032.jpg',
                 '000007_c01_s06_f001632.jpg'])            # README order (c before s) also parses
  splits = read_randperson(tmp_path)
  assert list(splits) == ['train']
  assert _fields(splits['train']) == [(0, 1, NO_VIEW), (0, 18, NO_VIEW), (7, 11, NO_VIEW)]
  assert splits['train'][0].name == 'randperson_subset/randperson_subset/000000_s00_c01_f000264.jpg'
  assert read_randperson(inner)['train'][0].name == '000000_s00_c01_f000264.jpg'
  _write(inner, ['000001_s04_c01_f000001.jpg', 'IMG_0001.jpg'])   # scene 4 has one camera only
  with pytest.raises(DatasetLayoutError) as err:
    read_randperson(tmp_path)
  assert "2 file(s) not named" in str(err.value)
  assert "'000001_s04_c01_f000001.jpg', 'IMG_0001.jpg'" in str(err.value)
  assert 'randperson_subset/' in str(err.value)


# ----------------------------------------------------------------------------- own folder

def test_own_folder_reads_train_query_gallery(tmp_path):
  _write(tmp_path, ['train/0001_c1_000123.jpg', 'train/0001_c2_frame9.jpg', 'train/0002_c1_a.png',
                    'query/0101_c1_x.jpeg', 'gallery/0101_c2_y.jpg', 'gallery/0102_c3_z.jpg'])
  splits = read_own_folder(tmp_path)
  assert _fields(splits['train']) == [(1, 1, NO_VIEW), (1, 2, NO_VIEW), (2, 1, NO_VIEW)]
  assert _names(splits['gallery']) == ['gallery/0101_c2_y.jpg', 'gallery/0102_c3_z.jpg']
  assert _fields(splits['query']) == [(101, 1, NO_VIEW)]
  only_train = tmp_path / 'only_train'
  _write(only_train, ['train/0001_c1_1.jpg'])
  assert list(read_own_folder(only_train)) == ['train']


def test_own_folder_errors_name_the_files(tmp_path):
  _write(tmp_path, ['train/0001_c1_1.jpg', 'train/person1.jpg', 'train/0002_cam1_x.jpg'])
  with pytest.raises(DatasetLayoutError) as err:
    read_own_folder(tmp_path)
  assert "['train/0002_cam1_x.jpg', 'train/person1.jpg']" in str(err.value)
  assert '<your folder>/' in str(err.value)
  lonely = tmp_path / 'lonely'
  _write(lonely, ['query/0001_c1_1.jpg'])
  with pytest.raises(DatasetLayoutError, match='come together: only query/ exists'):
    read_own_folder(lonely)
  with pytest.raises(DatasetLayoutError, match='none of train/, query/, gallery/ exists'):
    read_own_folder(_write(tmp_path / 'flat', ['0001_c1_1.jpg']))


# ----------------------------------------------------------------------------- registry and options

# Every reader the project ships: dataset -> (module, function). A missing one fails the test below.
EXPECTED_READERS = {
    'market1501': ('input_pipeline.reid.market1501', 'read_market1501'),
    'dukemtmc_reid': ('input_pipeline.reid.market1501', 'read_dukemtmc'),
    'occluded_duke': ('input_pipeline.reid.market1501', 'read_occluded_duke'),
    'msmt17': ('input_pipeline.reid.msmt17', 'read_msmt17'),
    'randperson': ('input_pipeline.reid.randperson', 'read_randperson'),
    'own_folder': ('input_pipeline.reid.own_folder', 'read_own_folder'),
    'cuhk03_np': ('input_pipeline.reid.cuhk03', 'read_cuhk03_np'),
    'cuhk03_classic': ('input_pipeline.reid.cuhk03', 'read_cuhk03_classic'),
    'veri776': ('input_pipeline.reid.veri', 'read_veri776'),
    'vehicleid': ('input_pipeline.reid.vehicleid', 'read_vehicleid'),
}


def test_registry_lists_every_reader_and_binds_options(monkeypatch):
  assert READERS == EXPECTED_READERS
  for dataset, (module, function) in EXPECTED_READERS.items():
    reader = get_reader(dataset)                          # raises when the reader is missing
    assert reader.__module__ == module and reader.__name__ == function
    assert next(iter(inspect.signature(reader).parameters)) == 'root'
  assert resolve_options('msmt17', {'msmt17all': True}) == {'msmt17all': True, 'version': 'V1'}
  assert config_name('msmt17', {'version': 'V2'}) == 'msmt17-msmt17all=False-version=V2'
  assert config_name('randperson', {}) == 'randperson'
  assert config_name('veri776', {}) == 'veri776'
  assert config_name('veri776', {'keypoint_dir': '/a/b'}) == 'veri776-keypoint_dir=given'
  with pytest.raises(TypeError, match=r"takes options \['msmt17all', 'version'\], got unknown "
                                      r"\['variant'\]"):
    resolve_options('msmt17', {'variant': 'detected'})
  with pytest.raises(TypeError, match='expected bool, int, float, str or None'):
    resolve_options('msmt17', {'version': ['V1']})
  with pytest.raises(ValueError, match="unknown re-ID dataset 'market'"):
    get_reader('market')
  # A registered reader whose module is absent is named in the error.
  monkeypatch.setitem(READERS, 'absent_reid', ('input_pipeline.reid.absent_reid', 'read_absent'))
  with pytest.raises(ValueError, match='the absent_reid reader .* is not installed'):
    get_reader('absent_reid')


# ----------------------------------------------------------------------------- the TFDS builder

@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  tfds.disable_progress_bar()
  base = tmp_path_factory.mktemp('reid')
  root = _market(base / 'manual')
  _write(root / 'images', ['0000_c3s2_000001_00.jpg'])
  data_dir = prepare_reid('market1501', root, base / 'tfds')
  return root, data_dir


def test_prepared_records_are_the_original_files_in_reader_order(prepared):
  root, data_dir = prepared
  expected = read_market1501(root)
  for split, records in expected.items():
    part = reid_split('market1501', split, data_dir)
    assert len(part) == len(part.source) == len(records)
    assert part.names == _names(records)
    np.testing.assert_array_equal(part.pids, [r.pid for r in records])
    np.testing.assert_array_equal(part.camids, [r.camid for r in records])
    np.testing.assert_array_equal(part.viewids, [r.viewid for r in records])
    assert part.pids.dtype == part.camids.dtype == part.viewids.dtype == np.int64
    for i, record in enumerate(records):
      item = part.source[i]
      assert item['image'] == pathlib.Path(record.path).read_bytes()   # encoded, undecoded
      assert (item['pid'], item['camid'], item['viewid']) == (record.pid, record.camid, -1)
      assert item['name'].decode() == record.name
  assert reid_split('market1501', 'gallery', data_dir).num_ids == 2   # pid 1 + distractors


def test_label_index_is_rebuilt_from_the_records_when_missing(prepared):
  _, data_dir = prepared
  before = reid_split('market1501', 'gallery', data_dir)
  index = pathlib.Path(data_dir).glob('reid_images/market1501-distractors_500k=False/*/'
                                      'reid_index_gallery.npz')
  (path,) = list(index)
  path.unlink()
  after = reid_split('market1501', 'gallery', data_dir)
  assert path.is_file() and after.names == before.names
  for field in ('pids', 'camids', 'viewids'):
    np.testing.assert_array_equal(getattr(after, field), getattr(before, field))


def test_prepared_copy_is_reused_and_options_get_their_own(prepared):
  root, data_dir = prepared
  # The copy exists: the manual folder is not looked at again.
  assert prepare_reid('market1501', root.parent / 'does-not-exist', data_dir) == data_dir
  with pytest.raises(DatasetLayoutError, match="no prepared market1501-distractors_500k=True; run "
                                               "prepare_reid\\('market1501', manual_dir, data_dir, "
                                               "distractors_500k=True\\)"):
    reid_split('market1501', 'distractors_500k', data_dir, distractors_500k=True)
  prepare_reid('market1501', root, data_dir, distractors_500k=True)
  extra = reid_split('market1501', 'distractors_500k', data_dir, distractors_500k=True)
  assert extra.names == ['images/0000_c3s2_000001_00.jpg'] and list(extra.pids) == [0]
  folders = sorted(p.name for p in (pathlib.Path(data_dir) / 'reid_images').iterdir())
  assert folders == ['market1501-distractors_500k=False', 'market1501-distractors_500k=True']
  with pytest.raises(ValueError, match=r"market1501 has splits \['gallery', 'query', 'train'\], "
                                       r"not 'distractors_500k'"):
    reid_split('market1501', 'distractors_500k', data_dir)


def test_wrong_layout_fails_before_anything_is_written(tmp_path):
  with pytest.raises(DatasetLayoutError, match='missing folder bounding_box_test/'):
    prepare_reid('market1501', _write(tmp_path / 'm', ['query/0001_c1s1_001051_00.jpg']),
                 tmp_path / 'tfds')
  assert not (tmp_path / 'tfds' / 'reid_images').exists()


def test_corrupt_image_is_named(tmp_path):
  root = _write(tmp_path / 'own', ['train/0001_c1_a.jpg', 'train/0002_c1_b.jpg'])
  bad = root / 'train' / '0002_c1_b.jpg'
  bad.write_bytes(bad.read_bytes()[:40])                  # truncated JPEG
  with pytest.raises(CorruptImageError, match='0002_c1_b.jpg'):
    prepare_reid('own_folder', root, tmp_path / 'tfds')


def test_merge_shifts_ids_and_cameras(prepared, tmp_path):
  _, data_dir = prepared
  own = _write(tmp_path / 'own', ['train/0001_c0_a.jpg', 'train/0003_c2_b.jpg'])
  prepare_reid('own_folder', own, data_dir)
  market = reid_split('market1501', 'train', data_dir)
  mine = reid_split('own_folder', 'train', data_dir)
  merged = merge_reid_splits([market, mine])
  n = len(market)
  assert len(merged) == len(merged.source) == n + 2
  assert list(merged.pids) == list(market.pids) + [8 + 1, 8 + 3]      # market's largest pid is 7
  assert list(merged.camids) == list(market.camids) + [4 + 0, 4 + 2]  # its largest camera is 3
  assert merged.names[n] == 'own_folder/train/0001_c0_a.jpg'
  item = merged.source[n + 1]
  assert (item['pid'], item['camid'], item['name']) == (11, 6, b'own_folder/train/0003_c2_b.jpg')
  assert merged.source[-1]['pid'] == 11 and merged.source[0]['pid'] == market.pids[0]
  with pytest.raises(IndexError):
    merged.source[n + 2]
  clone = pickle.loads(pickle.dumps(merged.source))      # grain workers receive it pickled
  assert repr(clone) == repr(merged.source) and 'at 0x' not in repr(clone)
  assert clone[n]['image'] == merged.source[n]['image']
