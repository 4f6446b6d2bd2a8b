"""Shared by the benchmark scripts: device peaks, timing of a compiled step, FLOPs and memory of it."""
from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense peak FLOP/s per device kind (vendor datasheets, SXM parts, without sparsity).
PEAK_TFLOPS = {
    ("H100", "bfloat16"): 989.0, ("H100", "float32"): 67.0,
    ("H200", "bfloat16"): 989.0, ("H200", "float32"): 67.0,
    ("A100", "bfloat16"): 312.0, ("A100", "float32"): 19.5,
}


def device_peak_tflops(dtype: str) -> tuple[float, str]:
  kind = jax.devices()[0].device_kind
  for (name, dt), peak in PEAK_TFLOPS.items():
    if name in kind and dt == dtype:
      return peak * jax.device_count(), f"datasheet {name} {dtype}"
  return measured_matmul_tflops(dtype), f"measured {kind} matmul peak"


def measured_matmul_tflops(dtype: str, n: int = 2048) -> float:
  """Where no datasheet applies (e.g. CPU): the best FLOP/s a large matmul reaches on this machine."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  t = min(_time(lambda: f(a).block_until_ready()) for _ in range(3))
  return 2 * n ** 3 / t / 1e12


def _time(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def flops_of(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def memory_of(compiled) -> dict:
  out = {}
  try:
    m = compiled.memory_analysis()
    out["compiled_temp_gb"] = m.temp_size_in_bytes / 1e9
    out["compiled_args_gb"] = m.argument_size_in_bytes / 1e9
  except Exception:  # not every backend reports it
    pass
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["device_peak_gb"] = stats["peak_bytes_in_use"] / 1e9
  return out


def measure(name, fn, args, batch, steps, peak, peak_src, extra):
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  out = compiled(*args)
  jax.block_until_ready(out)
  if name == "train":  # donated state: feed the returned state back in
    args = (out[0],) + tuple(args[1:])
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    out = compiled(*args)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t0)
    if name == "train":
      args = (out[0],) + tuple(args[1:])
  step_s = float(np.median(times))
  flops = flops_of(compiled)
  result = {"what": name, "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
            "batch": batch, "ms_per_step": step_s * 1e3, "ms_per_item": step_s * 1e3 / batch,
            "items_per_s": batch / step_s, "compile_s": compile_s, "xla_gflops_per_step": flops / 1e9,
            "achieved_tflops": flops / step_s / 1e12, "peak_tflops": peak, "peak_source": peak_src,
            "mfu": flops / step_s / 1e12 / peak, **memory_of(compiled), **extra}
  return result




def write(results, out: str | None) -> None:
  """One JSON line per measurement on stdout, appended to `out` when given."""
  for r in results:
    line = json.dumps(r)
    print(line, flush=True)
    if out:
      with open(out, "a", encoding="utf-8") as f:
        f.write(line + "\n")
