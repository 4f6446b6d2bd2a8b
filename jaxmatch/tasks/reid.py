"""Re-identification task: PK-sampled identity batches, a feature model, CMC / mAP / mINP evaluation.

Training reads `config.data.dataset` ('train' split). Evaluation embeds the 'query' and 'gallery'
splits of every dataset in `config.eval.datasets` (cross-dataset evaluation is that one field), ranks on
device (jaxmatch.evaluation.reid, optionally k-reciprocal re-ranked) and writes per dataset
`eval/<tag>_<dataset>.json|.txt` plus a ranked-list picture `eval/figures/<tag>_<dataset>_ranked.png`
(jaxmatch.tasks.reid_report). The model receives the batch fields its contract names: image and label,
and camera / view ids for models with side information.
"""
from __future__ import annotations

import jax
import numpy as np
from ml_collections import ConfigDict

from input_pipeline.reid.sources import ReidData
from jaxmatch import models
from jaxmatch.config_utils import apply_embedded_schedule
from jaxmatch.features import REID_FIELD_NAMES, FeatureExtractor
from jaxmatch.tasks import reid_report
from jaxmatch.tasks.base import ModelTask
from jaxmatch.tasks.side_info import SideInfo

# The Market protocol (same pid AND camera dropped) is also CUHK03-NP's, MSMT17's, VeRi's and Duke's.
PROTOCOLS = {"cuhk03_classic": "cuhk03_classic"}


def protocol_of(dataset: str) -> str:
  return PROTOCOLS.get(dataset, "market")


def rerank_options(eval_cfg: ConfigDict) -> dict:
  """config.eval's k-reciprocal re-ranking options in the evaluator's terms."""
  return {"k1": eval_cfg.k1, "k2": eval_cfg.k2, "lambda": eval_cfg.lambda_value,
          "float16_like_transreid": bool(eval_cfg.get("rerank_float16_like_transreid", False))}


class ReidTask(ModelTask):
  unit = "images"
  field_names = REID_FIELD_NAMES

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
    self.side_info = SideInfo.from_split(self.train_split)    # so do the side-information tables
    self.side_info.record(config)
    self.model = models.build(config)
    self.num_instances = int(d.num_instances)
    self.num_ids_per_batch = _ids_per_batch(config.train.batch_size, self.num_instances)
    from input_pipeline.reid.sampling import nominal_pk_batches
    self.steps_per_epoch = max(1, nominal_pk_batches(self.train_split.pids, self.num_ids_per_batch,
                                                     self.num_instances))
    self.features = FeatureExtractor(self.model, config)

  def train_inputs(self, batch: dict) -> dict:
    return self.side_info.apply(super().train_inputs(batch), "training batch")

  # --- what the shared loop calls (init, groups, loss and batch fields: ModelTask) --------------------
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

  def evaluate(self, params, model_state, mesh, workdir: str, step: int, tag: str,
               periodic: bool = False) -> dict:
    del periodic  # re-ID recipes validate on the test protocol, as the official code does
    scalars = {}
    for dataset in self.eval_datasets:
      result = self.evaluate_dataset(params, model_state, mesh, workdir, step, tag, dataset)
      scalars.update({f"{k}/{dataset}": v for k, v in result.items()})
    return scalars

  # --- evaluation ----------------------------------------------------------------------------------
  def evaluate_dataset(self, params, model_state, mesh, workdir, step, tag, dataset) -> dict:
    """Plain (and re-ranked) metrics of one dataset's query vs gallery; process 0 writes the reports."""
    from jaxmatch.evaluation.reid import evaluate_features
    e = self.config.eval
    query, gallery = self.data.split(dataset, "query"), self.data.split(dataset, "gallery")
    qf = self.features.extract(params, model_state, mesh, query)
    gf = self.features.extract(params, model_state, mesh, gallery)
    protocol = protocol_of(dataset)
    common = dict(metric=e.metric, normalize=False, protocol=protocol, max_rank=min(50, len(gallery)),
                  mesh=mesh)
    ids = (query.pids, gallery.pids, query.camids, gallery.camids)
    results = {"": evaluate_features(qf, gf, *ids, **common, rng=_draws(protocol))}
    if e.rerank:
      results["rerank/"] = evaluate_features(qf, gf, *ids, **common, rng=_draws(protocol),
                                             rerank=rerank_options(e))
    scalars = {}
    for prefix, res in results.items():
      scalars.update({f"{prefix}{k}": v for k, v in reid_report.summarize(res).items()})
    if jax.process_index() == 0:
      reid_report.write_report(workdir, tag, step, self.data.label(dataset), dataset, results)
      if e.num_ranked_figures > 0:
        reid_report.write_ranked_figure(workdir, f"{tag}_{dataset}", query, gallery, qf, gf,
                                        int(e.num_ranked_figures), int(e.figure_top_k), e.metric)
    return scalars


def _draws(protocol: str):
  """Classic CUHK03 draws its single-shot gallery at random: every evaluation starts from one seed."""
  return np.random.RandomState(0) if protocol == "cuhk03_classic" else None


def _ids_per_batch(batch_size: int, num_instances: int) -> int:
  if num_instances < 1 or batch_size % num_instances:
    raise ValueError(f"config.train.batch_size ({batch_size}) must be a multiple of config.data.num_instances "
                     f"({num_instances}): batches hold P identities x K images")
  return batch_size // num_instances
