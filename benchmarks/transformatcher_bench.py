r"""TransforMatcher throughput, memory and FLOP utilisation (a benchmark, not a test).

  python benchmarks/transformatcher_bench.py --config configs/transformatcher_spair.py --dtype bfloat16
  python benchmarks/transformatcher_bench.py --config configs/transformatcher_spair.py:smoke  # CPU-sized

Random weights and inputs of the recipe's shapes (the data pipeline is not timed). Reports, for the jitted
train step and for inference (forward + keypoint transfer): milliseconds per step, pairs/s, XLA's FLOP count
(cost analysis of the compiled step), achieved TFLOP/s, model FLOP utilisation against the device's peak,
and peak memory. Prints one JSON line per measurement; --out appends them to a file.
"""
from __future__ import annotations

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from bench_common import device_peak_tflops, measure, write
from jaxmatch import models, parallel
from jaxmatch.tasks.base import ModelOnlyTask
from jaxmatch.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", "configs/transformatcher_spair.py", "Recipe.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Global batch (pairs).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed iterations after warm-up.")
_OUT = flags.DEFINE_string("out", None, "Append JSON results here.")
_WHAT = flags.DEFINE_list("what", ["inference", "train"], "Which measurements.")

def fake_batch(batch: int, img: int, k: int = 40, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  n_valid = rng.integers(5, k + 1, size=batch)
  mask = np.arange(k)[None] < n_valid[:, None]
  return {"src_img": rng.normal(size=(batch, img, img, 3)).astype(np.float32),
          "trg_img": rng.normal(size=(batch, img, img, 3)).astype(np.float32),
          "src_kps": rng.uniform(0, img - 1, size=(batch, k, 2)).astype(np.float32),
          "trg_kps": rng.uniform(0, img - 1, size=(batch, k, 2)).astype(np.float32),
          "kp_mask": mask}


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
  for r in results:  # this benchmark's items are image pairs
    r["ms_per_pair"], r["pairs_per_s"] = r.pop("ms_per_item"), r.pop("items_per_s")
  write(results, _OUT.value)


if __name__ == "__main__":
  app.run(main)
