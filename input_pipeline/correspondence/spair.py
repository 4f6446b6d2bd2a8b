"""TFDS builder for SPair-71k read exactly as distributed, working without TensorFlow.

`manual_dir` is the `SPair-71k` folder (its parent is accepted too). The builder has two configs so
that the ~1.8k images are stored once instead of inside each of the ~71k pairs:
`spair71k/images` (split 'images': name '<category>/<file>.jpg', category, the original JPEG bytes,
width, height) and `spair71k/pairs` (splits 'trn', 'val', 'test': keypoints, boxes, difficulty flags
and the source/target image names plus their row numbers in the 'images' split). Records keep the
generation order (shuffling disabled) so those row numbers stay valid. Every image is fully decoded
while building, so a corrupt file is reported by name before any training starts. Category index =
position in the official sorted list of the 18 category folders, which is what the official loader's
sorted `os.listdir(JPEGImages)` gives on the complete dataset.
"""
from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.errors import DatasetLayoutError
from input_pipeline.images import open_rgb

SPAIR_CATEGORIES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
                    'cow', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'train',
                    'tvmonitor')
# PASCAL VOC class ids (1-based, 20 classes) as used in SPair's Segmentation PNGs.
VOC_CLASS_IDS = {name: i + 1 for i, name in enumerate((
    'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
    'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train',
    'tvmonitor'))}
PAIR_SPLITS = ('trn', 'val', 'test')
DIFFICULTY_FIELDS = {'vpvar': 'viewpoint_variation', 'scvar': 'scale_variation',
                     'trncn': 'truncation', 'occln': 'occlusion'}
EXPECTED_LAYOUT = """\
SPair-71k/
  JPEGImages/<category>/<stem>.jpg         one folder per category (18: aeroplane ... tvmonitor)
  Layout/large/{trn,val,test}.txt          one pair per line: <pair_id>-<src_stem>-<trg_stem>:<category>
  PairAnnotation/{trn,val,test}/<line>.json  src_kps, trg_kps, src_bndbox, trg_bndbox, category, ...
  Segmentation/<category>/<stem>.png       optional here (not read)"""


# ----------------------------------------------------------------------------- layout

def _layout_error(root: pathlib.Path, problems: list[str]) -> DatasetLayoutError:
  listed = '\n'.join(f'  - {p}' for p in problems)
  return DatasetLayoutError(f'{root} is not an SPair-71k folder as distributed.\n'
                            f'Expected layout:\n{EXPECTED_LAYOUT}\nProblems:\n{listed}')


def validate_spair_layout(root) -> pathlib.Path:
  """Returns the `SPair-71k` folder or raises DatasetLayoutError naming what is missing.

  `root` may be the `SPair-71k` folder itself or the folder that contains it.
  """
  root = pathlib.Path(root).expanduser()
  if not (root / 'JPEGImages').is_dir() and (root / 'SPair-71k' / 'JPEGImages').is_dir():
    root = root / 'SPair-71k'
  required = [root / 'JPEGImages'] + [root / 'PairAnnotation' / s for s in PAIR_SPLITS]
  problems = [f'missing folder {p.relative_to(root)}/' for p in required if not p.is_dir()]
  problems += [f'missing file Layout/large/{s}.txt' for s in PAIR_SPLITS
               if not (root / 'Layout' / 'large' / f'{s}.txt').is_file()]
  if (root / 'JPEGImages').is_dir():
    folders = _category_folders(root)
    unknown = sorted(set(folders) - set(SPAIR_CATEGORIES))
    if unknown:
      problems.append(f'JPEGImages has folders that are not SPair categories: {unknown}')
    elif not folders:
      problems.append('JPEGImages/ has no category folders')
  if problems:
    raise _layout_error(root, problems)
  return root


def _category_folders(root: pathlib.Path) -> list[str]:
  return sorted(p.name for p in (root / 'JPEGImages').iterdir()
                if p.is_dir() and not p.name.startswith('.'))


def read_layout(path) -> list[str]:
  """Pair lines of Layout/large/<split>.txt.

  The official loader splits on '\\n' and drops the last element, which is right only when the file
  ends with a newline (as distributed); without one it silently loses the last pair. Here every
  non-blank line counts, so both forms give all pairs (and the official count on distributed files).
  """
  return [ln.strip() for ln in pathlib.Path(path).read_text().splitlines() if ln.strip()]


def parse_pair_line(line: str) -> tuple[str, str, str, str]:
  """'<pair_id>-<src_stem>-<trg_stem>:<category>' -> (pair_id, src_stem, trg_stem, category)."""
  names, sep, category = line.rpartition(':')
  parts = names.split('-')
  if not sep or len(parts) != 3:
    raise ValueError(f"malformed SPair layout line {line!r}; expected "
                     "'<pair_id>-<src_stem>-<trg_stem>:<category>'")
  return parts[0], parts[1], parts[2], category


def list_images(root: pathlib.Path) -> list[str]:
  """Image names '<category>/<file>.jpg' in the order of the 'images' split."""
  return [f'{c}/{f.name}' for c in _category_folders(root)
          for f in sorted((root / 'JPEGImages' / c).iterdir()) if f.suffix.lower() == '.jpg']


# ----------------------------------------------------------------------------- builder

def _load_annotation(path: pathlib.Path, line: str) -> dict:
  if not path.is_file():
    raise DatasetLayoutError(f'pair annotation {path} (for layout line {line!r}) is missing; '
                             f'expected layout:\n{EXPECTED_LAYOUT}')
  ann = json.loads(path.read_text())
  missing = [k for k in ('src_kps', 'trg_kps', 'src_bndbox', 'trg_bndbox', 'category',
                         *DIFFICULTY_FIELDS.values()) if k not in ann]
  if missing:
    raise DatasetLayoutError(f'pair annotation {path} lacks fields {missing}')
  return ann


def _points(values, path) -> np.ndarray:
  pts = np.asarray(values, np.float32).reshape(-1, 2)
  if not np.isfinite(pts).all():
    raise DatasetLayoutError(f'non-finite keypoints in {path}')
  return pts


def _pair_example(root: pathlib.Path, split: str, line: str, image_rows: dict) -> dict:
  pair_id, src_stem, trg_stem, category = parse_pair_line(line)
  path = root / 'PairAnnotation' / split / f'{line}.json'
  ann = _load_annotation(path, line)
  if ann['category'] != category:
    raise DatasetLayoutError(f"{path}: category {ann['category']!r} differs from its layout line")
  src_kps, trg_kps = _points(ann['src_kps'], path), _points(ann['trg_kps'], path)
  if len(src_kps) != len(trg_kps) or not len(src_kps):
    raise DatasetLayoutError(f'{path}: {len(src_kps)} source vs {len(trg_kps)} target keypoints')
  names = {side: f'{category}/{stem}.jpg' for side, stem in (('src', src_stem), ('trg', trg_stem))}
  for name in names.values():
    if name not in image_rows:
      raise DatasetLayoutError(f'image JPEGImages/{name} used by {path} is missing')
  example = {'name': line, 'pair_id': int(pair_id) if pair_id.isdigit() else -1,
             'category': category, 'src_kps': src_kps, 'trg_kps': trg_kps,
             'src_bbox': np.asarray(ann['src_bndbox'], np.float32).reshape(4),
             'trg_bbox': np.asarray(ann['trg_bndbox'], np.float32).reshape(4)}
  for side, name in names.items():
    example[f'{side}_name'] = name
    example[f'{side}_image'] = image_rows[name]
  example.update({k: np.int32(ann[field]) for k, field in DIFFICULTY_FIELDS.items()})
  return example


def _image_example(root: pathlib.Path, name: str) -> dict:
  path = root / 'JPEGImages' / name
  data = path.read_bytes()
  width, height = open_rgb(data, str(path)).size    # full decode: corrupt files fail here, by name
  return {'name': name, 'category': name.split('/')[0], 'image': data,
          'width': np.int32(width), 'height': np.int32(height)}


class Spair71k(tfds.core.GeneratorBasedBuilder):
  """SPair-71k (Min et al. 2019): images once, pairs referencing them by name and row."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Images split + trn/val/test pair splits from Layout/large.'}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name='images', description='every JPEGImages file, encoded bytes'),
      tfds.core.BuilderConfig(name='pairs', description='Layout/large pairs with annotations'),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download SPair-71k.tar.gz from https://cvlab.postech.ac.kr/research/SPair-71k/, extract it '
      f'and pass the extracted folder as manual_dir:\n{EXPECTED_LAYOUT}')

  def _info(self) -> tfds.core.DatasetInfo:
    category = tfds.features.ClassLabel(names=SPAIR_CATEGORIES)
    if self.builder_config.name == 'images':
      features = {'name': tfds.features.Text(), 'category': category,
                  'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
                  'width': np.int32, 'height': np.int32}
    else:
      points = tfds.features.Tensor(shape=(None, 2), dtype=np.float32)
      box = tfds.features.Tensor(shape=(4,), dtype=np.float32)
      features = {'name': tfds.features.Text(), 'pair_id': np.int64, 'category': category,
                  'src_name': tfds.features.Text(), 'trg_name': tfds.features.Text(),
                  'src_image': np.int64, 'trg_image': np.int64, 'src_kps': points,
                  'trg_kps': points, 'src_bbox': box, 'trg_bbox': box,
                  **{k: np.int32 for k in DIFFICULTY_FIELDS}}
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features), disable_shuffling=True,
        homepage='https://cvlab.postech.ac.kr/research/SPair-71k/')

  def _split_generators(self, dl_manager):
    root = validate_spair_layout(dl_manager.manual_dir)
    splits = ('images',) if self.builder_config.name == 'images' else PAIR_SPLITS
    return {split: self._generate_examples(root, split) for split in splits}

  def _generate_examples(self, root, split):
    # Zero-padded keys in generation order: with shuffling disabled the rows keep this order, so
    # the pairs' image row numbers index the 'images' split directly.
    if split == 'images':
      for row, name in enumerate(list_images(root)):
        yield f'{row:08d}', _image_example(root, name)
      return
    image_rows = {name: row for row, name in enumerate(list_images(root))}
    for row, line in enumerate(read_layout(root / 'Layout' / 'large' / f'{split}.txt')):
      yield f'{row:08d}', _pair_example(root, split, line, image_rows)


# ----------------------------------------------------------------------------- entry points

def _is_prepared(data_dir, config: str) -> bool:
  version = pathlib.Path(data_dir) / 'spair71k' / config / str(Spair71k.VERSION)
  return (version / 'dataset_info.json').is_file()


def prepare_spair(manual_dir, data_dir) -> str:
  """Builds both configs into `data_dir` once (reusing a prepared copy); returns `data_dir`."""
  data_dir = os.fspath(data_dir)
  if all(_is_prepared(data_dir, c) for c in ('images', 'pairs')):
    return data_dir
  root = validate_spair_layout(manual_dir)
  config = tfds.download.DownloadConfig(manual_dir=os.fspath(root))
  for name in ('images', 'pairs'):
    builder = Spair71k(config=name, data_dir=data_dir, file_format='array_record')
    builder.download_and_prepare(download_config=config)
  return data_dir


def spair_sources(data_dir) -> dict:
  """Random-access sources {'images', 'trn', 'val', 'test'}; images stay encoded (decode in workers)."""
  data_dir = os.fspath(data_dir)
  missing = [c for c in ('images', 'pairs') if not _is_prepared(data_dir, c)]
  if missing:
    raise DatasetLayoutError(f'{data_dir} has no prepared spair71k/{missing[0]}; run '
                             'prepare_spair(manual_dir, data_dir) first')
  sources = {'images': tfds.data_source('spair71k/images', split='images', data_dir=data_dir,
                                        download=False,
                                        decoders={'image': tfds.decode.SkipDecoding()})}
  for split in PAIR_SPLITS:
    sources[split] = tfds.data_source('spair71k/pairs', split=split, data_dir=data_dir,
                                      download=False)
  return sources
