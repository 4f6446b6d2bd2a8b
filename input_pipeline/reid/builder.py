"""One TFDS builder (no TensorFlow) for every re-ID dataset, fed by the layout readers.

`READERS` maps a dataset name to its layout reader, imported lazily by module path so that a reader
is only needed when its dataset is used. The builder stores each record the reader lists as

    image   the original encoded file bytes (read back undecoded with SkipDecoding)
    pid, camid, viewid   int64, as the dataset names them (see each reader's docstring)
    name    the path relative to the dataset folder

in the reader's order (shuffling disabled, so row i of a split is record i). Every image is fully
decoded once while building, so a corrupt file fails the build with its name instead of a worker
later. Reader options (e.g. MSMT17 `version`, CUHK03 `variant`) are bound to the reader's signature,
defaults filled in, and spelled into the builder config name, so each distinct choice of options is
prepared into its own folder `<data_dir>/reid_images/<config>/<version>/` and never shares a copy.
Folder options (named `*_dir`) are spelled only as given or not, e.g. 'veri776-keypoint_dir=given'.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import pathlib
from typing import Callable

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.errors import DatasetLayoutError
from input_pipeline.images import open_rgb
from input_pipeline.reid.records import ReidRecord

# dataset name -> (module, function). Readers take the dataset folder first, then keyword options.
READERS = {
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
_OPTION_TYPES = (bool, int, float, str, type(None))


# ----------------------------------------------------------------------------- readers and options

def get_reader(dataset: str) -> Callable[..., dict]:
  """The layout reader registered for `dataset` (imported on first use)."""
  if dataset not in READERS:
    raise ValueError(f'unknown re-ID dataset {dataset!r}; known: {sorted(READERS)}')
  module, function = READERS[dataset]
  try:
    return getattr(importlib.import_module(module), function)
  except ModuleNotFoundError as err:
    if err.name != module:
      raise                                  # the reader exists but one of its imports is missing
    raise ValueError(f'the {dataset} reader {module}.{function} is not installed') from err


def resolve_options(dataset: str, options: dict) -> dict:
  """Binds `options` to the reader's keyword parameters, fills defaults, checks the values.

  Unknown names fail here with the reader's accepted options, not after a long listing.
  """
  params = list(inspect.signature(get_reader(dataset)).parameters.values())[1:]  # skip root
  accepted = {p.name: p.default for p in params}
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise TypeError(f'{dataset} takes options {sorted(accepted)}, got unknown {unknown}')
  resolved = {**accepted, **options}
  for name, value in resolved.items():
    if value is inspect.Parameter.empty:
      raise TypeError(f'{dataset} needs option {name!r}')
    if not isinstance(value, _OPTION_TYPES):
      raise TypeError(f'{dataset} option {name}={value!r}: expected bool, int, float, str or None')
  return dict(sorted(resolved.items()))


def _name_part(key: str, value) -> str | None:
  # Options named *_dir are folders (where keypoint files are, where to extract images): a path
  # would make a poor folder name, so only whether one was given is spelled.
  if key.endswith('_dir'):
    return None if value is None else f'{key}=given'
  return f'{key}={value}'


def config_name(dataset: str, options: dict) -> str:
  """'market1501-distractors_500k=False': the dataset plus every resolved option."""
  parts = [_name_part(k, v) for k, v in resolve_options(dataset, options).items()]
  return '-'.join([dataset] + [p for p in parts if p is not None])


def read_records(dataset: str, root, options: dict) -> dict[str, list[ReidRecord]]:
  """Runs the reader and checks what it returns (non-empty splits, unique names per split)."""
  splits = get_reader(dataset)(root, **resolve_options(dataset, options))
  for split, records in splits.items():
    if not records:
      raise DatasetLayoutError(f'{dataset} reader returned no records for split {split!r} '
                               f'from {root}')
    names = [r.name for r in records]
    if len(set(names)) != len(names):
      raise DatasetLayoutError(f'{dataset} split {split!r} lists some images twice')
  return splits


# ----------------------------------------------------------------------------- the builder

@dataclasses.dataclass(eq=False)
class ReidConfig(tfds.core.BuilderConfig):
  """A dataset and its resolved reader options; the name spells both (see `config_name`)."""
  dataset: str = ''
  options: tuple = ()             # sorted (name, value) pairs

  def __reduce__(self):
    # Unpickled (e.g. inside a data source sent to a worker) as the one instance of its name.
    return reid_config, (self.dataset, dict(self.options))


_MADE_CONFIGS: dict[str, ReidConfig] = {}


def reid_config(dataset: str, options: dict | None = None) -> ReidConfig:
  """The config of `dataset` with `options`; one instance per name, so tfds recognises it."""
  resolved = resolve_options(dataset, options or {})
  name = config_name(dataset, resolved)
  return _MADE_CONFIGS.setdefault(name, ReidConfig(
      name=name, dataset=dataset, options=tuple(resolved.items()),
      description=f'{dataset} read by {READERS[dataset][1]}'))


def _example(record: ReidRecord) -> dict:
  data = pathlib.Path(record.path).read_bytes()
  open_rgb(data, record.path)           # full decode: a corrupt file fails here, by name
  return {'image': data, 'pid': record.pid, 'camid': record.camid, 'viewid': record.viewid,
          'name': record.name}


class ReidImages(tfds.core.GeneratorBasedBuilder):
  """Re-ID crops of any registered dataset: encoded image, pid, camid, viewid, name."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Original image bytes with pid, camid, viewid and name.'}
  # Configs are made per dataset and options by `reid_config`; none is predefined.
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Pass the dataset folder as distributed by its owners as manual_dir; each reader in '
      'input_pipeline/reid/ documents its expected layout.')

  @classmethod
  def get_builder_config(cls, name: str, version=None) -> ReidConfig | None:
    # Configs are made on demand, one per dataset and options, so tfds looks them up here
    # instead of in BUILDER_CONFIGS (and does not treat them as unknown custom configs).
    return _MADE_CONFIGS.get(name)

  def _info(self) -> tfds.core.DatasetInfo:
    features = tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(None, None, 3)),
        'pid': np.int64, 'camid': np.int64, 'viewid': np.int64, 'name': tfds.features.Text()})
    return self.dataset_info_from_configs(features=features, disable_shuffling=True)

  def _split_generators(self, dl_manager):
    config = self.builder_config
    splits = read_records(config.dataset, dl_manager.manual_dir, dict(config.options))
    return {split: self._generate_examples(records) for split, records in splits.items()}

  def _generate_examples(self, records):
    # Zero-padded keys in reader order: with shuffling disabled, row i is records[i].
    for row, record in enumerate(records):
      yield f'{row:08d}', _example(record)


def reid_builder(dataset: str, data_dir, options: dict | None = None) -> ReidImages:
  return ReidImages(config=reid_config(dataset, options), data_dir=os.fspath(data_dir),
                    file_format='array_record')


def is_prepared(builder: ReidImages) -> bool:
  return (pathlib.Path(builder.data_dir) / 'dataset_info.json').is_file()
