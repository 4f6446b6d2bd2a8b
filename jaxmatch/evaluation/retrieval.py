"""Ranking metrics of re-identification: CMC (first match), AP, INP per query, on the device in query blocks.

The Market-1501 / MSMT17 protocol as torchreid, TransReID, NFormer and fast-reid implement it (they agree
bit for bit): rank the gallery by ascending distance; drop gallery entries with the query's pid AND
camera; matches are the remaining entries with the query's pid; a query without a remaining match is
skipped (not counted as 0). Ids get no special treatment: Market's junk (-1) and distractors (0) are
ordinary non-matching entries (the dataset readers drop junk images, as the official loaders do).
  CMC[r-1] = fraction of valid queries whose first match is within the first r kept entries
  AP       = mean over matches of (matches so far / kept rank) at each match
  INP      = matches / kept rank of the last match (fast-reid)
CUHK03-NP uses this protocol too. The classic CUHK03 protocol (torchreid `eval_cuhk03`) keeps AP but
takes CMC as the mean over 10 draws of one random gallery image per identity; its draws need a host
random generator, so that part runs on the host over rankings computed on the device.

On the device nothing is sorted along the gallery axis (a sort of every query row dominated evaluation
time): the ranking order is ascending distance with exact ties broken by gallery index (a stable sort's
order, where numpy's unstable argsort is unspecified), and per query the device returns only integers,
the kept rank of every match in that order (rank_statistics). The host forms CMC exactly and AP / INP in
float64 from those ranks, as the references do.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxmatch.evaluation import distances as dist_lib
from jaxmatch import parallel

CUHK03_REPEATS = 10
_REMOVED, _KEPT, _MATCH = 0, 1, 2


def encode_ids(query, gallery, what: str) -> tuple[np.ndarray, np.ndarray]:
  """Raw ids of any kind (ints, strings) -> int32 codes shared by query and gallery."""
  query, gallery = np.asarray(query), np.asarray(gallery)
  if query.ndim != 1 or gallery.ndim != 1:
    raise ValueError(f'{what} must be 1-D arrays; got query {query.shape} and gallery {gallery.shape}')
  _, codes = np.unique(np.concatenate([query, gallery]), return_inverse=True)
  codes = codes.astype(np.int32)
  return codes[:query.shape[0]], codes[query.shape[0]:]


def _codes(dist: jax.Array, q_pid, q_cam, g_pid, g_cam) -> jax.Array:
  match = g_pid[None, :] == q_pid[:, None]
  removed = match & (g_cam[None, :] == q_cam[:, None])
  return jnp.where(removed, _REMOVED, jnp.where(match, _MATCH, _KEPT)).astype(jnp.int8)


def _matches_before(match_d: jax.Array, match_idx: jax.Array, dist: jax.Array) -> jax.Array:
  """[b, G]: how many of the (distance, index)-sorted matches precede each gallery entry in the stable
  order. A binary search on the distance, then the matches at exactly the same distance with a smaller
  gallery index (a loop that usually ends at once: exact ties are rare)."""
  m = match_d.shape[1]
  before = jax.vmap(lambda keys, values: jnp.searchsorted(keys, values, side='left'))(match_d, dist)
  before = before.astype(jnp.int32)
  index = jnp.arange(dist.shape[1], dtype=jnp.int32)[None, :]

  def tied_at(offset):
    j = jnp.minimum(before + offset, m - 1)
    tied = (before + offset < m) & (jnp.take_along_axis(match_d, j, axis=1) == dist)
    return tied, tied & (jnp.take_along_axis(match_idx, j, axis=1) < index)

  def body(state):
    offset, extra, _ = state
    tied, earlier = tied_at(offset)
    return offset + 1, extra + earlier, jnp.any(tied)

  _, extra, _ = jax.lax.while_loop(lambda state: state[2], body,
                                   (jnp.int32(0), jnp.zeros_like(before), jnp.bool_(True)))
  return before + extra


@functools.lru_cache(maxsize=None)
def rank_statistics_fn(max_matches: int) -> Callable:
  """rank_statistics for at most `max_matches` matches per query (a static shape)."""
  def fn(dist, q_pid, q_cam, g_pid, g_cam):
    return rank_statistics(dist, q_pid, q_cam, g_pid, g_cam, max_matches)
  return fn


def rank_statistics(dist: jax.Array, q_pid, q_cam, g_pid, g_cam, max_matches: int) -> dict[str, jax.Array]:
  """Per query row of dist [b, G]: matches and kept count (int32), and the kept rank (1-based) of every
  match in ranking order, [b, max_matches] int32 (0 past the query's matches).

  No sort of the gallery: the matches are the max_matches smallest (distance, index) keys among the
  query's matches (top_k keeps the lower index first on equal values), every other kept entry is placed
  among them by binary search, and a histogram of those places gives the non-matches before each match.
  """
  code = _codes(dist, q_pid, q_cam, g_pid, g_cam)
  hit, kept = code == _MATCH, code != _REMOVED
  neg, match_idx = jax.lax.top_k(jnp.where(hit, -dist, -jnp.inf), max_matches)
  match_d = -neg                                             # +inf past the query's matches
  place = _matches_before(match_d, match_idx.astype(jnp.int32), dist)
  b = dist.shape[0]
  others = jnp.zeros((b, max_matches + 1), jnp.int32).at[jnp.arange(b)[:, None], place].add(
      (kept & ~hit).astype(jnp.int32))
  num_matches = jnp.sum(hit, axis=1, dtype=jnp.int32)
  order = jnp.arange(max_matches, dtype=jnp.int32)[None, :]
  ranks = jnp.cumsum(others, axis=1, dtype=jnp.int32)[:, :max_matches] + order + 1
  return {
      'num_matches': num_matches,
      'num_kept': jnp.sum(kept, axis=1, dtype=jnp.int32),
      'match_ranks': jnp.where(order < num_matches[:, None], ranks, 0),
  }


def max_matches_per_query(q_ids, g_ids) -> int:
  """The most gallery matches (same pid, other camera) any query has: the static width of match_ranks."""
  (qp, qc), (gp, gc) = q_ids, g_ids
  num_ids = int(max(qp.max(initial=0), gp.max(initial=0))) + 1
  num_cams = int(max(qc.max(initial=0), gc.max(initial=0))) + 1
  same_pid = np.bincount(gp, minlength=num_ids)[qp]
  pair = np.bincount(gp.astype(np.int64) * num_cams + gc, minlength=num_ids * num_cams)
  same_cam = pair[qp.astype(np.int64) * num_cams + qc]
  return max(int((same_pid - same_cam).max(initial=0)), 1)


def kept_order(dist: jax.Array, q_pid, q_cam, g_pid, g_cam) -> jax.Array:
  """[b, G] gallery indices by ascending distance (stable), removed entries replaced by -1."""
  order = jnp.broadcast_to(jnp.arange(dist.shape[1], dtype=jnp.int32), dist.shape)
  _, code, order = jax.lax.sort((dist, _codes(dist, q_pid, q_cam, g_pid, g_cam), order), dimension=1,
                                is_stable=True, num_keys=1)
  return jnp.where(code == _REMOVED, -1, order)


@functools.lru_cache(maxsize=None)
def _query_kernel(distance_fn: Callable, num_dist_rows: int, num_dist_shared: int, what: Callable):
  """what(distance rows -> [b, G], query ids, gallery ids) fused after the distance computation."""
  def kernel(*args):
    dist_rows = args[:num_dist_rows]
    q_pid, q_cam = args[num_dist_rows:num_dist_rows + 2]
    dist_shared = args[num_dist_rows + 2:num_dist_rows + 2 + num_dist_shared]
    g_pid, g_cam = args[-2:]
    return what(distance_fn(*dist_rows, *dist_shared), q_pid, q_cam, g_pid, g_cam)
  return kernel


def _per_query(what: Callable, dist: dist_lib.BlockedDistance, q_ids, g_ids, *, block_size: int,
               mesh: Mesh | None):
  kernel = _query_kernel(dist.fn, len(dist.rows), len(dist.shared), what)
  rows = (*dist.rows, *q_ids)
  shared = (*dist.shared, *g_ids)
  return dist_lib.map_row_blocks(kernel, rows, shared, block_size=block_size, mesh=mesh)


def query_statistics(dist: dist_lib.BlockedDistance, q_pids, g_pids, q_camids, g_camids, *, block_size: int,
                     mesh: Mesh | None = None) -> dict[str, np.ndarray]:
  """rank_statistics for every query, in blocks of `block_size` query rows."""
  q_ids, g_ids = _ids(dist, q_pids, g_pids, q_camids, g_camids)
  what = rank_statistics_fn(max_matches_per_query(q_ids, g_ids))
  pieces = [(stop - start, parallel.fetch(out)) for start, stop, out in
            _per_query(what, dist, q_ids, g_ids, block_size=block_size, mesh=mesh)]
  return {k: np.concatenate([p[k][:n] for n, p in pieces]) for k in pieces[0][1]}


def _ids(dist: dist_lib.BlockedDistance, q_pids, g_pids, q_camids, g_camids):
  qp, gp = encode_ids(q_pids, g_pids, 'pids')
  qc, gc = encode_ids(q_camids, g_camids, 'camids')
  if qp.shape != qc.shape or qp.shape[0] != dist.num_rows:
    raise ValueError(f'{dist.num_rows} queries but {qp.shape[0]} query pids and {qc.shape[0]} query camids')
  if gp.shape != gc.shape or gp.shape[0] != dist.num_columns:
    raise ValueError(f'{dist.num_columns} gallery entries but {gp.shape[0]} gallery pids and '
                     f'{gc.shape[0]} gallery camids')
  return (qp, qc), (gp, gc)


def market_metrics(stats: dict[str, np.ndarray], max_rank: int) -> dict:
  """Aggregates query_statistics as the reference implementations do: CMC in float32, AP / INP from the
  integer match ranks in float64 (torchreid: AP = mean over matches of matches so far / rank)."""
  num_matches, ranks = stats['num_matches'], stats['match_ranks']
  valid = num_matches > 0
  num_valid = int(valid.sum())
  if num_valid == 0:
    raise ValueError('no query has a gallery match left after removing same-pid same-camera entries; '
                     'check that query and gallery ids come from the same dataset split')
  first_rank = ranks[:, 0]
  last_rank = np.take_along_axis(ranks, np.maximum(num_matches - 1, 0)[:, None], axis=1)[:, 0]
  counts = (first_rank[valid][:, None] <= np.arange(1, max_rank + 1)[None, :]).sum(axis=0)
  # float32 counts / float32 count: the references' float32 sum of 0/1 rows divided by num_valid_q.
  cmc = counts.astype(np.float32) / np.float32(num_valid)
  so_far = np.arange(1, ranks.shape[1] + 1, dtype=np.float64)[None, :]
  precision = np.where(ranks > 0, so_far / np.maximum(ranks, 1), 0.0)
  ap = np.where(valid, precision.sum(axis=1) / np.maximum(num_matches, 1), np.nan)
  inp = np.where(valid, num_matches / np.maximum(last_rank, 1), np.nan)
  return {
      'cmc': cmc,
      'mAP': float(np.mean(ap[valid])),
      'mINP': float(np.mean(inp[valid])),
      'num_valid_queries': num_valid,
      'valid': valid,
      'per_query_ap': ap,
      'per_query_inp': inp,
      'first_match_rank': np.where(valid, first_rank, 0).astype(np.int64),
  }


def per_query_cmc(first_match_rank: np.ndarray, max_rank: int) -> np.ndarray:
  """[Q, max_rank] float32 cumulative match rows, NaN rows for queries without a match (rank 0)."""
  ranks = np.arange(1, max_rank + 1)
  rows = (first_match_rank[:, None] <= ranks[None, :]).astype(np.float32)
  rows[first_match_rank == 0] = np.nan
  return rows


def cuhk03_classic_cmc(dist: dist_lib.BlockedDistance, q_pids, g_pids, q_camids, g_camids, *, rng,
                       max_rank: int, block_size: int, mesh: Mesh | None = None) -> np.ndarray:
  """torchreid eval_cuhk03's CMC: per valid query, 10 draws of one gallery image per identity.

  `rng` needs a `choice(candidates)` method (np.random.RandomState / Generator): it is called once per
  (valid query, repeat, gallery identity in order of first appearance in the query's kept ranking), with
  the kept-ranking positions of that identity, exactly as torchreid calls np.random.choice. A
  RandomState(0) reproduces torchreid after np.random.seed(0).
  """
  q_ids, g_ids = _ids(dist, q_pids, g_pids, q_camids, g_camids)
  g_raw = np.asarray(g_pids)
  q_raw = np.asarray(q_pids)
  rows = []
  for start, stop, order in _per_query(kept_order, dist, q_ids, g_ids, block_size=block_size, mesh=mesh):
    order = parallel.fetch(order)
    for q in range(start, stop):
      row = _classic_query_cmc(order[q - start], g_raw, q_raw[q], rng, max_rank)
      if row is not None:
        rows.append(row)
  if not rows:
    raise ValueError('no query has a gallery match left after removing same-pid same-camera entries')
  # Sequential float32 sum over queries, then / num_valid, as numpy reduces axis 0 in torchreid.
  return np.asarray(rows, np.float32).sum(axis=0) / np.float32(len(rows))


def _classic_query_cmc(order: np.ndarray, g_pids: np.ndarray, q_pid, rng, max_rank: int):
  kept_pids = g_pids[order[order >= 0]]
  raw = kept_pids == q_pid
  if not raw.any():
    return None
  groups: dict = {}
  for position, pid in enumerate(kept_pids.tolist()):
    groups.setdefault(pid, []).append(position)
  total = np.zeros(min(max_rank, len(groups)), np.float32)
  for _ in range(CUHK03_REPEATS):
    mask = np.zeros(len(raw), bool)
    for positions in groups.values():
      mask[rng.choice(positions)] = True
    cmc = np.minimum(np.cumsum(raw[mask]), 1)
    total += cmc[:max_rank].astype(np.float32)
  total /= CUHK03_REPEATS
  return _extend(total, max_rank)


def _extend(row: np.ndarray, length: int) -> np.ndarray:
  """A CMC row shorter than `length` (fewer kept identities than ranks) continues with its last value."""
  if row.shape[0] >= length:
    return row
  return np.concatenate([row, np.full(length - row.shape[0], row[-1], row.dtype)])


def top_k(dist: dist_lib.BlockedDistance, k: int, *, block_size: int,
          mesh: Mesh | None = None) -> tuple[np.ndarray, np.ndarray]:
  """([R, k] column indices, [R, k] distances) of the k smallest distances per row, nearest first."""
  if not 1 <= k <= dist.num_columns:
    raise ValueError(f'k must be in [1, {dist.num_columns}] (the number of gallery entries), got {k}')
  kernel = _top_k_kernel(dist.fn, k)
  idx, val = dist_lib.gather_row_blocks(kernel, dist.rows, dist.shared, block_size=block_size, mesh=mesh)
  return idx.astype(np.int64), val


@functools.lru_cache(maxsize=None)
def _top_k_kernel(distance_fn: Callable, k: int):
  def kernel(*args):
    neg, idx = jax.lax.top_k(-distance_fn(*args), k)
    return idx, -neg
  return kernel


def check_max_rank(max_rank: int, num_gallery: int) -> int:
  """torchreid: ranks beyond the gallery size are dropped."""
  if max_rank < 1:
    raise ValueError(f'max_rank must be >= 1, got {max_rank}')
  return min(max_rank, num_gallery)
