"""Entry points to the prepared re-ID data: build once, then open splits as random-access sources.

    data_dir = prepare_reid('market1501', manual_dir='~/data/Market-1501-v15.09.15', data_dir=...)
    train = reid_split('market1501', 'train', data_dir)
    train.source[i]  # {'image': encoded bytes, 'pid', 'camid', 'viewid': int, 'name': bytes}
    train.pids       # int64 [N], available without decoding or even reading any image

The per-split label arrays come from a small index file written next to the prepared records
(`reid_index_<split>.npz`), so samplers can group identities at once even on the 126k-image MSMT17.
Training on several datasets together is the caller's choice: `merge_reid_splits` concatenates
splits, shifting pids and camids so identities and cameras of different datasets stay distinct.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.errors import DatasetLayoutError
from input_pipeline.reid.builder import is_prepared, read_records, reid_builder

_INDEX_FIELDS = ('pids', 'camids', 'viewids')


@dataclasses.dataclass
class ReidSplit:
  """One split: a grain-compatible random-access `source` plus its labels as arrays."""
  dataset: str
  split: str
  source: object                  # source[i] -> {'image', 'pid', 'camid', 'viewid', 'name'}
  pids: np.ndarray                # int64 [N]
  camids: np.ndarray              # int64 [N]
  viewids: np.ndarray             # int64 [N]
  names: list                     # str [N]

  def __len__(self) -> int:
    return len(self.pids)

  @property
  def num_ids(self) -> int:
    return len(np.unique(self.pids))


# ----------------------------------------------------------------------------- preparing

def prepare_reid(dataset: str, manual_dir, data_dir, **options) -> str:
  """Builds `dataset` (read from `manual_dir` with `options`) into `data_dir` once; returns data_dir.

  A copy prepared earlier with the same options is reused without looking at `manual_dir`. The
  layout is checked before anything is written, so a wrong folder fails at once.
  """
  data_dir = os.fspath(pathlib.Path(data_dir).expanduser())
  builder = reid_builder(dataset, data_dir, options)
  if not is_prepared(builder):
    manual_dir = pathlib.Path(manual_dir).expanduser()
    read_records(dataset, manual_dir, options)       # layout errors before any output
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  for split in builder.info.splits:
    _load_index(builder, split)
  return data_dir


# ----------------------------------------------------------------------------- opening splits

def _index_path(builder, split: str) -> pathlib.Path:
  return pathlib.Path(builder.data_dir) / f'reid_index_{split}.npz'


def _load_index(builder, split: str) -> dict:
  """Labels of a split; read from the index file, or gathered from the records and saved once."""
  path = _index_path(builder, split)
  if path.is_file():
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  source = builder.as_data_source(split=split, decoders={'image': tfds.decode.SkipDecoding()})
  rows = [row for start in range(0, len(source), 1024)
          for row in source.__getitems__(range(start, min(start + 1024, len(source))))]
  index = {field: np.asarray([r[field[:-1]] for r in rows], np.int64).reshape(-1)
           for field in _INDEX_FIELDS}
  index['names'] = np.asarray([_text(r['name']) for r in rows], dtype=np.str_).reshape(-1)
  try:
    np.savez(path, **index)
  except OSError:          # a read-only prepared copy still works, it is just re-indexed each time
    pass
  return index


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def reid_split(dataset: str, split: str, data_dir, **options) -> ReidSplit:
  """Opens a prepared split; images stay encoded (decode them in the workers)."""
  builder = reid_builder(dataset, data_dir, options)
  if not is_prepared(builder):
    raise DatasetLayoutError(
        f'{data_dir} has no prepared {builder.builder_config.name}; run '
        f"prepare_reid({dataset!r}, manual_dir, data_dir{_kwargs(options)}) first")
  available = sorted(builder.info.splits)
  if split not in available:
    raise ValueError(f'{dataset} has splits {available}, not {split!r}')
  index = _load_index(builder, split)
  source = builder.as_data_source(split=split, decoders={'image': tfds.decode.SkipDecoding()})
  return ReidSplit(dataset=dataset, split=split, source=source, pids=index['pids'],
                   camids=index['camids'], viewids=index['viewids'],
                   names=[str(n) for n in index['names']])


def _kwargs(options: dict) -> str:
  return ''.join(f', {k}={v!r}' for k, v in sorted(options.items()))


# ----------------------------------------------------------------------------- merging

class MergedSource:
  """Concatenated sources; item pids/camids shifted by each part's offsets (picklable for grain)."""

  def __init__(self, sources, datasets, pid_offsets, cam_offsets):
    self._sources = list(sources)
    self._prefixes = [f'{d}/'.encode() for d in datasets]
    self._pid_offsets = [int(o) for o in pid_offsets]
    self._cam_offsets = [int(o) for o in cam_offsets]
    self._ends = np.cumsum([len(s) for s in self._sources])

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def __getitem__(self, index: int) -> dict:
    if not -len(self) <= index < len(self):
      raise IndexError(f'index {index} out of range for {len(self)} records')
    index %= len(self)
    part = int(np.searchsorted(self._ends, index, side='right'))
    start = int(self._ends[part - 1]) if part else 0
    item = dict(self._sources[part][index - start])
    item['pid'] = item['pid'] + self._pid_offsets[part]
    item['camid'] = item['camid'] + self._cam_offsets[part]
    name = item['name']
    item['name'] = self._prefixes[part] + (name if isinstance(name, bytes) else name.encode())
    return item

  def __repr__(self) -> str:   # deterministic: grain checks it when restoring an iterator
    parts = ', '.join(f'({s!r}, pid+{p}, cam+{c})'
                      for s, p, c in zip(self._sources, self._pid_offsets, self._cam_offsets))
    return f'MergedSource([{parts}])'


def merge_reid_splits(splits: list[ReidSplit]) -> ReidSplit:
  """One split of all `splits` in order. Each part's pids and camids are shifted by the running sum
  of (largest pid + 1) and (largest camid + 1) of the parts before it, so no two datasets share an
  identity or a camera; the first part keeps its ids. Names (in `names` and in the items) are
  prefixed '<dataset>/'."""
  if not splits:
    raise ValueError('merge_reid_splits needs at least one split')
  pid_offsets, cam_offsets, pid_next, cam_next = [], [], 0, 0
  for part in splits:
    pid_offsets.append(pid_next)
    cam_offsets.append(cam_next)
    pid_next += int(part.pids.max()) + 1
    cam_next += int(part.camids.max()) + 1
  shifted = lambda field, offsets: np.concatenate(
      [getattr(s, field) + o for s, o in zip(splits, offsets)]).astype(np.int64)
  return ReidSplit(
      dataset='+'.join(s.dataset for s in splits), split='+'.join(s.split for s in splits),
      source=MergedSource([s.source for s in splits], [s.dataset for s in splits], pid_offsets,
                          cam_offsets),
      pids=shifted('pids', pid_offsets), camids=shifted('camids', cam_offsets),
      viewids=np.concatenate([s.viewids for s in splits]).astype(np.int64),
      names=[f'{s.dataset}/{n}' for s in splits for n in s.names])
