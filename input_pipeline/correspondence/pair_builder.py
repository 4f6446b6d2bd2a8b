"""What every keypoint-pair dataset builder shares: the two TFDS configs and their record fields.

Each correspondence dataset (SPair-71k, PF-PASCAL, PF-WILLOW) is built as two configs so that images
are stored once: '<name>/images' (split 'images': name, category, the original encoded bytes, width,
height) and '<name>/pairs' (one split per official pair list). A pair record holds keypoints and boxes
in ORIGINAL image pixels plus the source/target image names and their row numbers in the 'images'
split, i.e. the fields `input_pipeline.correspondence.pipeline` reads. Records keep generation order
(shuffling disabled) so those row numbers stay valid. Everything here works without TensorFlow.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.errors import DatasetLayoutError
from input_pipeline.images import open_rgb

CONFIGS = ('images', 'pairs')


def builder_configs() -> list[tfds.core.BuilderConfig]:
  return [tfds.core.BuilderConfig(name='images', description='every image file, encoded bytes'),
          tfds.core.BuilderConfig(name='pairs', description='official pair lists with annotations')]


def image_features(categories) -> tfds.features.FeaturesDict:
  # The bytes are stored as distributed (JPEG or PNG); readers decode them with PIL (SkipDecoding).
  return tfds.features.FeaturesDict({
      'name': tfds.features.Text(), 'category': tfds.features.ClassLabel(names=categories),
      'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
      'width': np.int32, 'height': np.int32})


def pair_features(categories, **extra) -> tfds.features.FeaturesDict:
  """Fields every pair record has; `extra` adds dataset-specific ones (flip, difficulty flags)."""
  points = tfds.features.Tensor(shape=(None, 2), dtype=np.float32)
  box = tfds.features.Tensor(shape=(4,), dtype=np.float32)
  return tfds.features.FeaturesDict({
      'name': tfds.features.Text(), 'pair_id': np.int64,
      'category': tfds.features.ClassLabel(names=categories),
      'src_name': tfds.features.Text(), 'trg_name': tfds.features.Text(),
      'src_image': np.int64, 'trg_image': np.int64, 'src_kps': points, 'trg_kps': points,
      'src_bbox': box, 'trg_bbox': box, **extra})


def image_record(path: pathlib.Path, name: str, category: str) -> dict:
  """One 'images' row; the full decode makes a corrupt file fail here, by name, before training."""
  data = path.read_bytes()
  width, height = open_rgb(data, str(path)).size
  return {'name': name, 'category': category, 'image': data, 'width': np.int32(width),
          'height': np.int32(height)}


def keypoint_box(points: np.ndarray) -> np.ndarray:
  """[x1, y1, x2, y2] of the keypoints (for datasets distributed without object boxes)."""
  return np.concatenate([points.min(axis=0), points.max(axis=0)]).astype(np.float32)


def is_prepared(data_dir, builder_name: str, version) -> bool:
  return all((pathlib.Path(data_dir) / builder_name / c / str(version) / 'dataset_info.json').is_file()
             for c in CONFIGS)


def prepare(builder_cls, root: pathlib.Path, data_dir) -> str:
  """Builds both configs of `builder_cls` from the validated folder `root` into `data_dir`."""
  data_dir = os.fspath(data_dir)
  config = tfds.download.DownloadConfig(manual_dir=os.fspath(root))
  for name in CONFIGS:
    builder = builder_cls(config=name, data_dir=data_dir, file_format='array_record')
    builder.download_and_prepare(download_config=config)
  return data_dir


def sources(data_dir, builder_name: str, version, splits, prepare_fn: str) -> dict:
  """Random-access sources {'images', *splits}; images stay encoded (decoded in the pipeline)."""
  data_dir = os.fspath(data_dir)
  if not is_prepared(data_dir, builder_name, version):
    raise DatasetLayoutError(f'{data_dir} has no prepared {builder_name}; run '
                             f'{prepare_fn}(manual_dir, data_dir) first')
  out = {'images': tfds.data_source(f'{builder_name}/images', split='images', data_dir=data_dir,
                                    download=False, decoders={'image': tfds.decode.SkipDecoding()})}
  for split in splits:
    out[split] = tfds.data_source(f'{builder_name}/pairs', split=split, data_dir=data_dir,
                                  download=False)
  return out
