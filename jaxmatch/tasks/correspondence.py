"""Semantic correspondence task: keypoint-pair data, a matcher, PCK evaluation with per-category tables."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from jaxmatch import models
from jaxmatch.evaluation.pck import PCKAccumulator
from jaxmatch.tasks.correspondence_data import prepare_sources
from jaxmatch.train import parallel

DEVICE_KEYS = ("src_img", "trg_img", "src_kps", "trg_kps", "kp_mask")


class CorrespondenceTask:
  unit = "pairs"

  def __init__(self, config: ConfigDict, workdir: str):
    self.config = config
    self.model = models.build(config)
    self.sources, self.embedded = prepare_sources(config.data, workdir)
    self._predict_fns = {}

  # --- what the shared loop calls -------------------------------------------------------------------
  def init_variables(self, rng):
    return self.model.init_variables(rng)

  def param_labels(self, params):
    return self.model.param_labels(params)

  def loss_fn(self, params, model_state, batch, rng):
    return self.model.loss_fn(params, model_state, batch, rng)

  @staticmethod
  def train_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in DEVICE_KEYS}

  def _dataset(self, split: str, batch_size: int, train: bool, seed: int, shard_index: int,
               shard_count: int):
    from input_pipeline.pairs import pair_dataset
    d = self.config.data
    return pair_dataset(self.sources, split, img_size=d.img_size, batch_size=batch_size, train=train,
                        augment=train and d.augment, seed=seed, max_kps=d.max_kps,
                        shard_index=shard_index, shard_count=shard_count)

  def train_iterator(self, batch_size: int, seed: int, shard_index: int = 0, shard_count: int = 1):
    from input_pipeline.pairs import make_iterator
    ds = self._dataset(self.config.data.train_split, batch_size, True, seed, shard_index, shard_count)
    return make_iterator(ds, num_workers=self.config.data.num_workers)

  def num_train_steps(self, tcfg: ConfigDict) -> int:
    if tcfg.num_steps > 0:
      return int(tcfg.num_steps)
    pairs = len(self.sources[self.config.data.train_split])
    return max(1, tcfg.num_epochs * (pairs // tcfg.batch_size))

  # --- evaluation ----------------------------------------------------------------------------------
  def _jitted(self, name: str, mesh):
    key = (name, id(mesh))
    if key not in self._predict_fns:
      repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
      fn = getattr(self.model, name)
      self._predict_fns[key] = jax.jit(fn, in_shardings=(repl, repl, data), out_shardings=data)
    return self._predict_fns[key]

  def _eval_batches(self, mesh, split: str):
    from input_pipeline.pairs import make_iterator
    ecfg = self.config.eval
    parallel.check_batch_divisible(ecfg.batch_size, mesh)
    ds = self._dataset(split, parallel.per_process_batch(ecfg.batch_size), False, 0,
                       jax.process_index(), jax.process_count())
    seen = 0
    for batch in make_iterator(ds, num_workers=self.config.data.num_workers):
      if 0 < ecfg.max_pairs <= seen:
        break
      seen += ecfg.batch_size
      yield batch

  def evaluate(self, params, model_state, mesh, workdir: str, step: int, tag: str,
               periodic: bool = False) -> dict:
    """PCK on config.eval.split (periodic evaluations during training: config.data.val_split, as the
    official code validates every epoch); on the fresh model also the raw-correlation argmax baseline."""
    ecfg = self.config.eval
    split = self.config.data.val_split if periodic else ecfg.split
    methods = {"model": "predict"}
    if tag == "before":
      methods["raw_argmax_baseline"] = "predict_raw_argmax"
    from input_pipeline.spair import SPAIR_CATEGORIES
    accs = {m: PCKAccumulator(alphas=tuple(ecfg.alphas), category_names=SPAIR_CATEGORIES) for m in methods}
    for batch in self._eval_batches(mesh, split):
      inputs = parallel.to_global({k: batch[k] for k in DEVICE_KEYS}, mesh)
      host_batch = _gather_host(batch)
      for m, fn_name in methods.items():
        pred = _gather_device(self._jitted(fn_name, mesh)(params, model_state, inputs))
        accs[m].add(pred, host_batch)
    scalars = {}
    for m, acc in accs.items():
      result = acc.result()
      prefix = "" if m == "model" else f"{m}/"
      scalars.update({f"{prefix}{k}": v for k, v in result.items() if isinstance(v, (int, float))})
      _report(workdir, f"{tag}_{m}", step, split, result, acc.format_table())
    return scalars


def _gather_host(batch: dict) -> dict:
  if jax.process_count() == 1:
    return batch
  return {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in batch.items()}


def _gather_device(x) -> np.ndarray:
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _report(workdir: str, name: str, step: int, split: str, result: dict, table: str) -> None:
  if jax.process_index() != 0:
    return
  header = f"PCK on '{split}' ({name}, step {step}, {result.get('num_pairs')} pairs)"
  print(f"\n{header}\n{table}\n", flush=True)
  out = os.path.join(workdir, "eval")
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f"{name}.json"), "w", encoding="utf-8") as f:
    json.dump({"step": step, "split": split, **result}, f, indent=2, default=float)
  with open(os.path.join(out, f"{name}.txt"), "w", encoding="utf-8") as f:
    f.write(header + "\n" + table + "\n")
