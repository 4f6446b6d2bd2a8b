"""One process of the multi-host evaluation test (run by test_multihost_eval.py, not collected by pytest).

argv: inputs.npz output.npz. The process joins the job described by JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID (parallel.maybe_initialize_distributed), evaluates the same features on
a mesh over every process's CPU devices and writes what it received (jax's CPU collectives default to
gloo, which carries the cross-process gathers).
"""
from __future__ import annotations

import sys

import jax
import numpy as np

from jaxmatch.evaluation import reid
from jaxmatch import parallel


def main(inputs: str, output: str) -> None:
  assert parallel.maybe_initialize_distributed()
  data = np.load(inputs)
  qf, gf, qp, gp, qc, gc = (data[k] for k in ("qf", "gf", "qp", "gp", "qc", "gc"))
  mesh = parallel.make_mesh()
  results = {"process_count": jax.process_count(), "device_count": jax.device_count()}
  runs = {"plain": {}, "rerank": {"rerank": {"k1": 8, "k2": 3}},
          "rerank_f16": {"rerank": {"k1": 8, "k2": 3, "float16_like_transreid": True}},
          "classic": {"protocol": "cuhk03_classic", "rng": np.random.RandomState(0)}}
  for name, kwargs in runs.items():
    m = reid.evaluate_features(qf, gf, qp, gp, qc, gc, block_size=8, mesh=mesh, **kwargs)
    for key in ("cmc", "per_query_ap", "first_match_rank"):
      results[f"{name}/{key}"] = m[key]
  results["top_k"] = reid.top_k_gallery(qf, gf, 5, mesh=mesh, block_size=8)[0]
  if jax.process_index() == 0:   # without a mesh one process evaluates alone (as for ranked figures)
    results["local_top_k"] = reid.top_k_gallery(qf, gf, 5, block_size=8)[0]
  np.savez(output, **results)


if __name__ == "__main__":
  main(*sys.argv[1:])
