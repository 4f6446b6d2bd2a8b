r"""TransforMatcher throughput, memory and FLOP utilisation (a benchmark, not a test).

  python benchmarks/transformatcher_bench.py --config configs/transformatcher_spair.py --dtype bfloat16
  python benchmarks/transformatcher_bench.py --config configs/transformatcher_spair.py:smoke  # CPU-sized

Random weights and inputs of the recipe's shapes (the data pipeline is not timed). Reports, for the jitted
train step and for inference (forward + keypoint transfer): milliseconds per step, pairs/s, XLA's FLOP count
(cost analysis of the compiled step), achieved TFLOP/s, model FLOP utilisation against the device's peak,
and peak memory. Prints one JSON line per measurement; --out appends them to a file.
"""
from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxmatch import models
from jaxmatch import parallel
from jaxmatch.tasks.base import ModelOnlyTask
from jaxmatch.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", "configs/transformatcher_spair.py", "Recipe.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Global batch (pairs).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed iterations after warm-up.")
_OUT = flags.DEFINE_string("out", None, "Append JSON results here.")
_WHAT = flags.DEFINE_list("what", ["inference", "train"], "Which measurements.")

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


def fake_batch(batch: int, img: int, k: int = 40, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  n_valid = rng.integers(5, k + 1, size=batch)
  mask = np.arange(k)[None] < n_valid[:, None]
  return {"src_img": rng.normal(size=(batch, img, img, 3)).astype(np.float32),
          "trg_img": rng.normal(size=(batch, img, img, 3)).astype(np.float32),
          "src_kps": rng.uniform(0, img - 1, size=(batch, k, 2)).astype(np.float32),
          "trg_kps": rng.uniform(0, img - 1, size=(batch, k, 2)).astype(np.float32),
          "kp_mask": mask}


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
            "batch": batch, "ms_per_step": step_s * 1e3, "ms_per_pair": step_s * 1e3 / batch,
            "pairs_per_s": batch / step_s, "compile_s": compile_s, "xla_gflops_per_step": flops / 1e9,
            "achieved_tflops": flops / step_s / 1e12, "peak_tflops": peak, "peak_source": peak_src,
            "mfu": flops / step_s / 1e12 / peak, **memory_of(compiled), **extra}
  return result


def main(argv):
  del argv
  config = _CONFIG.value
  config.model.dtype = _DTYPE.value
  model = models.build(config)
  mesh = parallel.make_mesh()
  batch = parallel.to_global(fake_batch(_BATCH.value, config.data.img_size), mesh)
  peak, peak_src = device_peak_tflops(_DTYPE.value)
  extra = {"img_size": config.data.img_size, "dtype": _DTYPE.value, "backbone": config.model.backbone_depth,
           "jax": jax.__version__}
  repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
  state, tx = loop.init_state(ModelOnlyTask(config, model), config.train, mesh, 0)
  results = []
  if "inference" in _WHAT.value:
    predict = jax.jit(model.predict, in_shardings=(repl, repl, data), out_shardings=data)
    results.append(measure("inference", predict, (state.params, state.model_state, batch), _BATCH.value,
                           _STEPS.value, peak, peak_src, extra))
  if "train" in _WHAT.value:
    step = jax.jit(loop.make_train_step(model.loss_fn, tx), donate_argnums=(0,),
                   in_shardings=(repl, data, repl), out_shardings=(repl, repl))
    rng = jax.random.key(0)
    results.append(measure("train", step, (state, batch, rng), _BATCH.value, _STEPS.value, peak, peak_src,
                           extra))
  for r in results:
    line = json.dumps(r)
    print(line)
    if _OUT.value:
      with open(_OUT.value, "a", encoding="utf-8") as f:
        f.write(line + "\n")


if __name__ == "__main__":
  app.run(main)
