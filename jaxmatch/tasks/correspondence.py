"""Semantic correspondence task: train on one keypoint-pair dataset, evaluate PCK on a list of benchmarks.

Training reads `config.data.dataset` ('spair', 'pfpascal' or 'pfwillow'). Evaluation runs every entry of
`config.eval.benchmarks` (name -> dataset, split, thresholds, alphas, optional manual_dir), e.g. the
transfer setting trains on PF-PASCAL and evaluates SPair-71k test. Each benchmark can be scored under
several PCK thresholds at once (PF-WILLOW: the official code's padded-keypoint threshold 'pfwillow'
and the intended keypoint-box threshold 'pfwillow_bbox_kp'); every (benchmark, threshold) gets its
own table, json and scalar keys 'pck@<alpha>/<label>', where the label is the benchmark name for the
dataset's official threshold and name + suffix otherwise ('pfwillow_bbox_kp'). The plain 'pck@<alpha>'
keys repeat the headline benchmark (`config.eval.headline`) under its first threshold. Periodic
evaluations during training score the training dataset's validation split, as the official code
validates every epoch. The first `config.eval.num_figures` pairs of each evaluation are drawn to
workdir/eval/figures (keypoints with error lines; the source warped onto the target).
"""
from __future__ import annotations

import dataclasses
import os

import jax
from ml_collections import ConfigDict

from input_pipeline.correspondence.sources import dataset_spec, prepare_sources
from jaxmatch import models, parallel
from jaxmatch.evaluation.pck import ALPHAS, PCKAccumulator, pck_threshold
from jaxmatch.tasks import correspondence_report as report
from jaxmatch.tasks.base import ModelTask



@dataclasses.dataclass(frozen=True)
class Benchmark:
  name: str
  dataset: str
  split: str
  thresholds: tuple[str, ...]
  alphas: tuple[float, ...]
  manual_dir: str = ""

  def label(self, threshold: str) -> str:
    """'pfwillow' + 'pfwillow_bbox_kp' -> 'pfwillow_bbox_kp'; the official kind -> the name itself."""
    if threshold == dataset_spec(self.dataset).threshold:
      return self.name
    suffix = threshold[len(self.dataset):] if threshold.startswith(self.dataset) else f"_{threshold}"
    return f"{self.name}{suffix}"


def benchmarks_from_config(config: ConfigDict) -> list[Benchmark]:
  """config.eval.benchmarks as Benchmarks, in name order; checks datasets, splits and thresholds."""
  out = []
  for name, b in sorted(config.eval.benchmarks.items()):
    spec = dataset_spec(b.dataset)
    if b.split not in spec.splits:
      raise ValueError(f"benchmark {name!r}: dataset {b.dataset!r} has splits {spec.splits}, not {b.split!r}")
    thresholds = tuple(b.get("thresholds") or (spec.threshold,))
    unknown = [t for t in thresholds if t not in report.THRESHOLD_LABELS]
    if unknown:
      raise ValueError(f"benchmark {name!r}: unknown thresholds {unknown}; "
                       f"available: {sorted(report.THRESHOLD_LABELS)}")
    out.append(Benchmark(name, b.dataset, b.split, thresholds, tuple(b.get("alphas") or ALPHAS),
                         b.get("manual_dir", "") or ""))
  if not out:
    raise ValueError("config.eval.benchmarks is empty: name at least one benchmark to evaluate")
  return out


class CorrespondenceTask(ModelTask):
  unit = "pairs"

  def __init__(self, config: ConfigDict, workdir: str):
    self.config = config
    self.model = models.build(config)
    self.benchmarks = benchmarks_from_config(config)
    headline = config.eval.get("headline") or self.benchmarks[0].name
    if headline not in {b.name for b in self.benchmarks}:
      raise ValueError(f"config.eval.headline {headline!r} is not one of the benchmarks "
                       f"{[b.name for b in self.benchmarks]}")
    self.headline = headline
    train_ds = config.data.dataset
    self.sources = {}
    self.sources[train_ds], self.embedded = prepare_sources(config.data, workdir, train_ds)
    for b in self.benchmarks:
      if b.dataset not in self.sources:
        used = {x.split for x in self.benchmarks if x.dataset == b.dataset}
        self.sources[b.dataset], _ = prepare_sources(config.data, workdir, b.dataset,
                                                     b.manual_dir or "", used)
    self._predict_fns = {}

  # --- what the shared loop calls (init, groups, loss and batch fields: ModelTask) --------------------
  def _dataset(self, dataset: str, split: str, batch_size: int, train: bool, seed: int,
               shard_index: int, shard_count: int):
    from input_pipeline.correspondence.pipeline import pair_dataset
    d = self.config.data
    return pair_dataset(self.sources[dataset], split, img_size=d.img_size, batch_size=batch_size,
                        train=train, augment=train and d.augment, seed=seed, max_kps=d.max_kps,
                        shard_index=shard_index, shard_count=shard_count)

  def train_iterator(self, batch_size: int, seed: int, shard_index: int = 0, shard_count: int = 1):
    from input_pipeline.correspondence.pipeline import make_iterator
    ds = self._dataset(self.config.data.dataset, self.config.data.train_split, batch_size, True, seed,
                       shard_index, shard_count)
    return make_iterator(ds, num_workers=self.config.data.num_workers)

  def num_train_steps(self, tcfg: ConfigDict) -> int:
    if tcfg.num_steps > 0:
      return int(tcfg.num_steps)
    pairs = len(self.sources[self.config.data.dataset][self.config.data.train_split])
    return max(1, tcfg.num_epochs * (pairs // tcfg.batch_size))

  # --- evaluation ----------------------------------------------------------------------------------
  def _jitted(self, name: str, mesh):
    key = (name, id(mesh))
    if key not in self._predict_fns:
      repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
      fn = getattr(self.model, name)
      self._predict_fns[key] = jax.jit(fn, in_shardings=(repl, repl, data), out_shardings=data)
    return self._predict_fns[key]

  def _eval_batches(self, mesh, bench: Benchmark):
    from input_pipeline.correspondence.pipeline import make_iterator
    ecfg = self.config.eval
    parallel.check_batch_divisible(ecfg.batch_size, mesh)
    ds = self._dataset(bench.dataset, bench.split, parallel.per_process_batch(ecfg.batch_size), False, 0,
                       jax.process_index(), jax.process_count())
    seen = 0
    for batch in make_iterator(ds, num_workers=self.config.data.num_workers):
      if 0 < ecfg.max_pairs <= seen:
        break
      seen += ecfg.batch_size
      yield batch

  def _validation_benchmark(self) -> Benchmark:
    d = self.config.data
    head = next(b for b in self.benchmarks if b.name == self.headline)
    return Benchmark(f"{d.dataset}_{d.val_split}", d.dataset, d.val_split,
                     (dataset_spec(d.dataset).threshold,), head.alphas, d.manual_dir)

  def evaluate(self, params, model_state, mesh, workdir: str, step: int, tag: str,
               periodic: bool = False) -> dict:
    """PCK on every benchmark (periodic evaluations during training: the training dataset's
    config.data.val_split); on the fresh model also the raw-correlation argmax baseline."""
    methods = {"model": "predict"}
    if tag == "before":
      methods["raw_argmax_baseline"] = "predict_raw_argmax"
    benches = [self._validation_benchmark()] if periodic else self.benchmarks
    headline = benches[0].name if periodic else self.headline
    scalars = {}
    for bench in benches:
      results, tables = self._evaluate_benchmark(params, model_state, mesh, workdir, bench, methods, tag)
      for m, per_threshold in results.items():
        prefix = "" if m == "model" else f"{m}/"
        for kind, result in per_threshold.items():
          label = bench.label(kind)
          numbers = {k: v for k, v in result.items() if isinstance(v, (int, float))}
          scalars.update({f"{prefix}{k}/{label}": v for k, v in numbers.items()})
          if bench.name == headline and kind == bench.thresholds[0]:
            scalars.update({f"{prefix}{k}": v for k, v in numbers.items()})
        if jax.process_index() == 0:
          report.write_report(workdir, f"{tag}_{m}_{bench.name}", step, bench, per_threshold,
                              {kind: tables[(m, kind)] for kind in per_threshold})
    return scalars

  def _evaluate_benchmark(self, params, model_state, mesh, workdir, bench: Benchmark, methods: dict,
                          tag: str) -> tuple[dict, dict]:
    """({method: {threshold: PCK result}}, {(method, threshold): text table}) of one benchmark."""
    names = dataset_spec(bench.dataset).category_names()
    accs = {(m, kind): PCKAccumulator(alphas=bench.alphas, category_names=names)
            for m in methods for kind in bench.thresholds}
    figures_left = int(self.config.eval.get("num_figures", 0)) if jax.process_index() == 0 else 0
    img_size = self.config.data.img_size
    for batch in self._eval_batches(mesh, bench):
      inputs = parallel.to_global(self.eval_inputs(batch), mesh)
      host = parallel.gather_rows(batch)
      thresholds = pck_thresholds(host, bench.thresholds, img_size)
      for m, fn_name in methods.items():
        pred = parallel.gather_rows(self._jitted(fn_name, mesh)(params, model_state, inputs))
        for kind, thr in thresholds.items():
          accs[(m, kind)].add(pred, {**host, "pck_thr": thr})
        if m == "model" and figures_left > 0:
          dense = parallel.gather_rows(self._jitted("predict_dense", mesh)(params, model_state, inputs))
          alpha = 0.1 if 0.1 in bench.alphas else bench.alphas[0]
          figures_left -= report.write_figures(os.path.join(workdir, "eval", "figures"),
                                               f"{tag}_{bench.name}", host, pred, dense,
                                               alpha * thresholds[bench.thresholds[0]], figures_left)
    out = {}
    for (m, kind), acc in accs.items():
      out.setdefault(m, {})[kind] = acc.result()
    return out, {key: acc.format_table() for key, acc in accs.items()}


def pck_thresholds(batch: dict, kinds, img_size: int) -> dict:
  """{kind: PCK threshold [B]} of a host batch, from its target keypoints, mask and box."""
  return {kind: pck_threshold(kind, batch["trg_kps"], batch["kp_mask"], batch["trg_bbox"],
                              img_size=img_size) for kind in kinds}
