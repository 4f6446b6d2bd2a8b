r"""TransReID throughput, memory and FLOP utilisation, and the input pipeline's rate (a benchmark, not a test).

  python benchmarks/transreid_bench.py --config configs/transreid_market.py --dtype bfloat16
  python benchmarks/transreid_bench.py --config configs/transreid_market.py --what pipeline --workers 8
  # CPU-sized: --config.model.embed_dim=64 --config.model.depth=3 --config.model.num_heads=4 \
  #            --config.model.mlp_ratio=4.0 --batch_size 16

Model measurements use random weights and inputs of the recipe's shapes (ViT-B/16, stride 12, 256x128,
SIE camera, JPM by default): the jitted train step (train images/s) and the jitted test feature (eval
images/s), each with XLA's FLOP count, achieved TFLOP/s, model FLOP utilisation against the device's
peak, compile time and memory. `--what pipeline` times the training input pipeline on its own: the
embedded synthetic Market data in the Market-1501 layout (JPEG files read and decoded, the recipe's
augmentation: bicubic resize, flip, pad + crop, normalise, timm pixel erasing), PK batches, grain worker
processes. One JSON line per measurement; --out appends them to a file (docs/transreid_bench.jsonl).
"""
from __future__ import annotations

import os
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from bench_common import device_peak_tflops, measure, write
from jaxmatch import models, parallel
from jaxmatch.tasks.base import ModelOnlyTask
from jaxmatch.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", "configs/transreid_market.py", "Recipe.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Global batch (images; P x K for training).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed iterations after warm-up.")
_WORKERS = flags.DEFINE_integer("workers", 4, "Input pipeline worker processes (--what pipeline).")
_PIPELINE_BATCHES = flags.DEFINE_integer("pipeline_batches", 40, "Batches timed by --what pipeline.")
_OUT = flags.DEFINE_string("out", None, "Append JSON results here.")
_WHAT = flags.DEFINE_list("what", ["eval", "train"], "Which measurements: eval, train, pipeline.")

NUM_CLASSES, NUM_CAMERAS = 751, 6  # Market-1501's training identities and cameras


def fake_batch(batch: int, img_size, num_instances: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  h, w = img_size
  return {"image": rng.normal(size=(batch, h, w, 3)).astype(np.float32),
          "label": np.repeat(np.arange(batch // num_instances), num_instances).astype(np.int32),
          "camera": rng.integers(0, NUM_CAMERAS, size=batch).astype(np.int32),
          "view": np.zeros(batch, np.int32)}


def model_results(config) -> list[dict]:
  config.model.dtype = _DTYPE.value
  config.model.num_classes, config.model.num_cameras = NUM_CLASSES, NUM_CAMERAS
  model = models.build(config)
  mesh = parallel.make_mesh()
  batch = parallel.to_global(fake_batch(_BATCH.value, config.data.img_size, config.data.num_instances), mesh)
  peak, peak_src = device_peak_tflops(_DTYPE.value)
  extra = {"img_size": list(config.data.img_size), "dtype": _DTYPE.value, "backbone": config.model.backbone,
           "stride": config.model.stride, "jpm": bool(config.model.jpm), "jax": jax.__version__}
  repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
  state, tx = loop.init_state(ModelOnlyTask(config, model), config.train, mesh, 0)
  results = []
  if "eval" in _WHAT.value:
    embed = jax.jit(model.embed, in_shardings=(repl, repl, data), out_shardings=data)
    results.append(measure("eval", embed, (state.params, state.model_state, batch), _BATCH.value,
                           _STEPS.value, peak, peak_src, extra))
  if "train" in _WHAT.value:
    step = jax.jit(loop.make_train_step(model.loss_fn, tx), donate_argnums=(0,),
                   in_shardings=(repl, data, repl), out_shardings=(repl, repl))
    results.append(measure("train", step, (state, batch, jax.random.key(0)), _BATCH.value, _STEPS.value,
                           peak, peak_src, extra))
  for r in results:  # this benchmark's items are images
    r["ms_per_image"], r["images_per_s"] = r.pop("ms_per_item"), r.pop("items_per_s")
  return results


def pipeline_result(config) -> dict:
  """Images/s of the training pipeline alone (decode + augmentation + PK batching, worker processes)."""
  from input_pipeline.reid.pipeline import make_iterator, reid_train_dataset
  from input_pipeline.reid.splits import prepare_reid, reid_split
  from input_pipeline.reid.synthetic_market import write_synthetic_market
  d = config.data
  with tempfile.TemporaryDirectory() as root:
    folder = write_synthetic_market(os.path.join(root, "data"), num_train_ids=100, num_test_ids=10,
                                    seed=0, images_per_id=16)
    prepare_reid("market1501", folder, os.path.join(root, "tfds"))
    split = reid_split("market1501", "train", os.path.join(root, "tfds"))
    ds = reid_train_dataset([split], img_size=tuple(d.img_size), batch_size=_BATCH.value,
                            num_instances=int(d.num_instances), augment=d.augment, seed=0)
    it = make_iterator(ds, num_workers=_WORKERS.value)
    next(it)  # worker start-up is not the steady state
    t0 = time.perf_counter()
    for _ in range(_PIPELINE_BATCHES.value):
      next(it)
    seconds = time.perf_counter() - t0
  images = _PIPELINE_BATCHES.value * _BATCH.value
  return {"what": "pipeline", "images_per_s": images / seconds, "batch": _BATCH.value,
          "workers": _WORKERS.value, "cpu_count": os.cpu_count(), "img_size": list(d.img_size),
          "augment": {k: d.augment[k] for k in ("interpolation", "erasing", "pad")},
          "source": "synthetic Market-1501 JPEG files (128x64 crops, decoded and resized per image)"}


def main(argv):
  del argv
  config = _CONFIG.value
  results = model_results(config) if {"eval", "train"} & set(_WHAT.value) else []
  if "pipeline" in _WHAT.value:
    results.append(pipeline_result(config))
  write(results, _OUT.value)


if __name__ == "__main__":
  app.run(main)
