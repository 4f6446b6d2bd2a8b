"""TFDS builder for PF-WILLOW (Ham et al. 2016) read as distributed, working without TensorFlow.

`manual_dir` is the `PF-WILLOW` folder (its parent is accepted too). The only split, 'test', comes from
`test_pairs.csv`, read by column position as the official loader does: 0 image A (source), 1 image B
(target), 2-11 source x, 12-21 source y, 22-31 target x, 32-41 target y (10 keypoints per image, in
original pixels). In the image paths the first component is dropped and the second is the category, so
'PF-dataset/car(G)/x.png' is read from `<root>/car(G)/x.png`. PF-WILLOW has no object boxes: the
records' boxes are the keypoints' bounding boxes (they only matter to the augmenting crop; the
official PCK thresholds are computed from the keypoints, see jaxmatch.evaluation.pck). Layout of the
configs and records: `input_pipeline.correspondence.pair_builder`.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.correspondence import pair_builder
from input_pipeline.errors import DatasetLayoutError
from input_pipeline.correspondence.pfpascal import read_pair_csv

PFWILLOW_CATEGORIES = ('car(G)', 'car(M)', 'car(S)', 'duck(S)', 'motorbike(G)', 'motorbike(M)',
                       'motorbike(S)', 'winebottle(M)', 'winebottle(wC)', 'winebottle(woC)')
PAIR_SPLITS = ('test',)
NUM_KPS = 10
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
EXPECTED_LAYOUT = """\
PF-WILLOW/
  test_pairs.csv                           header row, then: image A, image B, 10 x and 10 y of A,
                                           10 x and 10 y of B (42 columns)
  <category>/<file>                        images, one folder per class: car(G) ... winebottle(woC)"""


def validate_pfwillow_layout(root) -> pathlib.Path:
  """Returns the `PF-WILLOW` folder or raises DatasetLayoutError naming what is missing."""
  root = pathlib.Path(root).expanduser()
  if not (root / 'test_pairs.csv').is_file() and (root / 'PF-WILLOW' / 'test_pairs.csv').is_file():
    root = root / 'PF-WILLOW'
  problems = [] if (root / 'test_pairs.csv').is_file() else ['missing file test_pairs.csv']
  folders = set(_category_folders(root)) if root.is_dir() else set()
  if not folders & set(PFWILLOW_CATEGORIES):   # other folders beside the categories are ignored
    found = f'; found only {sorted(folders)}' if folders else ''
    problems.append(f'no category folder (car(G), duck(S), ...){found}')
  if problems:
    listed = '\n'.join(f'  - {p}' for p in problems)
    raise DatasetLayoutError(f'{root} is not a PF-WILLOW folder as distributed.\n'
                             f'Expected layout:\n{EXPECTED_LAYOUT}\nProblems:\n{listed}')
  return root


def _category_folders(root: pathlib.Path) -> list[str]:
  return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith('.'))


def list_images(root: pathlib.Path) -> list[str]:
  """'<category>/<file>' for every image of the known category folders, in the 'images' order."""
  return [f'{c}/{f.name}' for c in _category_folders(root) if c in PFWILLOW_CATEGORIES
          for f in sorted((root / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]


def image_name(csv_path: str, where: str) -> str:
  """'PF-dataset/car(G)/x.png' -> 'car(G)/x.png' (the official loader drops the first component)."""
  parts = csv_path.replace('\\', '/').split('/')
  if len(parts) < 3 or parts[1] not in PFWILLOW_CATEGORIES:
    raise DatasetLayoutError(f'{where}: image path {csv_path!r} is not <folder>/<category>/<file> '
                             f'with a category in {PFWILLOW_CATEGORIES}')
  return '/'.join(parts[1:])


def csv_points(values: list[str], where: str) -> np.ndarray:
  """20 fields (10 x then 10 y) -> [10, 2] float32 (x, y), as the loader's reshape(2, 10)."""
  try:
    pts = np.asarray([float(v) for v in values], np.float64).reshape(2, NUM_KPS)
  except ValueError as err:
    raise DatasetLayoutError(f'{where}: keypoint fields are not numbers ({err})') from err
  if not np.isfinite(pts).all():
    raise DatasetLayoutError(f'{where}: non-finite keypoint coordinates')
  return pts.astype(np.float32).T.copy()


def _pair_example(row_index: int, row: list[str], image_rows: dict) -> dict:
  where = f'test_pairs.csv row {row_index + 2}'
  names = {'src': image_name(row[0], where), 'trg': image_name(row[1], where)}
  example = {'pair_id': row_index, 'category': names['src'].split('/')[0],
             'src_kps': csv_points(row[2:22], where), 'trg_kps': csv_points(row[22:42], where)}
  for side, name in names.items():
    if name not in image_rows:
      raise DatasetLayoutError(f'image {name} used by {where} is missing')
    example[f'{side}_name'], example[f'{side}_image'] = name, image_rows[name]
    example[f'{side}_bbox'] = pair_builder.keypoint_box(example[f'{side}_kps'])
  stems = [os.path.splitext(os.path.basename(n))[0] for n in names.values()]
  example['name'] = f'{row_index:05d}-{stems[0]}-{stems[1]}:{example["category"]}'
  return example


class PfWillow(tfds.core.GeneratorBasedBuilder):
  """PF-WILLOW test pairs: images once, pairs referencing them by row."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Images split + the test split from test_pairs.csv.'}
  BUILDER_CONFIGS = pair_builder.builder_configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download PF-WILLOW with test_pairs.csv (as fetched by the DHPF/CHM/TransforMatcher download '
      f'script), extract it and pass the folder as manual_dir:\n{EXPECTED_LAYOUT}')

  def _info(self) -> tfds.core.DatasetInfo:
    features = (pair_builder.image_features(PFWILLOW_CATEGORIES)
                if self.builder_config.name == 'images'
                else pair_builder.pair_features(PFWILLOW_CATEGORIES))
    return self.dataset_info_from_configs(
        features=features, disable_shuffling=True,
        homepage='https://www.di.ens.fr/willow/research/proposalflow/')

  def _split_generators(self, dl_manager):
    root = validate_pfwillow_layout(dl_manager.manual_dir)
    splits = ('images',) if self.builder_config.name == 'images' else PAIR_SPLITS
    return {split: self._generate_examples(root, split) for split in splits}

  def _generate_examples(self, root, split):
    names = list_images(root)
    if split == 'images':
      for row, name in enumerate(names):
        yield f'{row:08d}', pair_builder.image_record(root / name, name, name.split('/')[0])
      return
    image_rows = {name: row for row, name in enumerate(names)}
    for row, values in enumerate(read_pair_csv(root / 'test_pairs.csv', 2 + 4 * NUM_KPS)):
      yield f'{row:08d}', _pair_example(row, values, image_rows)


def prepare_pfwillow(manual_dir, data_dir) -> str:
  """Builds both configs into `data_dir` once (reusing a prepared copy); returns `data_dir`."""
  if pair_builder.is_prepared(data_dir, 'pf_willow', PfWillow.VERSION):
    return os.fspath(data_dir)
  return pair_builder.prepare(PfWillow, validate_pfwillow_layout(manual_dir), data_dir)


def pfwillow_sources(data_dir) -> dict:
  """Random-access sources {'images', 'test'}."""
  return pair_builder.sources(data_dir, 'pf_willow', PfWillow.VERSION, PAIR_SPLITS,
                              'prepare_pfwillow')
