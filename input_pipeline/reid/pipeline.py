"""grain datasets of re-ID batches over `ReidSplit`s (see input_pipeline/reid/splits.py).

Inputs are objects with `source` (random access: `source[i]` -> {'image': encoded bytes, ...}) and
numpy `pids`, `camids`, `viewids` plus `names`, all known without decoding an image. Several
training splits are concatenated; record index r of a plan refers to that concatenation.

Every dataset element is one whole host-local batch (the planners of `sampling` decide the
records, the map below decodes and augments them), so worker processes keep the P x K structure.
Sharding over processes: every constructor's `batch_size` is this process's rows, so the global
batch has batch_size * shard_count rows; it is split into `shard_count` contiguous row blocks and
process `shard_index` gets block `shard_index`; the union of the blocks is the single-process
batch, augmentation included, because each record's random draws come from a generator keyed by
(seed, epoch, position in the global epoch), independent of process count and worker scheduling.
Iterators (`make_iterator`, `plan_iterator`) therefore resume exactly from `get_state()`.

Batches (B = this process's rows; ids as int32 so they go to devices as they are):
  train:  image f32 [B, H, W, 3] (normalised per the augment config), label (contiguous training
          label), pid, camid, viewid, index (record index in the concatenated training splits).
  pairs:  image_a, image_b, label_a, label_b, pid_a, pid_b, camid_a, camid_b, index_a, index_b,
          same (bool, 1 = same identity).
  eval:   image (and image_flip with flip=True), pid, camid, viewid, index (-1 on padding rows),
          valid (False on the rows that pad the last batch).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence

import grain
import numpy as np

from input_pipeline.images import decode_image
from input_pipeline.iterators import make_iterator  # noqa: F401  (the checkpointable iterator)
from input_pipeline.reid.sampling import (BatchPlan, EpochBatches, FixedPlanner,
                                          MultiGalleryPlanner, PairPlanner, PKPlanner, augment_rng)
from input_pipeline.reid.transforms import ReidAugment

ID_KEYS = ('pid', 'camid', 'viewid')


def label_map(pids) -> dict:
  """Contiguous training labels: the sorted distinct pids (or (group, pid) keys) -> 0, 1, ..."""
  keys = [tuple(int(v) for v in p) if np.ndim(p) else int(p) for p in pids]
  return {key: label for label, key in enumerate(sorted(set(keys)))}


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _check_split(split, what: str):
  missing = [a for a in ('source', 'pids', 'camids', 'viewids', 'names') if not hasattr(split, a)]
  if missing:
    raise TypeError(f'{what} must be a ReidSplit-like object; missing attributes {missing}')
  n = len(split.source)
  lengths = {a: len(getattr(split, a)) for a in ('pids', 'camids', 'viewids', 'names')}
  if any(v != n for v in lengths.values()):
    raise ValueError(f'{what}: source has {n} records but {lengths}')


@dataclasses.dataclass
class TrainRecords:
  """The concatenation of the training splits with their contiguous labels."""
  sources: list
  offsets: np.ndarray         # first record index of each split
  pids: np.ndarray
  camids: np.ndarray
  viewids: np.ndarray
  labels: np.ndarray
  names: list

  @classmethod
  def from_splits(cls, splits, separate_ids: bool = False) -> TrainRecords:
    """`separate_ids`: the splits come from different datasets (equal pids = different people)."""
    splits = list(splits) if isinstance(splits, (list, tuple)) else [splits]
    if not splits:
      raise ValueError('no training split given')
    for i, s in enumerate(splits):
      _check_split(s, f'training split {i}')
    pids = np.concatenate([np.asarray(s.pids, np.int64) for s in splits])
    group = np.repeat(np.arange(len(splits)) if separate_ids else np.zeros(len(splits), np.int64),
                      [len(s.source) for s in splits])
    keys = np.stack([group, pids], axis=1)
    mapping = label_map(keys)
    labels = np.array([mapping[(int(g), int(p))] for g, p in keys], np.int64)
    return cls(sources=[s.source for s in splits],
               offsets=np.cumsum([0] + [len(s.source) for s in splits])[:-1],
               pids=pids, labels=labels,
               camids=np.concatenate([np.asarray(s.camids, np.int64) for s in splits]),
               viewids=np.concatenate([np.asarray(s.viewids, np.int64) for s in splits]),
               names=[_text(n) for s in splits for n in s.names])

  def __len__(self) -> int:
    return len(self.pids)

  @property
  def num_classes(self) -> int:
    return int(self.labels.max()) + 1

  def image(self, index: int) -> np.ndarray:
    split = int(np.searchsorted(self.offsets, index, side='right')) - 1
    entry = self.sources[split][int(index - self.offsets[split])]
    return decode_image(entry['image'], self.names[index])


class LoadTrainBatch(grain.transforms.Map):
  """{'record', 'epoch', 'position'} -> augmented training batch."""

  def __init__(self, records: TrainRecords, augment: ReidAugment, seed: int):
    self._records, self._augment, self._seed = records, augment, seed

  def rows(self, records: np.ndarray, epoch: int, positions: np.ndarray, side: int = 0) -> dict:
    rec = self._records
    images = [self._augment.train(augment_rng(self._seed, epoch, int(p), side), rec.image(int(r)))
              for r, p in zip(records, positions)]
    return {'image': np.stack(images), 'label': rec.labels[records].astype(np.int32),
            **{k: getattr(rec, f'{k}s')[records].astype(np.int32) for k in ID_KEYS},
            'index': records.astype(np.int32)}

  def map(self, element: dict) -> dict:
    return self.rows(element['record'], element['epoch'], element['position'])


class LoadPairBatch(LoadTrainBatch):
  """{'record_a', 'record_b', 'same', 'epoch', 'position'} -> pair batch (own draws per side)."""

  def map(self, element: dict) -> dict:
    batch = {'same': np.asarray(element['same'], bool)}
    for side, name in enumerate('ab'):
      rows = self.rows(element[f'record_{name}'], element['epoch'], element['position'], side)
      batch.update({f'{k}_{name}': v for k, v in rows.items() if k != 'viewid'})
    return batch


def _augment(img_size, augment) -> ReidAugment:
  return augment if isinstance(augment, ReidAugment) else ReidAugment(img_size, augment)


def _global_batch(batch_size: int, shard_index: int, shard_count: int) -> int:
  """The rows of one global batch: `batch_size` (this process's rows) times the process count."""
  if batch_size < 1 or not 0 <= shard_index < shard_count:
    raise ValueError(f'need batch_size >= 1 (got {batch_size}) and 0 <= shard_index '
                     f'({shard_index}) < shard_count ({shard_count})')
  return batch_size * shard_count


def ids_per_batch(global_batch: int, num_instances: int) -> int:
  """P of a global P x K batch; the batch must hold whole groups of K = num_instances images."""
  if num_instances < 1 or global_batch % num_instances:
    raise ValueError(f'a global batch of {global_batch} rows cannot hold P groups of '
                     f'K = {num_instances} images: need K >= 1 dividing it')
  return global_batch // num_instances


def reid_train_dataset(splits, *, img_size: Sequence[int] = (256, 128), batch_size: int,
                       num_instances: int, augment=None, seed: int = 0, shard_index: int = 0,
                       shard_count: int = 1, plan: BatchPlan | None = None,
                       num_epochs: int | None = None, separate_ids: bool = False,
                       sampler: str = 'identity_chunk') -> grain.MapDataset:
  """Training batches of `batch_size` rows per process, endless unless num_epochs. The sampler
  plans global batches of P x K = batch_size * shard_count rows (K = num_instances, P derived) and
  each process takes its block: sampler 'identity_chunk' (PK) or 'multi_gallery' (KPM's probe +
  K - 1 gallery groups), see sampling.py; or exactly the batches of `plan` (one epoch) when a
  plan is given."""
  global_batch = _global_batch(batch_size, shard_index, shard_count)
  num_ids = ids_per_batch(global_batch, num_instances)
  records = TrainRecords.from_splits(splits, separate_ids)
  if plan is None:
    # Identities are the contiguous labels, so merged datasets with clashing pids stay apart.
    if sampler == 'identity_chunk':
      planner = PKPlanner(records.labels, num_ids, num_instances, seed)
    elif sampler == 'multi_gallery':
      planner = MultiGalleryPlanner(records.labels, records.camids, num_ids, num_instances, seed)
    else:
      raise ValueError(f"sampler must be 'identity_chunk' or 'multi_gallery', got {sampler!r}")
    first, epochs = 0, num_epochs
  else:
    plan.check(len(records), global_batch)
    planner, first, epochs = FixedPlanner(plan), plan.epoch, 1
  batches = EpochBatches(planner, global_batch, shard_index, shard_count, epochs, first)
  return batches.map(LoadTrainBatch(records, _augment(img_size, augment), seed))


def reid_pair_dataset(splits, *, img_size: Sequence[int] = (384, 128), batch_size: int,
                      ratio: Sequence[int] = (1, 3), augment=None, seed: int = 0,
                      shard_index: int = 0, shard_count: int = 1, num_epochs: int | None = None,
                      separate_ids: bool = False) -> grain.MapDataset:
  """Pair batches of `batch_size` rows per process; each global batch of batch_size * shard_count
  pairs holds exactly pos / (pos + neg) of them positive."""
  global_batch = _global_batch(batch_size, shard_index, shard_count)
  records = TrainRecords.from_splits(splits, separate_ids)
  # Identity keys for pairing are the contiguous labels, so separate datasets never pair up by pid.
  planner = PairPlanner(records.labels, records.camids, global_batch, tuple(ratio), seed)
  batches = EpochBatches(planner, global_batch, shard_index, shard_count, num_epochs)
  return batches.map(LoadPairBatch(records, _augment(img_size, augment), seed))


class LoadEvalBatch(grain.transforms.Map):
  """Step -> this process's rows of global batch `step`, in record order, padded past the end."""

  def __init__(self, split, augment: ReidAugment, local: int, offset: int, global_batch: int,
               flip: bool):
    self._source, self._names = split.source, [_text(n) for n in split.names]
    self._ids = {k: np.asarray(getattr(split, f'{k}s'), np.int64) for k in ID_KEYS}
    self._augment, self._flip = augment, flip
    self._local, self._offset, self._global = local, offset, global_batch

  def map(self, step: int) -> dict:
    index = step * self._global + self._offset + np.arange(self._local)
    valid = index < len(self._names)
    h, w = self._augment.size
    images = np.zeros((self._local, h, w, 3), np.float32)
    for row in np.flatnonzero(valid):
      i = int(index[row])
      images[row] = self._augment.test(decode_image(self._source[i]['image'], self._names[i]))
    batch = {'image': images}
    if self._flip:
      batch['image_flip'] = np.ascontiguousarray(images[:, :, ::-1])
    safe = np.where(valid, index, 0)
    for k, v in self._ids.items():
      batch[k] = np.where(valid, v[safe], -1).astype(np.int32)
    batch['index'] = np.where(valid, index, -1).astype(np.int32)
    batch['valid'] = valid
    return batch


def reid_eval_dataset(split, img_size: Sequence[int] = (256, 128), batch_size: int = 128,
                      shard_index: int = 0, shard_count: int = 1, flip: bool = False,
                      augment=None) -> grain.MapDataset:
  """One ordered pass over `split` in global batches of batch_size * shard_count rows (this process
  gets its batch_size rows of each); the last batch is padded with valid=False rows. `augment`
  supplies the recipe's test resize and normalisation."""
  _check_split(split, 'evaluation split')
  global_batch = _global_batch(batch_size, shard_index, shard_count)
  steps = -(-len(split.source) // global_batch)
  if steps == 0:
    raise ValueError('evaluation split is empty')
  load = LoadEvalBatch(split, _augment(img_size, augment), batch_size, shard_index * batch_size,
                       global_batch, flip)
  return grain.MapDataset.range(steps).map(load)


class PlanIterator(grain.DatasetIterator):
  """Endless iterator over epochs whose batches are chosen by `next_plan(epoch) -> BatchPlan`.

  `build(plan)` makes the one-epoch dataset (e.g. `reid_train_dataset(..., plan=plan)`). The state
  holds the current plan and the position inside it, so restoring finishes the epoch with the same
  batches; `next_plan` is called again only when an epoch is used up. States are JSON-compatible
  dicts, so grain's orbax CheckpointHandler saves them with the train state.
  """

  def __init__(self, build: Callable[[BatchPlan], grain.MapDataset],
               next_plan: Callable[[int], BatchPlan], num_workers: int = 0, first_epoch: int = 0):
    super().__init__()
    self._build, self._next_plan, self._workers = build, next_plan, num_workers
    self._epoch, self._plan, self._inner = first_epoch, None, None

  @property
  def plan(self) -> BatchPlan | None:
    return self._plan

  def _start(self, plan: BatchPlan):
    if not isinstance(plan, BatchPlan) or plan.epoch != self._epoch:
      raise ValueError(f'next_plan({self._epoch}) must return a BatchPlan of epoch {self._epoch}, '
                       f'got {plan!r:.80}')
    self._close_inner()
    self._plan, self._inner = plan, make_iterator(self._build(plan), self._workers)

  def __next__(self) -> dict:
    while True:
      if self._inner is None:
        self._start(self._next_plan(self._epoch))
      try:
        return next(self._inner)
      except StopIteration:
        self._close_inner()
        self._plan, self._epoch = None, self._epoch + 1

  def get_state(self) -> dict:
    return {'epoch': self._epoch, 'plan': None if self._plan is None else self._plan.to_state(),
            'inner': None if self._inner is None else self._inner.get_state()}

  def set_state(self, state) -> None:
    if isinstance(state, (bytes, str)):
      state = json.loads(state)
    self._close_inner()
    self._epoch, self._plan = int(state['epoch']), None
    if state['plan'] is not None:
      self._start(BatchPlan.from_state(state['plan']))
      self._inner.set_state(state['inner'])

  def start_prefetch(self) -> None:
    if self._inner is not None:
      self._inner.start_prefetch()

  def _close_inner(self):
    if self._inner is not None:
      close = getattr(self._inner, 'close', None)
      if close is not None:
        close()
      self._inner = None

  def close(self) -> None:
    self._close_inner()
    super().close()


def plan_iterator(build, next_plan, num_workers: int = 0, first_epoch: int = 0) -> PlanIterator:
  return PlanIterator(build, next_plan, num_workers, first_epoch)
