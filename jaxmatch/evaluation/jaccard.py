"""Step 4 of k-reciprocal re-ranking (rerank.py): Jaccard distances of query rows against the gallery,
combined with the original distance, from the sparse V_qe rows that steps 1-3 produced.

Two paths sum min(V_qe(q, j), V_qe(g, j)) over the shared columns j in ascending order:
* sparse (float32): the reference's inverted-index loop, vectorised; each query walks the gallery rows
  listed under its own non-zero columns (`ColumnIndex`), about width^2 entries per query;
* dense (float16_like_transreid): a dense copy of a query block's V_qe rows, every gallery row's entries
  gathered from it (width x G per query), so each partial sum can be rounded where TransReID rounds it.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmatch import numerics
from jaxmatch.evaluation import distances as dist_lib
from jaxmatch.evaluation.float16 import round_if
from jaxmatch.evaluation.rerank_config import RerankConfig


def _split_args(args, num_source_rows: int, num_source_shared: int):
  """A final-distance kernel's arguments: (source rows, query V_qe idx, val, source shared, the rest)."""
  q_at = num_source_rows
  shared_at = q_at + 2
  rest_at = shared_at + num_source_shared
  return args[:q_at], args[q_at], args[q_at + 1], args[shared_at:rest_at], args[rest_at:]


def _final_weights(lambda_value: float, f16: bool) -> tuple[np.float32, np.float32]:
  jaccard_weight = np.float32(np.float16(1.0 - lambda_value) if f16 else (1.0 - lambda_value))
  return jaccard_weight, np.float32(lambda_value)


def _combine(overlap: jax.Array, original: jax.Array, two, one, jaccard_weight, original_weight,
             f16: bool) -> jax.Array:
  """(1 - lambda) * (1 - overlap / (2 - overlap)) + lambda * original, rounded where TransReID rounds."""
  denom = round_if(two - overlap, f16)
  jaccard = round_if(one - round_if(numerics.divide(overlap, denom), f16), f16)
  return round_if(jaccard * jaccard_weight, f16) + original * original_weight


@functools.lru_cache(maxsize=None)
def _dense_final_fn(source_fn: Callable, num_source_rows: int, num_source_shared: int, num_query: int,
                    lambda_value: float, f16: bool) -> Callable:
  """Per query block a dense [N+1, b] copy of its V_qe rows; the loop walks the gallery's sparse entries
  column slot by column slot (width x G x b work). Rounds every partial sum where float16 TransReID does."""
  weights = _final_weights(lambda_value, f16)

  def fn(*args):
    src_rows, q_idx, q_val, src_shared, (g_idx_t, g_val_t, two, one) = _split_args(
        args, num_source_rows, num_source_shared)
    original = dist_lib.divide_by_row_max(source_fn(*src_rows, *src_shared))
    n = original.shape[1]
    b = q_idx.shape[0]
    dense = jnp.zeros((b, n + 1), jnp.float32).at[jnp.arange(b)[:, None], q_idx].set(q_val).T   # [N+1, b]

    def add_column(t, acc):   # acc [G, b]: ascending columns per gallery row, as the reference loops
      term = jnp.minimum(dense[g_idx_t[t]], g_val_t[t][:, None])
      return round_if(acc + term, f16)

    overlap = jax.lax.fori_loop(0, g_idx_t.shape[0], add_column,
                                jnp.zeros((g_idx_t.shape[1], b), jnp.float32)).T         # [b, G]
    return _combine(overlap, original[:, num_query:], two, one, *weights, f16)
  return fn


@functools.lru_cache(maxsize=None)
def _sparse_final_fn(source_fn: Callable, num_source_rows: int, num_source_shared: int, num_query: int,
                     lambda_value: float, capacity: int) -> Callable:
  """The reference's own loop (for each non-zero column j of a query, every gallery row with a non-zero
  at j), vectorised: work per query is the sum of its columns' gallery occupancies (about width^2 for
  k-reciprocal sets) instead of width x G. Each query row enumerates `capacity` (column, gallery row)
  entries through the gallery's column index; a scatter-add sums min(V_qe(q, j), V_qe(g, j)) per gallery
  row, in ascending column order (the update order) where the backend applies updates in order (CPU)."""
  weights = _final_weights(lambda_value, False)

  def fn(*args):
    src_rows, q_idx, q_val, src_shared, (col_ptr, col_rows, col_vals, two, one) = _split_args(
        args, num_source_rows, num_source_shared)
    original = dist_lib.divide_by_row_max(source_fn(*src_rows, *src_shared))
    b, w = q_idx.shape
    starts = col_ptr[q_idx]                                                        # [b, w]
    counts = col_ptr[q_idx + 1] - starts
    ends = jnp.cumsum(counts, axis=1)                                              # inclusive ends
    entry = jnp.arange(capacity, dtype=jnp.int32)
    slot = jax.vmap(lambda e: jnp.searchsorted(e, entry, side='right'))(ends)      # [b, capacity]
    valid = slot < w
    slot = jnp.minimum(slot, w - 1)
    first = jnp.take_along_axis(ends - counts, slot, axis=1)
    position = jnp.where(valid, jnp.take_along_axis(starts, slot, axis=1) + entry[None] - first, 0)
    term = jnp.minimum(jnp.take_along_axis(q_val, slot, axis=1), col_vals[position])
    overlap = jnp.zeros((b, original.shape[1] - num_query), jnp.float32).at[
        jnp.arange(b)[:, None], col_rows[position]].add(jnp.where(valid, term, 0.0))
    return _combine(overlap, original[:, num_query:], two, one, *weights, False)
  return fn


@dataclasses.dataclass(frozen=True)
class ColumnIndex:
  """The gallery's sparse V_qe by column: rows[ptr[j]:ptr[j + 1]] (ascending) have a non-zero at column j,
  with values vals[...]; ptr has N + 2 entries so that the padding column N is empty."""
  ptr: np.ndarray
  rows: np.ndarray
  vals: np.ndarray

  @classmethod
  def build(cls, g_idx: np.ndarray, g_val: np.ndarray, num_items: int) -> ColumnIndex:
    valid = g_idx < num_items
    rows = np.nonzero(valid)[0].astype(np.int32)
    cols = g_idx[valid]
    order = np.argsort(cols, kind='stable')                      # stable: rows stay ascending per column
    counts = np.bincount(cols, minlength=num_items + 1)
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return cls(ptr, rows[order], g_val[valid][order].astype(np.float32))

  def entries_per_row(self, idx: np.ndarray) -> np.ndarray:
    """Per sparse row (column indices, N = padding): how many (column, gallery row) pairs it meets."""
    return np.diff(self.ptr)[idx].sum(axis=1)


@dataclasses.dataclass(frozen=True)
class Reranked:
  """The sparse state of a re-ranking; `distances` turns it into query x gallery distance blocks.

  Jaccard: float16_like_transreid needs a rounded running sum per (query, gallery) pair in the reference
  order, which the dense path keeps; float32 takes the sparse path (same sums, far less work) unless
  `sparse=False` is asked for.
  """
  source: dist_lib.BlockedDistance
  num_query: int
  config: RerankConfig
  qe_idx: np.ndarray
  qe_val: np.ndarray

  def use_sparse(self, sparse: bool | None = None) -> bool:
    if sparse and self.config.float16_like_transreid:
      raise ValueError('float16_like_transreid needs the dense Jaccard path (sparse=False or None)')
    return not self.config.float16_like_transreid if sparse is None else sparse

  @functools.cached_property
  def column_index(self) -> ColumnIndex:
    q = self.num_query
    return ColumnIndex.build(self.qe_idx[q:], self.qe_val[q:], self.qe_idx.shape[0])

  @functools.cached_property
  def capacity(self) -> int:
    """Entries a query row enumerates on the sparse path: the largest count, rounded up to 128."""
    most = int(self.column_index.entries_per_row(self.qe_idx[:self.num_query]).max(initial=0))
    return max(128, -(-most // 128) * 128)

  def bytes_per_row(self, sparse: bool | None = None) -> int:
    """Block temporaries per query row of step 4, ranking excluded."""
    n, g = self.qe_idx.shape[0], self.qe_idx.shape[0] - self.num_query
    if self.use_sparse(sparse):
      # XLA:CPU's buffer assignment measures 21-31 bytes per enumerated entry besides the rows
      return 4 * (3 * n + 2 * g) + 36 * self.capacity + 64 * self.qe_idx.shape[1]
    return rerank_bytes_per_row(n, g, self.qe_idx.shape[1])

  def distances(self, sparse: bool | None = None) -> dist_lib.BlockedDistance:
    q, n = self.num_query, self.qe_idx.shape[0]
    rows = tuple(r[:q] for r in self.source.rows) + (self.qe_idx[:q], self.qe_val[:q])
    args = (self.source.fn, len(self.source.rows), len(self.source.shared), q, float(self.config.lambda_value))
    if self.use_sparse(sparse):
      index = self.column_index
      fn = _sparse_final_fn(*args, self.capacity)
      extra = (index.ptr, index.rows, index.vals)
    else:
      fn = _dense_final_fn(*args, self.config.float16_like_transreid)
      extra = (np.ascontiguousarray(self.qe_idx[q:].T), np.ascontiguousarray(self.qe_val[q:].T))
    shared = (*self.source.shared, *extra, np.float32(2.0), np.float32(1.0))
    return dist_lib.BlockedDistance(rows, shared, fn, q, n - q)


def rerank_bytes_per_row(num_items: int, num_gallery: int, width: int) -> int:
  """Block temporaries per row: distance rows, the dense V_qe copy, overlap sums and a sort of them."""
  return 4 * (3 * num_items + 6 * num_gallery) + 8 * width
