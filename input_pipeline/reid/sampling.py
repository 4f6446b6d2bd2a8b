"""Re-ID batch sampling: identity-chunk (PK) epochs, probe pairs with a fixed positive ratio, and
per-epoch batch plans supplied from outside (e.g. a model-dependent graph sampler).

Every sampler here produces, per epoch, a PLAN: arrays whose first two axes are [batch, row of the
global batch], holding record indices into the training records. A plan is a pure function of
(seed, epoch) (or is given explicitly), so any position in the stream can be recomputed, which is
what makes resuming exact and worker processes harmless. `EpochBatches` turns planners into a grain
MapDataset whose element i is one whole (host-local) batch, so worker processes cannot break the
batch structure (grain workers each take whole elements).

Identity-chunk epoch (the PK rule of BoT / TransReID / NFormer's `RandomIdentitySampler`):
  1. for every identity: take its image indices; if it has fewer than K, draw K of them WITH
     replacement; shuffle; cut into consecutive chunks of K, dropping a remainder (< K images);
  2. while at least P identities still have a chunk: pick P distinct ones uniformly among them, take
     each one's next chunk (in that pick order) -> one batch of P x K, identities contiguous;
     identities whose chunks are used up leave the pool;
  3. the epoch ends when fewer than P identities have chunks left (their chunks are discarded).
  The number of batches therefore varies a little from epoch to epoch (as in the official code,
  whose `__len__` is only an estimate, see `nominal_pk_batches`).

Multi-gallery groups (KPM's released `RandomMultipleGallerySampler`): per epoch every image, in a
random permutation, heads a group of K: the probe, then K - 1 other images of its identity from
other cameras (all of its other images when no other camera has one), drawn without replacement
when the pool holds at least K images and with replacement otherwise; P consecutive groups form a
batch, the remainder is dropped. Probes of identities with a single image are skipped (the official
sampler crashes on them).

Probe pairs (KPM, the paper's pos:neg ratio per mini-batch, e.g. 1:3 on Market-1501): per epoch one
permutation of the identities' images with at least one other image (positive probes) and one of
all images (negative probes); batch b takes the next n_pos positive and n_neg negative probes,
n_pos / n_neg = pos / neg exactly. A positive partner is another image of the probe's identity,
from another camera when one exists (as KPM's sampler prefers); a negative partner is uniform over
the images of all other identities. Rows of a batch are shuffled.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
from collections.abc import Callable, Mapping

import grain
import numpy as np

PLAN_STREAM = 0x706C616E      # distinct SeedSequence prefixes for plans and augmentation draws
AUG_STREAM = 0x61756720


def plan_rng(seed: int, epoch: int) -> np.random.Generator:
  return np.random.default_rng([PLAN_STREAM, seed, epoch])


def augment_rng(seed: int, epoch: int, position: int, side: int = 0) -> np.random.Generator:
  """Per-record generator keyed by its place in the global stream (not by process or worker)."""
  return np.random.default_rng([AUG_STREAM, seed, epoch, position, side])


def group_by_identity(pids: np.ndarray) -> list[np.ndarray]:
  """Record indices of each identity, identities in ascending pid order, records ascending."""
  pids = np.asarray(pids)
  order = np.argsort(pids, kind='stable')
  starts = np.flatnonzero(np.r_[True, pids[order][1:] != pids[order][:-1]])
  return np.split(order, starts[1:])


# ----------------------------------------------------------------------------- PK

def identity_chunks(rng: np.random.Generator, groups: list[np.ndarray], k: int) -> list[np.ndarray]:
  """Step 1 of the identity-chunk epoch: per identity an array [num_chunks, K] (num_chunks >= 1)."""
  chunks = []
  for idx in groups:
    if len(idx) < k:
      idx = rng.choice(idx, k, replace=True)
    idx = rng.permutation(idx)
    chunks.append(idx[:len(idx) // k * k].reshape(-1, k))
  return chunks


def identity_chunk_epoch(pids: np.ndarray, num_ids: int, num_instances: int, seed: int,
                         epoch: int) -> np.ndarray:
  """One PK epoch as [num_batches, P * K] record indices (see the module doc for the rule)."""
  groups = group_by_identity(pids)
  if len(groups) < num_ids:
    raise ValueError(f'PK sampling needs at least P={num_ids} identities, the training data has '
                     f'{len(groups)}')
  rng = plan_rng(seed, epoch)
  chunks = identity_chunks(rng, groups, num_instances)
  left = np.array([len(c) for c in chunks])
  used = np.zeros(len(chunks), np.int64)
  pool = np.arange(len(chunks))
  batches = []
  while len(pool) >= num_ids:
    picked = pool[rng.choice(len(pool), num_ids, replace=False)]
    batches.append(np.concatenate([chunks[i][used[i]] for i in picked]))
    used[picked] += 1
    pool = pool[used[pool] < left[pool]]
  return np.stack(batches).astype(np.int64)


def nominal_pk_batches(pids: np.ndarray, num_ids: int, num_instances: int) -> int:
  """The official sampler's length estimate in batches: sum over ids of max(n, K) rounded down to
  a multiple of K, divided by P * K. Epochs hold at most this many batches."""
  counts = np.array([len(g) for g in group_by_identity(pids)])
  images = np.maximum(counts, num_instances) // num_instances * num_instances
  return int(images.sum()) // (num_ids * num_instances)


@dataclasses.dataclass(frozen=True)
class PKPlanner:
  """epoch -> {'record': [num_batches, P * K]} by the identity-chunk rule."""
  pids: np.ndarray
  num_ids: int
  num_instances: int
  seed: int

  def __call__(self, epoch: int) -> dict[str, np.ndarray]:
    return {'record': identity_chunk_epoch(self.pids, self.num_ids, self.num_instances, self.seed,
                                           epoch)}


# ----------------------------------------------------------------------------- multi-gallery

def _other_images(probe: int, group: np.ndarray, camids: np.ndarray) -> np.ndarray:
  """The probe's identity's other images from other cameras, or all its other images if none."""
  others = group[group != probe]
  other_cams = others[camids[others] != camids[probe]]
  return other_cams if len(other_cams) else others


def multi_gallery_epoch(pids: np.ndarray, camids: np.ndarray, num_groups: int, num_instances: int,
                        seed: int, epoch: int) -> np.ndarray:
  """One epoch of probe + (K - 1) gallery groups as [num_batches, P * K] record indices."""
  pids, camids = np.asarray(pids), np.asarray(camids)
  groups = group_by_identity(pids)
  group_of = np.empty(len(pids), np.int64)
  for g, idx in enumerate(groups):
    group_of[idx] = g
  rng = plan_rng(seed, epoch)
  probes = rng.permutation(len(pids))
  probes = probes[np.array([len(groups[g]) > 1 for g in group_of[probes]], bool)]
  num_batches = len(probes) // num_groups
  if num_batches == 0:
    raise ValueError(f'{len(probes)} images with a same-identity partner cannot fill one batch of '
                     f'{num_groups} groups')
  rows = []
  for probe in probes[:num_batches * num_groups]:
    pool = _other_images(int(probe), groups[group_of[probe]], camids)
    gallery = rng.choice(pool, num_instances - 1, replace=len(pool) < num_instances)
    rows.append(np.r_[probe, gallery])
  return np.asarray(rows, np.int64).reshape(num_batches, num_groups * num_instances)


@dataclasses.dataclass(frozen=True)
class MultiGalleryPlanner:
  pids: np.ndarray
  camids: np.ndarray
  num_groups: int
  num_instances: int
  seed: int

  def __call__(self, epoch: int) -> dict[str, np.ndarray]:
    return {'record': multi_gallery_epoch(self.pids, self.camids, self.num_groups,
                                          self.num_instances, self.seed, epoch)}


# ----------------------------------------------------------------------------- pairs

def pair_split(batch_size: int, ratio) -> tuple[int, int]:
  """(positives, negatives) per batch for a pos:neg ratio such as (1, 3); must divide exactly."""
  pos, neg = (int(r) for r in ratio)
  if pos < 0 or neg < 0 or pos + neg == 0 or batch_size * pos % (pos + neg):
    raise ValueError(f'batch_size {batch_size} cannot hold pos:neg = {pos}:{neg} exactly; use a '
                     f'batch size that is a multiple of {pos + neg}')
  n_pos = batch_size * pos // (pos + neg)
  return n_pos, batch_size - n_pos


def _positive_partner(rng, probe: int, group: np.ndarray, camids: np.ndarray) -> int:
  pool = _other_images(probe, group, camids)
  return int(pool[rng.integers(len(pool))])


def _negative_partners(rng, probes: np.ndarray, order: np.ndarray, start: np.ndarray,
                       stop: np.ndarray) -> np.ndarray:
  """Uniform over records of other identities: skip the probe's block in the pid-sorted order."""
  n = len(order)
  block = stop[probes] - start[probes]
  draw = (rng.random(len(probes)) * (n - block)).astype(np.int64)
  draw = np.where(draw >= start[probes], draw + block, draw)
  return order[draw]


def probe_pair_epoch(pids: np.ndarray, camids: np.ndarray, batch_size: int, ratio, seed: int,
                     epoch: int) -> dict[str, np.ndarray]:
  """One pair epoch: {'record_a', 'record_b' (int64), 'same' (bool)}, each [batches, batch_size]."""
  pids, camids = np.asarray(pids), np.asarray(camids)
  n_pos, n_neg = pair_split(batch_size, ratio)
  groups = group_by_identity(pids)
  if len(groups) < 2 and n_neg:
    raise ValueError('negative pairs need at least two identities')
  order = np.concatenate(groups)
  sizes = np.array([len(g) for g in groups])
  group_of = np.empty(len(pids), np.int64)
  group_of[order] = np.repeat(np.arange(len(groups)), sizes)
  start = np.r_[0, np.cumsum(sizes)[:-1]][group_of]
  stop = start + sizes[group_of]
  eligible = np.flatnonzero(sizes[group_of] > 1)
  limits = [len(eligible) // n_pos if n_pos else sys.maxsize,
            len(pids) // n_neg if n_neg else sys.maxsize]
  num_batches = min(limits)
  if num_batches == 0:
    raise ValueError(f'{len(pids)} images ({len(eligible)} with a positive partner) cannot fill '
                     f'one batch of {n_pos} positive + {n_neg} negative pairs')
  rng = plan_rng(seed, epoch)
  pos_probes = rng.permutation(eligible)[:num_batches * n_pos].reshape(num_batches, n_pos)
  neg_probes = rng.permutation(len(pids))[:num_batches * n_neg].reshape(num_batches, n_neg)
  pos_partners = np.array([[_positive_partner(rng, p, groups[group_of[p]], camids) for p in row]
                           for row in pos_probes], np.int64).reshape(num_batches, n_pos)
  neg_partners = _negative_partners(rng, neg_probes.ravel(), order, start, stop).reshape(
      num_batches, n_neg)
  a = np.concatenate([pos_probes, neg_probes], axis=1)
  b = np.concatenate([pos_partners, neg_partners], axis=1)
  same = np.concatenate([np.ones((num_batches, n_pos), bool), np.zeros((num_batches, n_neg), bool)],
                        axis=1)
  shuffle = np.argsort(rng.random((num_batches, batch_size)), axis=1)
  take = lambda x: np.take_along_axis(x, shuffle, axis=1)
  return {'record_a': take(a).astype(np.int64), 'record_b': take(b).astype(np.int64),
          'same': take(same)}


@dataclasses.dataclass(frozen=True)
class PairPlanner:
  pids: np.ndarray
  camids: np.ndarray
  batch_size: int
  ratio: tuple[int, int]
  seed: int

  def __call__(self, epoch: int) -> dict[str, np.ndarray]:
    return probe_pair_epoch(self.pids, self.camids, self.batch_size, self.ratio, self.seed, epoch)


# ----------------------------------------------------------------------------- external plans

@dataclasses.dataclass(frozen=True)
class BatchPlan:
  """The batches of one epoch chosen outside the pipeline (e.g. by a model from its features).

  `batches` [num_batches, global_batch] holds record indices into the training records (the
  concatenation of the training splits, in the order given). The plan is saved inside the
  iterator state (`plan_iterator`), so a resumed run finishes the epoch with the same batches
  without asking the model again.
  """
  epoch: int
  batches: np.ndarray

  def __post_init__(self):
    batches = np.asarray(self.batches)
    if batches.ndim != 2 or batches.shape[0] == 0 or not np.issubdtype(batches.dtype, np.integer):
      raise ValueError(f'a BatchPlan needs integer batches of shape [num_batches >= 1, '
                       f'global_batch], got {batches.dtype} {batches.shape}')
    object.__setattr__(self, 'batches', batches.astype(np.int64))

  def check(self, num_records: int, global_batch: int) -> None:
    if self.batches.shape[1] != global_batch:
      raise ValueError(f'plan batches have {self.batches.shape[1]} rows, the global batch is '
                       f'{global_batch}')
    bad = (self.batches < 0) | (self.batches >= num_records)
    if bad.any():
      raise ValueError(f'plan for epoch {self.epoch} holds record indices outside '
                       f'[0, {num_records}): {np.unique(self.batches[bad])[:10].tolist()}')

  def to_state(self) -> dict:
    return {'epoch': int(self.epoch), 'batches': self.batches.tolist()}

  @classmethod
  def from_state(cls, state: Mapping) -> BatchPlan:
    return cls(int(state['epoch']), np.asarray(state['batches'], np.int64))


@dataclasses.dataclass(frozen=True)
class FixedPlanner:
  """Serves one BatchPlan as its epoch."""
  plan: BatchPlan

  def __call__(self, epoch: int) -> dict[str, np.ndarray]:
    if epoch != self.plan.epoch:
      raise IndexError(f'this dataset holds the plan of epoch {self.plan.epoch}, not epoch {epoch}')
    return {'record': self.plan.batches}


# ----------------------------------------------------------------------------- grain dataset

class EpochBatches(grain.MapDataset):
  """Element i = (this process's rows of) global batch i of the stream epoch0, epoch0 + 1, ...

  Each element is {key: plan[key][step, rows] for the plan's keys, 'epoch': int,
  'position': int64 [rows]} where rows = [shard_index * b, (shard_index + 1) * b), b = global /
  shard_count, and position = step * global + row (the record's place in the epoch, used to key
  augmentation). Epochs may differ in length; their lengths are computed lazily and cached.
  """

  def __init__(self, planner: Callable[[int], dict], global_batch: int, shard_index: int = 0,
               shard_count: int = 1, num_epochs: int | None = None, first_epoch: int = 0):
    super().__init__()
    if not 0 <= shard_index < shard_count or global_batch % shard_count:
      raise ValueError(f'the global batch of {global_batch} rows must split evenly over '
                       f'{shard_count} processes, with 0 <= shard_index ({shard_index}) < '
                       f'shard_count')
    self._planner, self._global = planner, global_batch
    self._local = global_batch // shard_count
    self._offset = shard_index * self._local
    self._num_epochs, self._first = num_epochs, first_epoch
    self._reset_cache()

  def _reset_cache(self):
    self._starts = [0]                    # stream index of each computed epoch's first batch
    self._plans: dict[int, dict] = {}
    self._lock = threading.Lock()

  def __getstate__(self):
    state = dict(self.__dict__)
    for key in ('_starts', '_plans', '_lock'):
      state.pop(key)
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._reset_cache()

  def __len__(self) -> int:
    if self._num_epochs is None:
      return sys.maxsize
    with self._lock:
      self._extend_to(self._num_epochs)
      return self._starts[self._num_epochs]

  def __str__(self) -> str:
    return f'EpochBatches({type(self._planner).__name__}, global_batch={self._global})'

  def plan(self, epoch: int) -> dict[str, np.ndarray]:
    """The global plan of an epoch counted from the first one (0-based)."""
    plans = self._plans
    if epoch not in plans:
      plan = self._planner(self._first + epoch)
      rows = {k: np.asarray(v).shape[:2] for k, v in plan.items()}
      if any(r != (len(next(iter(plan.values()))), self._global) for r in rows.values()):
        raise ValueError(f'planner returned arrays of shapes {rows}, expected [batches, '
                         f'{self._global}]')
      plans = {e: p for e, p in plans.items() if e >= epoch - 1}   # keep a small window
      plans[epoch] = plan
      self._plans = plans
    return plans[epoch]

  def _extend_to(self, epoch: int):
    while len(self._starts) <= epoch:
      e = len(self._starts) - 1
      self._starts.append(self._starts[-1] + len(next(iter(self.plan(e).values()))))

  def _locate(self, index: int) -> tuple[int, int]:
    starts = self._starts
    while starts[-1] <= index:
      self._extend_to(len(starts))
    epoch = int(np.searchsorted(starts, index, side='right')) - 1
    return epoch, index - starts[epoch]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    if index < 0 or index >= len(self):
      raise IndexError(f'batch {index} is outside the stream of {len(self)} batches')
    with self._lock:
      epoch, step = self._locate(index)
      plan = self.plan(epoch)
    rows = slice(self._offset, self._offset + self._local)
    element = {k: np.asarray(v[step, rows]) for k, v in plan.items()}
    element['epoch'] = self._first + epoch
    element['position'] = step * self._global + np.arange(self._offset, self._offset + self._local)
    return element
