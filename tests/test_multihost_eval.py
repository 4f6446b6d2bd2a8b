"""Evaluation across processes: two CPU processes (two devices each) joined by jax.distributed evaluate
on one global mesh and must both return what a single process computes alone."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from jaxmatch.evaluation import reid
from test_reid_eval import synthetic_reid

WORKER = os.path.join(os.path.dirname(__file__), "multihost_eval_worker.py")
NUM_PROCESSES = 2


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_workers(inputs, tmp_path) -> list[dict]:
  port = _free_port()
  procs, outputs = [], []
  for pid in range(NUM_PROCESSES):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
           "JAX_NUM_PROCESSES": str(NUM_PROCESSES), "JAX_PROCESS_ID": str(pid),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    outputs.append(tmp_path / f"out{pid}.npz")
    procs.append(subprocess.Popen([sys.executable, WORKER, str(inputs), str(outputs[-1])], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  logs = []
  for p in procs:
    try:
      logs.append(p.communicate(timeout=240)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail("multi-process evaluation did not finish in 240 s")
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  return [dict(np.load(o)) for o in outputs]


def test_two_processes_evaluate_like_one(tmp_path):
  qf, gf, qp, gp, qc, gc = synthetic_reid(num_ids=10, seed=11)
  inputs = tmp_path / "inputs.npz"
  np.savez(inputs, qf=qf, gf=gf, qp=qp, gp=gp, qc=qc, gc=gc)
  outs = _run_workers(inputs, tmp_path)
  for out in outs:
    assert int(out["process_count"]) == NUM_PROCESSES and int(out["device_count"]) == 2 * NUM_PROCESSES
  runs = {"plain": {}, "rerank": {"rerank": {"k1": 8, "k2": 3}},
          "rerank_f16": {"rerank": {"k1": 8, "k2": 3, "float16_like_transreid": True}},
          "classic": {"protocol": "cuhk03_classic", "rng": np.random.RandomState(0)}}
  for name, kwargs in runs.items():
    single = reid.evaluate_features(qf, gf, qp, gp, qc, gc, block_size=8, **kwargs)
    for out in outs:
      np.testing.assert_array_equal(out[f"{name}/cmc"], single["cmc"], err_msg=name)
      np.testing.assert_array_equal(out[f"{name}/first_match_rank"], single["first_match_rank"], err_msg=name)
      # Rows per device change the matmul's rounding by an ulp (see test_eight_devices_equal_one).
      np.testing.assert_allclose(out[f"{name}/per_query_ap"], single["per_query_ap"], rtol=0, atol=1e-7,
                                 err_msg=name)
  expected_top_k = reid.top_k_gallery(qf, gf, 5, block_size=8)[0]
  for out in outs:
    np.testing.assert_array_equal(out["top_k"], expected_top_k)
  np.testing.assert_array_equal(outs[0]["local_top_k"], expected_top_k)
