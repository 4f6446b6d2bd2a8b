"""Where re-ID data comes from: the user's datasets as distributed, or the embedded synthetic Market.

Each dataset is named like the builder registry (market1501, msmt17, cuhk03_np, ...). Its folder is
`config.data.folders.<dataset>` when given (it must have the real layout: an error otherwise, never a
silent fallback), else `<manual root>/<usual folder name>` when that exists. With neither, the
training dataset is replaced by the embedded synthetic dataset (Market-1501 layout, written into the
workdir and read by the real Market reader), with a printed warning; an evaluation-only dataset that is
missing is an error, because a cross-dataset number on stand-in data would be misleading.
"""
from __future__ import annotations

import logging
import os

from ml_collections import ConfigDict

from input_pipeline.errors import DatasetLayoutError
from input_pipeline.manual_root import default_manual_root

# The folder each dataset unpacks to, looked for under the manual root.
DEFAULT_FOLDERS = {
    "market1501": "Market-1501-v15.09.15", "dukemtmc_reid": "DukeMTMC-reID",
    "occluded_duke": "Occluded_Duke", "msmt17": "MSMT17_V1", "randperson": "randperson_subset",
    "cuhk03_np": "cuhk03-np", "cuhk03_classic": "cuhk03_release", "veri776": "VeRi",
    "vehicleid": "VehicleID_V1.0", "own_folder": "",
}
EMBEDDED = "embedded_market1501"


def _dataset_options(data_cfg: ConfigDict, dataset: str) -> dict:
  options = data_cfg.get("options") or {}
  return dict(options.get(dataset, {}) or {})


def _default_folder(dataset: str, options: dict) -> str | None:
  name = DEFAULT_FOLDERS.get(dataset)
  if dataset == "msmt17" and options.get("version") == "V2":
    name = "MSMT17_V2"
  if not name:
    return None
  path = os.path.join(default_manual_root(), name)
  return path if os.path.isdir(path) else None


def dataset_folder(data_cfg: ConfigDict, dataset: str) -> str | None:
  """The configured or default folder of `dataset`, or None when it is not on this machine."""
  from input_pipeline.reid.builder import READERS
  if dataset not in READERS:
    raise ValueError(f"unknown re-ID dataset {dataset!r}; available: {sorted(READERS)}")
  configured = (data_cfg.get("folders") or {}).get(dataset, "")
  if configured:
    if not os.path.isdir(os.path.expanduser(configured)):
      raise DatasetLayoutError(f"config.data.folders.{dataset} = {configured!r} is not a folder")
    return configured
  return _default_folder(dataset, _dataset_options(data_cfg, dataset))


def _write_embedded(data_cfg: ConfigDict, workdir: str) -> str:
  from input_pipeline.reid.synthetic_market import write_synthetic_market
  emb = data_cfg.embedded
  root = os.path.join(workdir, "embedded_data")
  folder = os.path.join(root, "Market-1501-v15.09.15")
  if not os.path.isdir(folder):
    folder = write_synthetic_market(root, num_train_ids=emb.num_train_ids, num_test_ids=emb.num_test_ids,
                                    seed=emb.seed, images_per_id=emb.images_per_id)
  return folder


class ReidData:
  """Prepares (once) and opens the splits of the training and evaluation datasets."""

  def __init__(self, data_cfg: ConfigDict, workdir: str, train_dataset: str, eval_datasets):
    self.cfg, self.workdir = data_cfg, workdir
    self.train_dataset = train_dataset
    self.embedded = dataset_folder(data_cfg, train_dataset) is None
    for name in eval_datasets:
      if name != train_dataset and dataset_folder(data_cfg, name) is None:
        raise DatasetLayoutError(
            f"evaluation dataset {name!r} was not found: set --config.data.folders.{name}=PATH (the folder "
            f"as distributed, e.g. {DEFAULT_FOLDERS.get(name) or 'your folder'}) or put it under "
            f"{default_manual_root()}")
    if self.embedded:
      msg = (f"No {train_dataset} dataset found (config.data.folders.{train_dataset} or "
             f"{default_manual_root()}); training and evaluating on the embedded synthetic dataset in "
             "Market-1501 layout instead.")
      logging.warning(msg)
      print(msg, flush=True)

  def _resolve(self, dataset: str) -> tuple[str, str, dict]:
    """(reader name, folder, options) after the embedded substitution."""
    if dataset == self.train_dataset and self.embedded:
      return "market1501", "", {}
    return dataset, dataset_folder(self.cfg, dataset), _dataset_options(self.cfg, dataset)

  def _data_dir(self, dataset: str) -> str:
    if dataset == self.train_dataset and self.embedded:
      return os.path.join(self.workdir, "tfds")
    return self.cfg.data_dir or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")

  def prepare(self, datasets) -> None:
    """Builds the TFDS copies; in multi-process jobs process 0 builds while the others wait."""
    import jax
    from jax.experimental import multihost_utils

    from input_pipeline.reid.splits import prepare_reid
    if jax.process_index() == 0:
      for dataset in dict.fromkeys(datasets):
        name, folder, options = self._resolve(dataset)
        if dataset == self.train_dataset and self.embedded:
          folder = _write_embedded(self.cfg, self.workdir)
        prepare_reid(name, folder, self._data_dir(dataset), **options)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("jaxmatch: re-ID datasets prepared")

  def split(self, dataset: str, split: str):
    from input_pipeline.reid.splits import reid_split
    name, _, options = self._resolve(dataset)
    return reid_split(name, split, self._data_dir(dataset), **options)

  def label(self, dataset: str) -> str:
    return f"{dataset} (embedded synthetic)" if dataset == self.train_dataset and self.embedded else dataset
