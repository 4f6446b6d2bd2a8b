"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) in blocks, without any (Q+G)^2 matrix.

The reference (TransReID utils/reranking.py; torchreid utils/rerank.py is the same algorithm) builds the
whole (Q+G)^2 distance matrix, argsorts it and fills a dense (Q+G)^2 V. For MSMT17 (93,820 items) that is
35 GB per matrix. Here, over all N = Q+G items:
  1. neighbour lists: row blocks of the original distance d (see below), each row divided by its maximum
     (the reference's column-max normalisation of a symmetric matrix), top-K indices with
     K = max(k1+1, k2) -> nn [N, K]. Only nn[:, :k1+1], nn[:, :round(k1/2)+1] and nn[:, :k2] are used,
     exactly the prefixes of the reference's argsort it reads.
  2. sparse V: per row the k-reciprocal set R(i) (j in top-(k1+1) of i and i in top-(k1+1) of j), expanded
     by the half-size reciprocal set of every candidate c in R(i) that shares more than 2/3 of its
     elements with R(i); weights exp(-d(i, j)) / sum over the unique set (at most
     (k1+1)(round(k1/2)+2) entries; trimmed to the largest set that occurs).
  3. query expansion: V_qe(i) = mean of V over the k2 nearest neighbours of i (sparse union).
  4. Jaccard distance (jaccard.py), only for the Q x G block: the sum of min(V_qe(q, j), V_qe(g, j)) over
     shared columns j; final = (1 - lambda) * jaccard + lambda * d(q, g).
Temporaries are O(block x N); everything else is O(N x k) neighbour lists. Step 4 feeds the ranking of
the same block directly (reid.evaluate_features), so the Q x G result is never held either.

Original distance d: the square of the metric's distance between features, as the reference squares its
input. metric 'euclidean' gives squared euclidean computed directly (TransReID, which works on the
features; torchreid fed with euclidean distances); 'sqeuclidean' gives its square (what the torchreid
engine does: its 'euclidean' is already squared); 'cosine' the squared cosine distance.
`rerank_distance_matrices` takes distance matrices like torchreid's re_ranking.

float16_like_transreid: TransReID stores V, V_qe, the Jaccard distances and their running sums in
float16 (torchreid in float32). With the option on, every such value is rounded to float16 exactly where
TransReID rounds (sums of float16 values in float32, then rounded; elementwise float16 arithmetic done
in float32 and rounded, as numpy does), with float16.round_to_float16.

Exactness: every division (the row-max normalisation, V's weights, the query-expansion mean, Jaccard)
is numerics.divide, rounded once as numpy divides; XLA would otherwise multiply by a reciprocal, one ulp
off in a third of the entries, and two neighbours that close at a list boundary would swap. Given the
same original distances the neighbour lists, and so every set, are therefore numpy's. Exact ties are
ordered by index (top_k, as a stable sort), where the references' unstable np.argsort is unspecified.

Parity on fixtures/reid_eval (10 x 60, 32-d), max abs difference of the [Q, G] result:
  float16_like_transreid=True vs TransReID      1.2e-7 (k1 20, k2 6), 8.9e-8 (k1 50, k2 15)
  float32 vs torchreid fed euclidean distances  1.6e-7 (from features), 2.4e-7 (from its matrices)
  float32 vs torchreid fed squared distances    2.5e-7 (matrices, as the torchreid engine calls it)
  float32 vs TransReID                          4.1e-3 (the float16 rounding itself)
What remains is float32 rounding (exp, matmul, sum order), so the tests hold all of them to 1e-6.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxmatch import numerics
from jaxmatch.evaluation import distances as dist_lib
from jaxmatch.evaluation.float16 import round_if
from jaxmatch.evaluation.jaccard import Reranked, rerank_bytes_per_row
from jaxmatch.evaluation.rerank_config import RerankConfig


# ---------------------------------------------------------------------------------------------------
# Original distance sources over all N = Q + G items

@functools.lru_cache(maxsize=None)
def _squared_metric_fn(metric: str) -> Callable:
  def fn(x_block, feats, sqnorm):
    sq = dist_lib.sqeuclidean(x_block, feats, sqnorm)
    if metric == 'euclidean':
      return sq
    d = sq if metric == 'sqeuclidean' else dist_lib.pairwise_distance(x_block, feats, 'cosine')
    return d * d
  return fn


def feature_source(qf, gf, metric: str = 'euclidean') -> dist_lib.BlockedDistance:
  """Original distances of every item (queries then gallery) to every item, from features."""
  qf, gf = dist_lib.check_features(qf, gf)
  feats = np.concatenate([qf, gf])
  sqnorm = np.asarray(dist_lib.squared_norms(jnp.asarray(feats)))
  fn = _squared_metric_fn(dist_lib.check_metric(metric))
  return dist_lib.BlockedDistance((feats,), (feats, sqnorm), fn, feats.shape[0], feats.shape[0])


def matrix_source(q_g, q_q, g_g) -> dist_lib.BlockedDistance:
  """torchreid re_ranking's input: the blocks are assembled, squared (float32) and transposed, so row i
  holds the reference's original_dist[i] before normalisation."""
  q_g, q_q, g_g = (np.asarray(a, np.float32) for a in (q_g, q_q, g_g))
  nq, ng = q_g.shape
  if q_q.shape != (nq, nq) or g_g.shape != (ng, ng):
    raise ValueError(f'expected q_g [Q, G], q_q [Q, Q], g_g [G, G]; got {q_g.shape}, {q_q.shape}, '
                     f'{g_g.shape}')
  full = np.block([[q_q, q_g], [q_g.T, g_g]])
  full = np.ascontiguousarray(np.power(full, 2).astype(np.float32).T)
  if not np.isfinite(full).all():
    raise ValueError('distance matrices contain NaN or inf entries')
  return dist_lib.matrix_distances(full)


# ---------------------------------------------------------------------------------------------------
# 1. neighbour lists

@functools.lru_cache(maxsize=None)
def _neighbour_kernel(source_fn: Callable, k: int):
  def kernel(*args):
    _, idx = jax.lax.top_k(-dist_lib.divide_by_row_max(source_fn(*args)), k)
    return idx
  return kernel


def neighbour_lists(source: dist_lib.BlockedDistance, k: int, *, block_size: int,
                    mesh: Mesh | None = None) -> np.ndarray:
  """[N, k] int32: each item's k nearest items (itself usually first), nearest first."""
  return dist_lib.gather_row_blocks(_neighbour_kernel(source.fn, k), source.rows, source.shared,
                                    block_size=block_size, mesh=mesh)


def _reciprocal_mask(ids: jax.Array, nn: jax.Array, k: int) -> jax.Array:
  """[b, k]: whether ids[r] is among the first k neighbours of each of its own first k neighbours."""
  forward = nn[ids, :k]
  return jnp.any(nn[forward, :k] == ids[:, None, None], axis=-1)


@functools.lru_cache(maxsize=None)
def _half_reciprocal_kernel(k: int):
  def kernel(ids, nn):
    return _reciprocal_mask(ids, nn, k)
  return kernel


# ---------------------------------------------------------------------------------------------------
# 2. sparse V

def _sparse_compact(idx: jax.Array, val: jax.Array | None, valid: jax.Array, sentinel: int):
  """Valid entries first, in ascending index order; the rest get index `sentinel` (and value 0)."""
  key = jnp.where(valid, idx, sentinel)
  if val is None:
    return jnp.sort(key, axis=1)
  key, val = jax.lax.sort((key, jnp.where(valid, val, 0.0)), dimension=1, num_keys=1)
  return key, val


@functools.lru_cache(maxsize=None)
def _expansion_kernel(source_fn: Callable, num_source_rows: int, k_full: int, k_half: int, f16: bool):
  def kernel(ids, *args):
    src_rows, (nn, half_mask, *src_shared) = args[:num_source_rows], args[num_source_rows:]
    n = nn.shape[0]
    forward = nn[ids, :k_full]                                                     # [b, K]
    recip = _reciprocal_mask(ids, nn, k_full)                                      # [b, K]
    cand = nn[forward, :k_half]                                                    # [b, K, K2]
    cand_mask = half_mask[forward]                                                 # [b, K, K2]
    in_recip = jnp.any((cand[..., None] == forward[:, None, None, :]) & recip[:, None, None, :], axis=-1)
    common = jnp.sum(in_recip & cand_mask, axis=-1)
    size = jnp.sum(cand_mask, axis=-1)
    # len(intersect) > 2/3 * len(candidate set), exact in integers (equal to the float test for all sizes)
    accept = recip & (3 * common > 2 * size)
    members = jnp.concatenate([jnp.where(recip, forward, n),
                               jnp.where(accept[..., None] & cand_mask, cand, n).reshape(ids.shape[0], -1)],
                              axis=1)
    members = jnp.sort(members, axis=1)
    first = jnp.concatenate([jnp.ones_like(members[:, :1], bool), members[:, 1:] != members[:, :-1]], axis=1)
    members = _sparse_compact(members, None, first & (members < n), n)
    valid = members < n
    dist = dist_lib.divide_by_row_max(source_fn(*src_rows, *src_shared))
    weight = jnp.where(valid, jnp.exp(-jnp.take_along_axis(dist, jnp.minimum(members, n - 1), axis=1)), 0.0)
    value = round_if(numerics.divide(weight, dist_lib.tree_sum(weight)[:, None]), f16)
    return members, jnp.where(valid, value, 0.0), jnp.sum(valid, axis=1, dtype=jnp.int32)
  return kernel


def _trim(idx: np.ndarray, val: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  width = max(int(count.max()), 1)
  return np.ascontiguousarray(idx[:, :width]), np.ascontiguousarray(val[:, :width])


def k_reciprocal_weights(source: dist_lib.BlockedDistance, nn: np.ndarray, config: RerankConfig, *,
                         block_size: int, mesh: Mesh | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Sparse V: ([N, M] column indices (N = padding), [N, M] weights), columns ascending per row."""
  n = nn.shape[0]
  k_full = min(config.k1 + 1, n)
  k_half = min(config.half_k1 + 1, n)
  ids = np.arange(n, dtype=np.int32)
  half_mask = dist_lib.gather_row_blocks(_half_reciprocal_kernel(k_half), (ids,), (nn,),
                                         block_size=block_size, mesh=mesh)
  kernel = _expansion_kernel(source.fn, len(source.rows), k_full, k_half, config.float16_like_transreid)
  idx, val, count = dist_lib.gather_row_blocks(kernel, (ids, *source.rows), (nn, half_mask, *source.shared),
                                               block_size=block_size, mesh=mesh)
  return _trim(idx, val, count)


# ---------------------------------------------------------------------------------------------------
# 3. query expansion

@functools.lru_cache(maxsize=None)
def _expansion_mean_kernel(k2: int, f16: bool):
  def kernel(ids, nn, v_idx, v_val):
    n = nn.shape[0]
    rows = nn[ids, :k2]                                                            # [b, k2], nearest first
    idx = v_idx[rows].reshape(ids.shape[0], -1)
    val = v_val[rows].reshape(ids.shape[0], -1)
    # Stable sort by column keeps each column's values in neighbour order, so the running sum below
    # adds them in the reference's order (numpy's mean over axis 0 adds row after row in float32).
    idx, val = jax.lax.sort((idx, val), dimension=1, is_stable=True, num_keys=1)
    same_as_prev = jnp.concatenate([jnp.zeros_like(idx[:, :1], bool), idx[:, 1:] == idx[:, :-1]], axis=1)
    total = val
    for _ in range(k2 - 1):
      shifted = jnp.concatenate([jnp.zeros_like(total[:, :1]), total[:, :-1]], axis=1)
      total = jnp.where(same_as_prev, shifted, 0.0) + val
    last = jnp.concatenate([idx[:, 1:] != idx[:, :-1], jnp.ones_like(idx[:, :1], bool)], axis=1) & (idx < n)
    mean = round_if(numerics.divide(total, np.float32(k2)), f16)
    idx, mean = _sparse_compact(idx, mean, last, n)
    return idx, mean, jnp.sum(idx < n, axis=1, dtype=jnp.int32)
  return kernel


def query_expansion(v_idx: np.ndarray, v_val: np.ndarray, nn: np.ndarray, config: RerankConfig, *,
                    block_size: int, mesh: Mesh | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Sparse V_qe (same layout as V); V itself when k2 == 1 (the reference skips the step)."""
  if config.k2 == 1:
    return v_idx, v_val
  n = nn.shape[0]
  kernel = _expansion_mean_kernel(min(config.k2, n), config.float16_like_transreid)
  ids = np.arange(n, dtype=np.int32)
  idx, val, count = dist_lib.gather_row_blocks(kernel, (ids,), (nn, v_idx, v_val),
                                               block_size=block_size, mesh=mesh)
  return _trim(idx, val, count)


def prepare(source: dist_lib.BlockedDistance, num_query: int, config: RerankConfig, *,
            block_size: int | None = None, mesh: Mesh | None = None,
            memory_budget: int = dist_lib.DEFAULT_MEMORY_BUDGET) -> Reranked:
  """Steps 1-3 over all items; step 4 runs when the returned distances are evaluated."""
  n = source.num_rows
  if not 0 < num_query < n:
    raise ValueError(f're-ranking needs queries and gallery entries; got {num_query} of {n} items as queries')
  width = config.k1 + 1 + (config.k1 + 1) * (config.half_k1 + 1)
  block = dist_lib.resolve_block_size(n, mesh, block_size, rerank_bytes_per_row(n, n - num_query, width),
                                      memory_budget)
  nn = neighbour_lists(source, min(max(config.k1 + 1, config.k2), n), block_size=block, mesh=mesh)
  v_idx, v_val = k_reciprocal_weights(source, nn, config, block_size=block, mesh=mesh)
  qe_idx, qe_val = query_expansion(v_idx, v_val, nn, config, block_size=block, mesh=mesh)
  return Reranked(source, num_query, config, qe_idx, qe_val)


def _final_matrix(reranked: Reranked, block_size: int | None, mesh: Mesh | None, memory_budget: int):
  dist = reranked.distances()
  block = dist_lib.resolve_block_size(dist.num_rows, mesh, block_size, reranked.bytes_per_row(), memory_budget)
  return dist_lib.gather_row_blocks(dist.fn, dist.rows, dist.shared, block_size=block, mesh=mesh)


def rerank_features(qf, gf, *, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                    metric: str = 'euclidean', float16_like_transreid: bool = False,
                    block_size: int | None = None, mesh: Mesh | None = None,
                    memory_budget: int = dist_lib.DEFAULT_MEMORY_BUDGET) -> np.ndarray:
  """[Q, G] re-ranked distances from features (TransReID's re_ranking(qf, gf, k1, k2, lambda))."""
  config = RerankConfig(k1, k2, lambda_value, float16_like_transreid)
  source = feature_source(qf, gf, metric)
  reranked = prepare(source, np.shape(qf)[0], config, block_size=block_size, mesh=mesh,
                     memory_budget=memory_budget)
  return _final_matrix(reranked, block_size, mesh, memory_budget)


def rerank_distance_matrices(q_g, q_q, g_g, *, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                             float16_like_transreid: bool = False, block_size: int | None = None,
                             mesh: Mesh | None = None,
                             memory_budget: int = dist_lib.DEFAULT_MEMORY_BUDGET) -> np.ndarray:
  """[Q, G] re-ranked distances from distance matrices (torchreid's re_ranking; it squares its input)."""
  config = RerankConfig(k1, k2, lambda_value, float16_like_transreid)
  source = matrix_source(q_g, q_q, g_g)
  reranked = prepare(source, np.shape(q_g)[0], config, block_size=block_size, mesh=mesh,
                     memory_budget=memory_budget)
  return _final_matrix(reranked, block_size, mesh, memory_budget)
