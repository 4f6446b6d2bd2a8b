"""TFDS builder for PF-PASCAL (Ham et al. 2018) read as distributed with the DHPF/CHM/TransforMatcher
split lists, working without TensorFlow.

`manual_dir` is the `PF-PASCAL` folder (its parent is accepted too). Splits 'trn', 'val', 'test' come
from `{split}_pairs.csv`, read by column position as the official loader does: 0 source image path,
1 target image path (only the file name is used; images live in JPEGImages/), 2 class id 1..20 in
PASCAL VOC order, 3 the horizontal-flip flag (trn only; 0 elsewhere). Keypoints come from
`Annotations/<class>/<stem>.mat` ('kps', K x 2 with NaN rows for invisible parts) and are index-matched
across the pair; a keypoint is kept only when it is visible in both images, and like the official
loader's zip the shorter list bounds the pairing. Boxes are the .mat 'bbox' (x1, y1, x2, y2). All
coordinates stay in original pixels; the pipeline rescales them. Layout of the configs and records:
`input_pipeline.correspondence.pair_builder`.
"""
from __future__ import annotations

import csv
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.correspondence import pair_builder
from input_pipeline.errors import DatasetLayoutError

# PASCAL VOC order: the csv's class id k (1-based) names PFPASCAL_CATEGORIES[k - 1].
PFPASCAL_CATEGORIES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
                       'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
                       'sheep', 'sofa', 'train', 'tvmonitor')
PAIR_SPLITS = ('trn', 'val', 'test')
EXPECTED_LAYOUT = """\
PF-PASCAL/
  JPEGImages/<stem>.jpg                    every image, one flat folder
  Annotations/<class>/<stem>.mat           'kps' (K x 2, NaN = invisible) and 'bbox' (x1, y1, x2, y2)
  {trn,val,test}_pairs.csv                 header row, then: source path, target path, class id 1-20,
                                           flip flag (trn only)"""


# ----------------------------------------------------------------------------- layout

def validate_pfpascal_layout(root) -> pathlib.Path:
  """Returns the `PF-PASCAL` folder or raises DatasetLayoutError naming what is missing."""
  root = pathlib.Path(root).expanduser()
  if not (root / 'JPEGImages').is_dir() and (root / 'PF-PASCAL' / 'JPEGImages').is_dir():
    root = root / 'PF-PASCAL'
  problems = [f'missing folder {d}/' for d in ('JPEGImages', 'Annotations') if not (root / d).is_dir()]
  problems += [f'missing file {s}_pairs.csv' for s in PAIR_SPLITS
               if not (root / f'{s}_pairs.csv').is_file()]
  if (root / 'Annotations').is_dir():
    folders = {p.name for p in (root / 'Annotations').iterdir() if p.is_dir()}
    unknown = sorted(folders - set(PFPASCAL_CATEGORIES))
    if unknown:
      problems.append(f'Annotations has folders that are not PASCAL VOC classes: {unknown}')
    elif not folders:
      problems.append('Annotations/ has no class folders')
  if problems:
    listed = '\n'.join(f'  - {p}' for p in problems)
    raise DatasetLayoutError(f'{root} is not a PF-PASCAL folder as distributed.\n'
                             f'Expected layout:\n{EXPECTED_LAYOUT}\nProblems:\n{listed}')
  return root


def read_pair_csv(path, min_columns: int) -> list[list[str]]:
  """Data rows of a pair list (the header row is skipped, blank lines ignored), stripped fields."""
  with open(path, newline='', encoding='utf-8') as f:
    rows = [[v.strip() for v in row] for row in csv.reader(f)][1:]
  rows = [r for r in rows if any(r)]
  for i, row in enumerate(rows):
    if len(row) < min_columns:
      raise DatasetLayoutError(f'{path} row {i + 2} has {len(row)} columns, expected at least '
                               f'{min_columns}: {row}')
  return rows


def list_images(root: pathlib.Path) -> list[str]:
  return sorted(p.name for p in (root / 'JPEGImages').iterdir()
                if p.suffix.lower() in ('.jpg', '.jpeg', '.png') and not p.name.startswith('.'))


# ----------------------------------------------------------------------------- annotations

def read_annotation(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """(.mat 'kps' [K, 2] float32 with NaN rows, 'bbox' [4] float32)."""
  import scipy.io  # only the PF-PASCAL builder needs it
  if not path.is_file():
    raise DatasetLayoutError(f'annotation {path} is missing; expected layout:\n{EXPECTED_LAYOUT}')
  mat = scipy.io.loadmat(path)
  missing = [k for k in ('kps', 'bbox') if k not in mat]
  if missing:
    raise DatasetLayoutError(f'annotation {path} lacks fields {missing}')
  kps = np.asarray(mat['kps'], np.float64).reshape(-1, 2).astype(np.float32)
  return kps, np.asarray(mat['bbox'], np.float64).reshape(-1)[:4].astype(np.float32)


def visible_in_both(src: np.ndarray, trg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Index-matched keypoints visible (no NaN) in both images; the shorter list bounds the pairing."""
  n = min(len(src), len(trg))
  keep = ~(np.isnan(src[:n]).any(axis=1) | np.isnan(trg[:n]).any(axis=1))
  return src[:n][keep], trg[:n][keep]


def _class_name(value: str, where: str) -> str:
  try:
    index = int(float(value))
  except ValueError:
    index = 0
  if not 1 <= index <= len(PFPASCAL_CATEGORIES):
    raise DatasetLayoutError(f'{where}: class id {value!r} is not in 1..20 (PASCAL VOC order)')
  return PFPASCAL_CATEGORIES[index - 1]


def _pair_example(root: pathlib.Path, split: str, row_index: int, row: list[str],
                  image_rows: dict) -> dict:
  where = f'{split}_pairs.csv row {row_index + 2}'
  category = _class_name(row[2], where)
  names = {'src': os.path.basename(row[0]), 'trg': os.path.basename(row[1])}
  example = {'pair_id': row_index, 'category': category,
             'flip': np.int32(int(float(row[3])) if split == 'trn' else 0)}
  annotations = {}
  for side, name in names.items():
    if name not in image_rows:
      raise DatasetLayoutError(f'image JPEGImages/{name} used by {where} is missing')
    annotations[side] = read_annotation(root / 'Annotations' / category /
                                        f'{os.path.splitext(name)[0]}.mat')
    example[f'{side}_name'], example[f'{side}_image'] = name, image_rows[name]
    example[f'{side}_bbox'] = annotations[side][1]
  src_kps, trg_kps = visible_in_both(annotations['src'][0], annotations['trg'][0])
  if not len(src_kps):
    raise DatasetLayoutError(f'{where} ({names["src"]}, {names["trg"]}): no keypoint is visible in '
                             'both images')
  example.update(src_kps=src_kps, trg_kps=trg_kps,
                 name=f'{row_index:05d}-{os.path.splitext(names["src"])[0]}-'
                      f'{os.path.splitext(names["trg"])[0]}:{category}')
  return example


# ----------------------------------------------------------------------------- builder

class PfPascal(tfds.core.GeneratorBasedBuilder):
  """PF-PASCAL with the trn/val/test pair lists: images once, pairs referencing them by row."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Images split + trn/val/test pair splits from {split}_pairs.csv.'}
  BUILDER_CONFIGS = pair_builder.builder_configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download PF-PASCAL with the trn/val/test pair lists used by DHPF/CHM/TransforMatcher (their '
      f'download script fetches it), extract it and pass the folder as manual_dir:\n{EXPECTED_LAYOUT}')

  def _info(self) -> tfds.core.DatasetInfo:
    if self.builder_config.name == 'images':
      features = pair_builder.image_features(PFPASCAL_CATEGORIES)
    else:
      features = pair_builder.pair_features(PFPASCAL_CATEGORIES, flip=np.int32)
    return self.dataset_info_from_configs(
        features=features, disable_shuffling=True,
        homepage='https://www.di.ens.fr/willow/research/proposalflow/')

  def _split_generators(self, dl_manager):
    root = validate_pfpascal_layout(dl_manager.manual_dir)
    splits = ('images',) if self.builder_config.name == 'images' else PAIR_SPLITS
    return {split: self._generate_examples(root, split) for split in splits}

  def _generate_examples(self, root, split):
    names = list_images(root)
    if split == 'images':
      categories = _image_categories(root)
      for row, name in enumerate(names):
        # Images shared by several classes are labelled with the first class that annotates them.
        yield f'{row:08d}', pair_builder.image_record(root / 'JPEGImages' / name, name,
                                                      categories.get(name, PFPASCAL_CATEGORIES[0]))
      return
    image_rows = {name: row for row, name in enumerate(names)}
    columns = 4 if split == 'trn' else 3
    for row, values in enumerate(read_pair_csv(root / f'{split}_pairs.csv', columns)):
      yield f'{row:08d}', _pair_example(root, split, row, values, image_rows)


def _image_categories(root: pathlib.Path) -> dict:
  out = {}
  for category in PFPASCAL_CATEGORIES:
    folder = root / 'Annotations' / category
    if folder.is_dir():
      for mat in sorted(folder.glob('*.mat')):
        out.setdefault(mat.stem, category)
  return {name: out[os.path.splitext(name)[0]] for name in list_images(root)
          if os.path.splitext(name)[0] in out}


# ----------------------------------------------------------------------------- entry points

def prepare_pfpascal(manual_dir, data_dir) -> str:
  """Builds both configs into `data_dir` once (reusing a prepared copy); returns `data_dir`."""
  if pair_builder.is_prepared(data_dir, 'pf_pascal', PfPascal.VERSION):
    return os.fspath(data_dir)
  return pair_builder.prepare(PfPascal, validate_pfpascal_layout(manual_dir), data_dir)


def pfpascal_sources(data_dir) -> dict:
  """Random-access sources {'images', 'trn', 'val', 'test'}."""
  return pair_builder.sources(data_dir, 'pf_pascal', PfPascal.VERSION, PAIR_SPLITS,
                              'prepare_pfpascal')
