"""Re-identification task: PK-sampled identity batches, a feature model, CMC / mAP / mINP evaluation.

Training reads `config.data.dataset` ('train' split). Evaluation embeds the 'query' and 'gallery'
splits of every dataset in `config.eval.datasets` (cross-dataset evaluation is that one field), ranks on
device (jaxmatch.evaluation.reid, optionally k-reciprocal re-ranked) and writes per dataset
`eval/<tag>_<dataset>.json|.txt` plus a ranked-list picture `eval/figures/<tag>_<dataset>_ranked.png`.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
from ml_collections import ConfigDict

from input_pipeline.reid.sources import ReidData
from jaxmatch import models
from jaxmatch.tasks.base import ModelTask
from jaxmatch import parallel

TRAIN_KEYS = ("image", "label")
# The Market protocol (same pid AND camera dropped) is also CUHK03-NP's, MSMT17's, VeRi's and Duke's.
PROTOCOLS = {"cuhk03_classic": "cuhk03_classic"}
REPORT_RANKS = (1, 5, 10, 20)


def protocol_of(dataset: str) -> str:
  return PROTOCOLS.get(dataset, "market")


class ReidTask(ModelTask):
  unit = "images"

  def __init__(self, config: ConfigDict, workdir: str):
    self.config = config
    d, e = config.data, config.eval
    self.eval_datasets = tuple(e.datasets) or (d.dataset,)
    self.data = ReidData(d, workdir, d.dataset, self.eval_datasets)
    if self.data.embedded:
      apply_embedded_schedule(config)
    self.data.prepare((d.dataset,) + self.eval_datasets)
    self.train_split = self.data.split(d.dataset, "train")
    config.model.num_classes = int(self.train_split.num_ids)  # the classifier covers the training ids
    self.model = models.build(config)
    self.num_instances = int(d.num_instances)
    self.num_ids_per_batch = _ids_per_batch(config.train.batch_size, self.num_instances)
    from input_pipeline.reid.sampling import nominal_pk_batches
    self.steps_per_epoch = max(1, nominal_pk_batches(self.train_split.pids, self.num_ids_per_batch,
                                                     self.num_instances))
    self._embed_fns = {}

  # --- what the shared loop calls (init, groups and loss: ModelTask) -----------------------------------
  @staticmethod
  def train_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in TRAIN_KEYS}

  def train_iterator(self, batch_size: int, seed: int, shard_index: int = 0, shard_count: int = 1):
    """`batch_size` is this process's share; the sampler plans whole global P x K batches."""
    from input_pipeline.reid.pipeline import make_iterator, reid_train_dataset
    d = self.config.data
    ds = reid_train_dataset([self.train_split], img_size=tuple(d.img_size), batch_size=batch_size,
                            num_instances=self.num_instances, augment=d.augment, seed=seed,
                            shard_index=shard_index, shard_count=shard_count)
    return make_iterator(ds, num_workers=d.num_workers)

  def num_train_steps(self, tcfg: ConfigDict) -> int:
    if tcfg.num_steps > 0:
      return int(tcfg.num_steps)
    return max(1, int(tcfg.num_epochs) * self.steps_per_epoch)

  # --- evaluation ----------------------------------------------------------------------------------
  def extract(self, params, model_state, mesh, split) -> np.ndarray:
    """Features [N, D] (float32, host) of every image of `split`, in record order."""
    if id(mesh) not in self._embed_fns:
      self._embed_fns[id(mesh)] = jit_embed(self.model, mesh)
    return extract_features(self._embed_fns[id(mesh)], params, model_state, mesh, split, self.config)

  def evaluate(self, params, model_state, mesh, workdir: str, step: int, tag: str,
               periodic: bool = False) -> dict:
    del periodic  # re-ID recipes validate on the test protocol, as the official code does
    scalars = {}
    for dataset in self.eval_datasets:
      result = self.evaluate_dataset(params, model_state, mesh, workdir, step, tag, dataset)
      scalars.update({f"{k}/{dataset}": v for k, v in result.items()})
    return scalars

  def evaluate_dataset(self, params, model_state, mesh, workdir, step, tag, dataset) -> dict:
    from jaxmatch.evaluation.reid import evaluate_features
    e = self.config.eval
    query, gallery = self.data.split(dataset, "query"), self.data.split(dataset, "gallery")
    qf, gf = self.extract(params, model_state, mesh, query), self.extract(params, model_state, mesh, gallery)
    protocol = protocol_of(dataset)
    common = dict(metric=e.metric, normalize=False, protocol=protocol, max_rank=min(50, len(gallery)),
                  mesh=mesh, rng=np.random.RandomState(0) if protocol == "cuhk03_classic" else None)
    ids = (query.pids, gallery.pids, query.camids, gallery.camids)
    results = {"": evaluate_features(qf, gf, *ids, **common)}
    if e.rerank:
      common["rng"] = np.random.RandomState(0) if protocol == "cuhk03_classic" else None
      results["rerank/"] = evaluate_features(qf, gf, *ids, **common,
                                             rerank={"k1": e.k1, "k2": e.k2, "lambda": e.lambda_value})
    scalars = {}
    for prefix, res in results.items():
      scalars.update({f"{prefix}{k}": v for k, v in summarize(res).items()})
    if jax.process_index() == 0:
      _report(workdir, tag, step, self.data.label(dataset), dataset, results)
      if e.num_ranked_figures > 0:
        self._ranked_figure(workdir, tag, dataset, query, gallery, qf, gf)
    return scalars

  def _ranked_figure(self, workdir, tag, dataset, query, gallery, qf, gf) -> None:
    from jaxmatch.evaluation.reid import top_k_gallery
    from jaxmatch.visualize.correspondence import save_png
    from jaxmatch.visualize.ranked_list import ranked_list_figure
    e = self.config.eval
    picked = _figure_queries(query, e.num_ranked_figures)
    if not len(picked):
      return
    idx, dist = top_k_gallery(qf[picked], gf, int(e.figure_top_k), metric=e.metric)
    rows = []
    for row, q in enumerate(picked):
      g = [int(i) for i in idx[row]]
      correct = [bool(gallery.pids[i] == query.pids[q]) for i in g]
      rows.append(ranked_list_figure(
          _decoded(query, q), [_decoded(gallery, i) for i in g], correct, distances=list(dist[row]),
          labels=[f"id {gallery.pids[i]} c{gallery.camids[i]}" for i in g]))
    out = os.path.join(workdir, "eval", "figures")
    os.makedirs(out, exist_ok=True)
    save_png(os.path.join(out, f"{tag}_{dataset}_ranked.png"), _stack_rows(rows))


def jit_embed(model, mesh):
  """model.embed jitted with the batch sharded over the mesh and the variables replicated."""
  repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
  return jax.jit(model.embed, in_shardings=(repl, repl, data), out_shardings=data)


def extract_features(embed, params, model_state, mesh, split, config: ConfigDict) -> np.ndarray:
  """Test-time features [N, D] of every image of `split` (anything shaped like ReidSplit), in record
  order; with config.eval.flip_average the features of the image and its mirror image are summed."""
  from input_pipeline.reid.pipeline import make_iterator, reid_eval_dataset
  d, e = config.data, config.eval
  parallel.check_batch_divisible(e.batch_size, mesh)
  ds = reid_eval_dataset(split, img_size=tuple(d.img_size), batch_size=parallel.per_process_batch(e.batch_size),
                         shard_index=jax.process_index(), shard_count=jax.process_count(),
                         flip=bool(e.flip_average), augment=d.augment)
  feats, index = [], []
  for batch in make_iterator(ds, num_workers=d.num_workers):
    views = ("image", "image_flip") if e.flip_average else ("image",)
    f = sum(parallel.gather_rows(embed(params, model_state, parallel.to_global({"image": batch[v]}, mesh)))
            for v in views)
    keep = parallel.gather_rows(batch["index"])
    feats.append(f[keep >= 0])
    index.append(keep[keep >= 0])
  order = np.argsort(np.concatenate(index), kind="stable")
  return np.concatenate(feats)[order]


def apply_embedded_schedule(config: ConfigDict) -> None:
  """The recipe's `embedded_schedule` (a CPU-sized schedule for the synthetic data) over its fields;
  nested sections (e.g. train.learning_rates) are merged field by field."""
  schedule = config.get("embedded_schedule")
  if not schedule:
    return
  changes = []

  def merge(target: ConfigDict, fields, path: str) -> None:
    for key, value in fields.items():
      if key not in target:
        raise ValueError(f"config.embedded_schedule.{path}{key}: config.{path}{key} does not exist")
      if isinstance(target[key], ConfigDict) and hasattr(value, "items"):
        merge(target[key], value, f"{path}{key}.")
      else:
        target[key] = value
        changes.append(f"{path}{key}={value}")

  merge(config, schedule, "")
  print("Embedded data: using the recipe's CPU schedule (" + ", ".join(changes) + ")", flush=True)


def _ids_per_batch(batch_size: int, num_instances: int) -> int:
  if num_instances < 1 or batch_size % num_instances:
    raise ValueError(f"config.train.batch_size ({batch_size}) must be a multiple of config.data.num_instances "
                     f"({num_instances}): batches hold P identities x K images")
  return batch_size // num_instances


def summarize(result: dict) -> dict:
  """The scalars reported for one evaluation, in percent as papers print them."""
  cmc = np.asarray(result["cmc"])
  out = {f"rank{r}": 100.0 * float(cmc[r - 1]) for r in REPORT_RANKS if r <= len(cmc)}
  out.update(mAP=100.0 * float(result["mAP"]), mINP=100.0 * float(result["mINP"]),
             num_valid_queries=int(result["num_valid_queries"]))
  return out


def _figure_queries(query, count: int) -> np.ndarray:
  """Evenly spread queries with distinct identities, so the picture shows several people."""
  _, first = np.unique(query.pids, return_index=True)
  first = np.sort(first)
  if len(first) <= count:
    return first
  return first[np.linspace(0, len(first) - 1, count).round().astype(int)]


def _decoded(split, i: int) -> np.ndarray:
  from input_pipeline.images import decode_image
  name = split.names[i]
  return decode_image(split.source[int(i)]["image"], name.decode() if isinstance(name, bytes) else str(name))


def _stack_rows(rows: list[np.ndarray]) -> np.ndarray:
  width = max(r.shape[1] for r in rows)
  padded = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
  return np.concatenate(padded, axis=0)


def format_table(results: dict) -> str:
  lines = [f"{'':10s}" + "".join(f"{k:>9s}" for k in ("R-1", "R-5", "R-10", "R-20", "mAP", "mINP"))]
  for prefix, res in results.items():
    s = summarize(res)
    vals = [s.get(f"rank{r}", float("nan")) for r in REPORT_RANKS] + [s["mAP"], s["mINP"]]
    lines.append(f"{(prefix.rstrip('/') or 'plain'):10s}" + "".join(f"{v:9.2f}" for v in vals))
  return "\n".join(lines)


def _report(workdir: str, tag: str, step: int, label: str, dataset: str, results: dict) -> None:
  first = next(iter(results.values()))
  header = (f"{label}: query vs gallery (tag {tag}, step {step}, {first['num_valid_queries']} valid queries; "
            "CMC / mAP / mINP in %)")
  table = format_table(results)
  print(f"\n{header}\n{table}\n", flush=True)
  out = os.path.join(workdir, "eval")
  os.makedirs(out, exist_ok=True)
  payload = {"step": step, "dataset": label,
             **{(prefix.rstrip("/") or "plain"): {**summarize(res), "cmc": [float(c) for c in res["cmc"]]}
                for prefix, res in results.items()}}
  with open(os.path.join(out, f"{tag}_{dataset}.json"), "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=2)
  with open(os.path.join(out, f"{tag}_{dataset}.txt"), "w", encoding="utf-8") as f:
    f.write(header + "\n" + table + "\n")
