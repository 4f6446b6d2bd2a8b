"""Re-identification evaluation: the entry point the task and the CLI call.

`evaluate_features` ranks a gallery for every query from features (optionally k-reciprocal re-ranked)
and `evaluate_distances` from a given distance matrix; both return CMC / mAP / mINP under the Market
protocol ('market'; also CUHK03-NP and MSMT17) or torchreid's classic CUHK03 single-gallery-shot CMC
('cuhk03_classic'). Queries are processed in blocks sized by `block_size` or a memory budget and, with a
`mesh`, split over its 'data' axis (each device ranks its own queries against the whole gallery, see
distances.py). `top_k_gallery` gives the nearest gallery entries per query for ranked-list pictures.

Returned dict: 'cmc' float32 [max_rank] (rank r at index r-1), 'mAP', 'mINP' python floats (fractions),
'num_valid_queries', 'valid' bool [Q], 'per_query_ap' / 'per_query_inp' float64 [Q] (NaN where invalid),
'first_match_rank' int64 [Q] (0 where invalid).
"""
from __future__ import annotations

import numpy as np
from jax.sharding import Mesh

from jaxmatch.evaluation import distances as dist_lib
from jaxmatch.evaluation import rerank as rerank_lib
from jaxmatch.evaluation import retrieval

PROTOCOLS = ('market', 'cuhk03_np', 'msmt17', 'cuhk03_classic')


def _check_protocol(protocol: str, rng) -> None:
  if protocol not in PROTOCOLS:
    raise ValueError(f'unknown evaluation protocol {protocol!r}; expected one of {PROTOCOLS}')
  if protocol == 'cuhk03_classic' and rng is None:
    raise ValueError("protocol 'cuhk03_classic' draws gallery images at random: pass rng (e.g. "
                     "np.random.RandomState(0), which reproduces torchreid after np.random.seed(0))")


def ranking_bytes_per_row(num_gallery: int) -> int:
  """Block temporaries of rank_statistics per query row: XLA:CPU's buffer assignment measures 36 bytes per
  gallery entry (distance, codes, masked copy, binary-search state, histogram updates); 40 with margin."""
  return 40 * num_gallery


def _features(qf, gf, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
  """Checked float32 host features, L2-normalised on the device if asked (exact division, as torch)."""
  qf, gf = dist_lib.check_features(qf, gf)
  if normalize:
    qf, gf = np.asarray(dist_lib.l2_normalize(qf)), np.asarray(dist_lib.l2_normalize(gf))
  return qf, gf


def evaluate_blocked(dist: dist_lib.BlockedDistance, q_pids, g_pids, q_camids, g_camids, *,
                     protocol: str = 'market', max_rank: int = 50, mesh: Mesh | None = None,
                     block_size: int | None = None, rng=None,
                     memory_budget: int = dist_lib.DEFAULT_MEMORY_BUDGET,
                     bytes_per_row: int | None = None) -> dict:
  """Metrics of any blocked query x gallery distance (features, a matrix, re-ranked distances)."""
  _check_protocol(protocol, rng)
  max_rank = retrieval.check_max_rank(max_rank, dist.num_columns)
  per_row = bytes_per_row or ranking_bytes_per_row(dist.num_columns)
  block = dist_lib.resolve_block_size(dist.num_rows, mesh, block_size, per_row, memory_budget)
  stats = retrieval.query_statistics(dist, q_pids, g_pids, q_camids, g_camids, block_size=block, mesh=mesh)
  metrics = retrieval.market_metrics(stats, max_rank)
  if protocol == 'cuhk03_classic':
    metrics['cmc'] = retrieval.cuhk03_classic_cmc(dist, q_pids, g_pids, q_camids, g_camids, rng=rng,
                                                  max_rank=max_rank, block_size=block, mesh=mesh)
  return metrics


def evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, *, metric: str = 'euclidean',
                      normalize: bool = False, rerank: dict | None = None, protocol: str = 'market',
                      max_rank: int = 50, mesh: Mesh | None = None, block_size: int | None = None, rng=None,
                      memory_budget: int = dist_lib.DEFAULT_MEMORY_BUDGET) -> dict:
  """Metrics from query features [Q, D] and gallery features [G, D].

  normalize: L2-normalise the features first (TransReID's evaluator always does).
  rerank: None, or k-reciprocal re-ranking options {'k1': 20, 'k2': 6, 'lambda': 0.3,
    'float16_like_transreid': False}; its original distance is the square of `metric` (rerank.py).
  """
  _check_protocol(protocol, rng)
  qf, gf = _features(qf, gf, normalize)
  kwargs = dict(protocol=protocol, max_rank=max_rank, mesh=mesh, block_size=block_size, rng=rng,
                memory_budget=memory_budget)
  if rerank is None:
    return evaluate_blocked(dist_lib.feature_distances(qf, gf, metric), q_pids, g_pids, q_camids, g_camids,
                            **kwargs)
  config = rerank_lib.RerankConfig.from_dict(rerank)
  reranked = rerank_lib.prepare(rerank_lib.feature_source(qf, gf, metric), qf.shape[0], config,
                                block_size=block_size, mesh=mesh, memory_budget=memory_budget)
  per_row = reranked.bytes_per_row() + ranking_bytes_per_row(gf.shape[0])
  return evaluate_blocked(reranked.distances(), q_pids, g_pids, q_camids, g_camids, bytes_per_row=per_row,
                          **kwargs)


def evaluate_distances(distmat, q_pids, g_pids, q_camids, g_camids, *, protocol: str = 'market',
                       max_rank: int = 50, mesh: Mesh | None = None, block_size: int | None = None,
                       rng=None, memory_budget: int = dist_lib.DEFAULT_MEMORY_BUDGET) -> dict:
  """Metrics from a query x gallery distance matrix (host memory; moved to the device in blocks)."""
  return evaluate_blocked(dist_lib.matrix_distances(distmat), q_pids, g_pids, q_camids, g_camids,
                          protocol=protocol, max_rank=max_rank, mesh=mesh, block_size=block_size, rng=rng,
                          memory_budget=memory_budget)


def top_k_gallery(qf, gf, k: int, *, metric: str = 'euclidean', normalize: bool = False,
                  mesh: Mesh | None = None, block_size: int | None = None,
                  memory_budget: int = dist_lib.DEFAULT_MEMORY_BUDGET) -> tuple[np.ndarray, np.ndarray]:
  """([Q, k] gallery indices, [Q, k] distances), nearest first, for ranked-list pictures."""
  qf, gf = _features(qf, gf, normalize)
  dist = dist_lib.feature_distances(qf, gf, metric)
  block = dist_lib.resolve_block_size(dist.num_rows, mesh, block_size, 12 * dist.num_columns, memory_budget)
  return retrieval.top_k(dist, k, block_size=block, mesh=mesh)
