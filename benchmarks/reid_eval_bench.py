r"""Re-ID evaluation time and peak memory at real dataset sizes (a benchmark, not a test).

  python benchmarks/reid_eval_bench.py --sizes market,msmt17 --rerank both --out docs/reid_eval_bench.jsonl
  python benchmarks/reid_eval_bench.py --sizes 1000x5000 --dim 256 --rerank both     # a reduced size

Synthetic features of the real shapes (Market-1501 3,368 x 15,913, MSMT17 11,659 x 82,161, 2048-d,
L2-normalised): identity clusters (centre + noise) with random cameras, so k-reciprocal sets and
matches have realistic sizes. Measures `reid.evaluate_features` end to end (host -> device transfers,
every block, the host-side aggregation), split into re-ranking preparation (neighbour lists, sparse V,
query expansion) and ranking (Jaccard + ranking of every query block). 'first' includes compilation;
with --repeats 2 a second, compiled run is timed too. Peak memory: the device allocator's peak where the
backend reports one (GPU), and the process's peak resident memory (on CPU that is where the arrays live),
with the resident memory before the first evaluation (features + runtime) for reference.
Prints one JSON line per measurement; --out appends them to a file.
"""
from __future__ import annotations

import json
import resource
import time

import jax
import numpy as np
from absl import app, flags

from jaxmatch.evaluation import distances, reid, rerank
from jaxmatch import parallel

SIZES = {'market': (3368, 15913, 750), 'msmt17': (11659, 82161, 3060)}

_SIZES = flags.DEFINE_list('sizes', ['market'], "'market', 'msmt17' or QxG (e.g. 1000x5000).")
_DIM = flags.DEFINE_integer('dim', 2048, 'Feature dimension.')
_RERANK = flags.DEFINE_enum('rerank', 'both', ['off', 'on', 'both'], 'With / without k-reciprocal re-ranking.')
_F16 = flags.DEFINE_bool('float16_like_transreid', False, 'TransReID float16 rounding in re-ranking.')
_BUDGET = flags.DEFINE_integer('memory_budget_mb', 2048, 'Block temporaries budget (MiB) per call.')
_BLOCK = flags.DEFINE_integer('block_size', None, 'Query / item rows per block (default: from the budget).')
_DEVICES = flags.DEFINE_integer('devices', None, 'Shard query blocks over this many devices (default all).')
_REPEATS = flags.DEFINE_integer('repeats', 1, 'Runs per measurement (the first includes compilation).')
_OUT = flags.DEFINE_string('out', None, 'Append JSON results here.')


def synthetic_features(num_query: int, num_gallery: int, num_ids: int, dim: int, seed: int = 0):
  """Every id has >= 1 query; gallery draws ids uniformly; cameras 1..6. The noise puts the expected
  same-id cosine at 2.5 / sqrt(dim), 2.5 standard deviations of a random pair's, so retrieval is
  imperfect (mAP well below 1) and neighbour sets mix identities as real features do."""
  rs = np.random.RandomState(seed)
  noise = np.sqrt(max(np.sqrt(dim) / 2.5 - 1.0, 0.25))
  centres = rs.normal(size=(num_ids, dim)).astype(np.float32)
  q_pids = np.arange(num_query) % num_ids
  g_pids = rs.randint(0, num_ids, size=num_gallery)

  def draw(pids, chunk=4096):   # float32 chunks: the generator's float64 temporaries stay small
    out = np.empty((pids.shape[0], dim), np.float32)
    for start in range(0, pids.shape[0], chunk):
      rows = pids[start:start + chunk]
      f = centres[rows] + noise * rs.normal(size=(rows.shape[0], dim)).astype(np.float32)
      out[start:start + chunk] = distances.l2_normalize(f)
    return out

  return (draw(q_pids), draw(g_pids), q_pids, g_pids, rs.randint(1, 7, num_query), rs.randint(1, 7, num_gallery))


def parse_size(name: str) -> tuple[str, int, int, int]:
  if name in SIZES:
    return (name, *SIZES[name])
  q, g = (int(v) for v in name.lower().split('x'))
  return name, q, g, max(q // 4, 1)


def device_peak_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats()
  return None if not stats else int(stats.get('peak_bytes_in_use', 0))


def process_peak_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux reports KiB


def process_current_bytes() -> int | None:
  try:
    with open('/proc/self/statm') as f:
      return int(f.read().split()[1]) * resource.getpagesize()
  except OSError:   # not Linux
    return None


def run_once(feats, with_rerank: bool, mesh, budget: int) -> dict:
  qf, gf, qp, gp, qc, gc = feats
  timings = {}
  t0 = time.perf_counter()
  if with_rerank:
    config = rerank.RerankConfig(float16_like_transreid=_F16.value)
    reranked = rerank.prepare(rerank.feature_source(qf, gf), qf.shape[0], config, block_size=_BLOCK.value,
                              mesh=mesh, memory_budget=budget)
    timings['rerank_prepare_s'] = time.perf_counter() - t0
    per_row = reranked.bytes_per_row() + reid.ranking_bytes_per_row(gf.shape[0])
    metrics = reid.evaluate_blocked(reranked.distances(), qp, gp, qc, gc, mesh=mesh, block_size=_BLOCK.value,
                                    memory_budget=budget, bytes_per_row=per_row)
    timings['sparse_width_v_qe'] = int(reranked.qe_idx.shape[1])
  else:
    metrics = reid.evaluate_features(qf, gf, qp, gp, qc, gc, mesh=mesh, block_size=_BLOCK.value,
                                     memory_budget=budget)
  timings['total_s'] = time.perf_counter() - t0
  return {**timings, 'rank1': float(metrics['cmc'][0]), 'mAP': metrics['mAP'], 'mINP': metrics['mINP']}


def main(argv):
  del argv
  mesh = parallel.make_mesh(_DEVICES.value) if (_DEVICES.value or jax.device_count()) > 1 else None
  budget = _BUDGET.value << 20
  for size in _SIZES.value:
    name, nq, ng, ids = parse_size(size)
    feats = synthetic_features(nq, ng, ids, _DIM.value)
    inputs_rss = process_current_bytes()   # features + runtime before any evaluation
    modes = {'off': [False], 'on': [True], 'both': [False, True]}[_RERANK.value]
    for with_rerank in modes:
      for repeat in range(_REPEATS.value):
        result = run_once(feats, with_rerank, mesh, budget)
        row = {'size': name, 'num_query': nq, 'num_gallery': ng, 'dim': _DIM.value, 'rerank': with_rerank,
               'float16_like_transreid': _F16.value and with_rerank, 'run': 'first' if repeat == 0 else 'compiled',
               'devices': 1 if mesh is None else mesh.devices.size, 'device_kind': jax.devices()[0].device_kind,
               'memory_budget_mb': _BUDGET.value, **result, 'device_peak_bytes': device_peak_bytes(),
               'process_peak_rss_bytes': process_peak_bytes(), 'rss_before_bytes': inputs_rss}
        print(json.dumps(row), flush=True)
        if _OUT.value:
          with open(_OUT.value, 'a') as f:
            f.write(json.dumps(row) + '\n')


if __name__ == '__main__':
  app.run(main)
