"""CUHK03 layout readers: the new 767/700 protocol (CUHK03-NP) and the classic 20-split protocol.

CUHK03 (Li et al., CVPR 2014) was filmed by five pairs of campus cameras. Each person appears in one
pair; up to five crops per camera, 'labeled' (hand-drawn boxes) and 'detected' (DPM boxes). Ids here:
- pid: persons numbered 1..N over the pairs in order (pair 1's persons first), so ids are unique
  across the five pairs; CUHK03-NP files carry the same numbers in their names.
- camid: 1 or 2, the camera within the person's pair (crops 1-5 vs 6-10 of a cell row), as the
  dataset itself and torchreid number them. The five pairs therefore share camera ids 1/2, which is
  what the same-identity-same-camera filter of the evaluation needs.

Accepted layouts (EXPECTED_LAYOUT):
- CUHK03-NP as distributed (Zhong et al. 2017): `<variant>/{bounding_box_train,query,bounding_box_test}`
  with Market-style names `<pid>_c<cam>_<n>.png`.
- the original release `cuhk03_release/cuhk-03.mat` (MATLAB v7.3 = HDF5; images stored as arrays in
  cell arrays) plus, for the new protocol, `cuhk03_new_protocol_config_<variant>.mat` (MATLAB v5:
  train_idx, query_idx, gallery_idx, labels, filelist; 1-based indices).

A ReidRecord points at an image file, so images inside cuhk-03.mat are written ONCE as PNG files to
`<cache_dir>/images_<variant>/<pair>_<person:03d>_<camera>_<crop:02d>.png` (all 1-based; the names the
new-protocol `filelist` uses and torchreid writes). `cache_dir` defaults to the dataset folder, as in
torchreid, so a folder it already prepared is reused; existing files are never rewritten, and each
file appears atomically (a temporary name, then a rename), so an interrupted extraction resumes.
"""
from __future__ import annotations

import os
import pathlib
import re

import numpy as np

from input_pipeline.errors import DatasetLayoutError
from input_pipeline.reid.records import ReidRecord

VARIANTS = ('detected', 'labeled')
CLASSIC_VARIANTS = VARIANTS + ('both',)   # 'both': labeled + detected crops merged per identity
NP_FOLDERS = {'train': 'bounding_box_train', 'query': 'query', 'gallery': 'bounding_box_test'}
CROPS_PER_CAMERA = 5                       # cell columns 1-5: camera 1, 6-10: camera 2
MAT_RELEASE = pathlib.Path('cuhk03_release') / 'cuhk-03.mat'
CONFIG_FIELDS = ('train_idx', 'query_idx', 'gallery_idx', 'labels', 'filelist')
EXPECTED_LAYOUT = """\
cuhk03/  (or cuhk03-np/; either folder or its parent)
  CUHK03-NP as distributed:
    detected/  bounding_box_train/ query/ bounding_box_test/  <pid>_c<cam>_<n>.png (Market naming)
    labeled/   (same three folders)
  and/or the original release:
    cuhk03_release/cuhk-03.mat        MATLAB v7.3 (HDF5): 'detected', 'labeled' (5 cells of
                                      persons x 10 image cells), 'testsets' (20 cells of 100 x 2
                                      [pair, person] rows)
    cuhk03_new_protocol_config_detected.mat   MATLAB v5: train_idx, query_idx, gallery_idx,
    cuhk03_new_protocol_config_labeled.mat    labels, filelist (here or in cuhk03_release/)"""
_MARKET_NAME = re.compile(r'^(-?\d+)_c(\d+)')
_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')


# ----------------------------------------------------------------------------- layout

def _layout_error(root, problems: list[str]) -> DatasetLayoutError:
  listed = '\n'.join(f'  - {p}' for p in problems)
  return DatasetLayoutError(f'{root} is not a CUHK03 folder as distributed.\n'
                            f'Expected layout:\n{EXPECTED_LAYOUT}\nProblems:\n{listed}')


def _check_variant(variant: str, allowed=VARIANTS) -> None:
  if variant not in allowed:
    raise ValueError(f'CUHK03 variant must be one of {allowed}, got {variant!r}')


def _has_np_folders(root: pathlib.Path, variant: str) -> bool:
  return all((root / variant / f).is_dir() for f in NP_FOLDERS.values())


def _config_path(root: pathlib.Path, variant: str) -> pathlib.Path | None:
  name = f'cuhk03_new_protocol_config_{variant}.mat'
  for path in (root / name, root / MAT_RELEASE.parent / name):
    if path.is_file():
      return path
  return None


def _looks_like_cuhk03(root: pathlib.Path) -> bool:
  return ((root / MAT_RELEASE).is_file()
          or any(_has_np_folders(root, v) or _config_path(root, v) for v in VARIANTS))


def resolve_root(root) -> pathlib.Path:
  """The CUHK03 folder itself, or its `cuhk03`/`cuhk03-np` child when given the parent."""
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise _layout_error(root, ['the folder does not exist'])
  if not _looks_like_cuhk03(root):
    for child in ('cuhk03', 'cuhk03-np', 'CUHK03'):
      if _looks_like_cuhk03(root / child):
        return root / child
  return root


# ----------------------------------------------------------------------------- CUHK03-NP folders

def parse_market_name(name: str) -> tuple[int, int]:
  """'0001_c1_1.png' -> (pid 1, camid 1)."""
  match = _MARKET_NAME.match(name)
  if not match:
    raise ValueError(f"image name {name!r} is not '<pid>_c<cam>_...' (Market naming)")
  return int(match.group(1)), int(match.group(2))


def _np_folder_records(root: pathlib.Path, relative: str, problems: list[str]) -> list[ReidRecord]:
  folder = root / relative
  # Dot files (e.g. macOS '._*' archive residue) are not images of the dataset.
  files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith('.')
                 and p.suffix.lower() in _IMAGE_SUFFIXES)
  if not files:
    problems.append(f'{relative}/ has no .png/.jpg images')
  records, bad = [], []
  for path in files:
    try:
      pid, camid = parse_market_name(path.name)
    except ValueError:
      bad.append(path.name)
      continue
    records.append(ReidRecord(path=str(path), name=f'{relative}/{path.name}', pid=pid, camid=camid))
  if bad:
    problems.append(f'{relative}/ has {len(bad)} names not in Market naming, e.g. {bad[:3]}')
  return records


def _read_np_folders(root: pathlib.Path, variant: str) -> dict[str, list[ReidRecord]]:
  problems: list[str] = []
  splits = {split: _np_folder_records(root, f'{variant}/{folder}', problems)
            for split, folder in NP_FOLDERS.items()}
  if problems:
    raise _layout_error(root, problems)
  return splits


# ----------------------------------------------------------------------------- cuhk-03.mat (v7.3)

def _open_release(path: pathlib.Path):
  import h5py   # only needed for the original release
  try:
    return h5py.File(path, 'r')
  except OSError as err:
    raise _layout_error(path.parent.parent, [
        f'{path.name} is not a MATLAB v7.3 (HDF5) file: {err}']) from err


def _cells(mat, node) -> np.ndarray:
  """A MATLAB cell array (HDF5 dataset of object references) in MATLAB's row-major orientation.

  MATLAB writes arrays column-major, so HDF5 holds the transpose: an M x 10 cell is a 10 x M dataset.
  """
  return np.asarray(node[()]).T


def _is_empty(node) -> bool:
  # MATLAB writes [] as a 2-element uint64 vector of its dimensions, flagged MATLAB_empty.
  return bool(node.attrs.get('MATLAB_empty', 0)) or node.ndim < 3 or node.size == 0


def _image_pixels(node) -> np.ndarray:
  """Stored 3 x W x H (transposed H x W x 3) -> uint8 [H, W, 3]."""
  pixels = np.asarray(node[()]).T
  if pixels.ndim != 3 or pixels.shape[2] != 3:
    raise DatasetLayoutError(f'cuhk-03.mat image {node.name} has shape {pixels.shape[::-1]}, '
                             'expected an H x W x 3 array')
  return np.ascontiguousarray(pixels.astype(np.uint8))


def image_file_name(pair: int, person: int, crop: int) -> str:
  """1-based (pair, person-in-pair, crop 1..10) -> '<pair>_<person:03d>_<camera>_<crop:02d>.png'."""
  camera = 1 if crop <= CROPS_PER_CAMERA else 2
  return f'{pair}_{person:03d}_{camera}_{crop:02d}.png'


def _release_catalogue(mat, variant: str, root: pathlib.Path) -> list[dict]:
  """Every person of one variant: pair, person, pid and its non-empty image cells (name -> node).

  Lists HDF5 metadata only; pixels are read when a PNG is actually written.
  """
  if variant not in mat:
    raise _layout_error(root, [f"cuhk-03.mat has no '{variant}' cell array "
                               f'(top-level keys: {sorted(mat.keys())})'])
  persons, pid, empty = [], 0, []
  for pair, pair_ref in enumerate(_cells(mat, mat[variant]).ravel(), start=1):
    table = _cells(mat, mat[pair_ref])
    if table.ndim != 2 or table.shape[1] != 2 * CROPS_PER_CAMERA:
      raise _layout_error(root, [f'cuhk-03.mat {variant} pair {pair} is a cell of shape '
                                 f'{table.shape}, expected persons x {2 * CROPS_PER_CAMERA}'])
    for person, row in enumerate(table, start=1):
      pid += 1
      images = {}
      for crop, ref in enumerate(row, start=1):
        node = mat[ref]
        if not _is_empty(node):
          images[image_file_name(pair, person, crop)] = node
      if not images:
        empty.append((pair, person))
      persons.append({'pair': pair, 'person': person, 'pid': pid, 'images': images})
  if empty:
    raise _layout_error(root, [f'cuhk-03.mat {variant}: persons without any image (pair, person): '
                               f'{empty[:5]}'])
  return persons


def _write_png(path: pathlib.Path, pixels: np.ndarray) -> None:
  from PIL import Image
  partial = path.with_name(path.name + '.partial')
  Image.fromarray(pixels).save(partial, format='PNG')
  os.replace(partial, path)   # atomic: a present file is always complete


def _extract(persons: list[dict], folder: pathlib.Path) -> None:
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError as err:
    raise OSError(f'cannot create the CUHK03 image cache {folder} ({err}); pass a writable '
                  'cache_dir') from err
  for person in persons:
    for name, node in person['images'].items():
      path = folder / name
      if not path.is_file():
        _write_png(path, _image_pixels(node))


def _release_records(root: pathlib.Path, variant: str, cache_dir) -> tuple[dict, list[dict]]:
  """Extracts one variant's images (once) and returns ({name: record}, catalogue)."""
  path = root / MAT_RELEASE
  if not path.is_file():
    raise _layout_error(root, [f'missing file {MAT_RELEASE}'])
  cache = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else root
  folder = cache / f'images_{variant}'
  with _open_release(path) as mat:
    persons = _release_catalogue(mat, variant, root)
    _extract(persons, folder)
  records = {}
  for person in persons:
    for name in person['images']:
      records[name] = ReidRecord(path=str(folder / name), name=f'images_{variant}/{name}',
                                 pid=person['pid'], camid=int(name.split('_')[2]))
  return records, persons


def _read_testsets(root: pathlib.Path) -> list[np.ndarray]:
  with _open_release(root / MAT_RELEASE) as mat:
    if 'testsets' not in mat:
      raise _layout_error(root, ["cuhk-03.mat has no 'testsets' cell array"])
    sets = [np.rint(_cells(mat, mat[ref])).astype(np.int64)
            for ref in _cells(mat, mat['testsets']).ravel()]
  for i, rows in enumerate(sets):
    if rows.ndim != 2 or rows.shape[1] != 2:
      raise _layout_error(root, [f'cuhk-03.mat testsets cell {i + 1} has shape {rows.shape}, '
                                 'expected [persons, 2] rows of (pair, person)'])
  return sets


# ----------------------------------------------------------------------------- new protocol (.mat)

def _mat_text(value) -> str:
  """Unwraps loadmat's nested cell/char arrays down to the string."""
  while isinstance(value, np.ndarray):
    if value.size != 1 and value.dtype.kind != 'U':
      raise ValueError(f'expected one string, got an array of shape {value.shape}')
    value = value.item() if value.dtype.kind != 'U' else ''.join(value.ravel().tolist())
  return str(value)


def _load_config(path: pathlib.Path, root: pathlib.Path) -> dict:
  from scipy.io import loadmat
  try:
    config = loadmat(path)
  except (NotImplementedError, ValueError, OSError) as err:
    # scipy raises NotImplementedError for MATLAB v7.3 (HDF5) files; the configs are distributed as v5.
    raise _layout_error(root, [f'{path.name} is not a readable MATLAB v5 file: {err}']) from err
  missing = [k for k in CONFIG_FIELDS if k not in config]
  if missing:
    raise _layout_error(root, [f'{path.name} lacks fields {missing}'])
  return config


def _indices(config: dict, key: str, size: int, path: pathlib.Path, root) -> np.ndarray:
  idx = np.asarray(config[key]).ravel().astype(np.int64) - 1   # MATLAB is 1-based
  if idx.size and (idx.min() < 0 or idx.max() >= size):
    raise _layout_error(root, [f'{path.name}: {key} holds indices outside 1..{size}'])
  return idx


def _read_np_release(root: pathlib.Path, variant: str, cache_dir) -> dict[str, list[ReidRecord]]:
  config_path = _config_path(root, variant)
  if config_path is None:
    raise _layout_error(root, [f'missing file cuhk03_new_protocol_config_{variant}.mat'])
  config = _load_config(config_path, root)
  names = [_mat_text(v) for v in np.asarray(config['filelist']).ravel()]
  labels = np.asarray(config['labels']).ravel().astype(np.int64)
  if len(labels) != len(names):
    raise _layout_error(root, [f'{config_path.name}: {len(labels)} labels for {len(names)} files'])
  records, _ = _release_records(root, variant, cache_dir)
  unknown = [n for n in names if n not in records]
  if unknown:
    raise _layout_error(root, [f'{config_path.name} lists {len(unknown)} images that are not in '
                               f'cuhk-03.mat {variant}, e.g. {unknown[:3]}'])
  splits = {}
  for split in NP_FOLDERS:
    idx = _indices(config, f'{split}_idx', len(names), config_path, root)
    # The config's label is the identity; the camera is in the file name.
    splits[split] = [ReidRecord(path=records[names[i]].path, name=records[names[i]].name,
                                pid=int(labels[i]), camid=records[names[i]].camid) for i in idx]
  return splits


# ----------------------------------------------------------------------------- public readers

def read_cuhk03_np(root, variant: str = 'detected', cache_dir=None) -> dict[str, list[ReidRecord]]:
  """CUHK03-NP (767 training / 700 test identities): splits 'train', 'query', 'gallery'.

  Reads the distributed `<variant>/` folders when present, otherwise the original release's
  `cuhk-03.mat` with `cuhk03_new_protocol_config_<variant>.mat` (images extracted to `cache_dir`,
  see the module docstring).
  """
  _check_variant(variant)
  root = resolve_root(root)
  if _has_np_folders(root, variant):
    return _read_np_folders(root, variant)
  if (root / MAT_RELEASE).is_file() and _config_path(root, variant):
    return _read_np_release(root, variant, cache_dir)
  problems = [f'no {variant}/{{{",".join(NP_FOLDERS.values())}}} folders']
  if not (root / MAT_RELEASE).is_file():
    problems.append(f'no {MAT_RELEASE}')
  if not _config_path(root, variant):
    problems.append(f'no cuhk03_new_protocol_config_{variant}.mat')
  raise _layout_error(root, problems)


def read_cuhk03_classic(root, variant: str = 'detected', split_index: int = 0,
                        cache_dir=None) -> dict[str, list[ReidRecord]]:
  """The classic protocol: split `split_index` (0..19) of cuhk-03.mat's 'testsets'.

  The split's 100 test identities form both 'query' and 'gallery' (the same records, as torchreid and
  open-reid do); the single-shot cross-camera scoring is the evaluator's job. Every other identity is
  'train'. variant 'both' merges labeled and detected crops of each identity (open-reid, used by
  KPM). Images are extracted once to `cache_dir` (see the module docstring).
  """
  _check_variant(variant, CLASSIC_VARIANTS)
  root = resolve_root(root)
  if not (root / MAT_RELEASE).is_file():
    raise _layout_error(root, [f'missing file {MAT_RELEASE} (the classic splits live in it)'])
  testsets = _read_testsets(root)
  if not 0 <= split_index < len(testsets):
    raise ValueError(f'split_index must be in 0..{len(testsets) - 1}, got {split_index}')
  test = {(int(a), int(b)) for a, b in testsets[split_index]}
  splits = {'train': [], 'query': []}
  for name in (VARIANTS if variant == 'both' else (variant,)):
    records, persons = _release_records(root, name, cache_dir)
    unknown = sorted(test - {(p['pair'], p['person']) for p in persons})
    if unknown:
      raise _layout_error(root, [f'testsets cell {split_index + 1} names (pair, person) rows '
                                 f'missing from {name}: {unknown[:5]}'])
    for person in persons:
      split = 'query' if (person['pair'], person['person']) in test else 'train'
      splits[split].extend(records[n] for n in person['images'])
  splits['gallery'] = list(splits['query'])
  return splits
