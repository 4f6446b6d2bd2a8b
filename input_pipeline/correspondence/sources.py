"""Where the correspondence data comes from: the user's real dataset, or the embedded synthetic one.

Datasets: 'spair' (SPair-71k), 'pfpascal' (PF-PASCAL), 'pfwillow' (PF-WILLOW). A folder the user names
must hold the real layout (an error otherwise, never a silent fallback). With no folder configured, the
default location (<manual root>/<dataset folder>) is used when present; else the embedded synthetic
dataset (same on-disk layout, exact ground truth) is written into the workdir and the real builder
reads it. Each dataset is decided on its own, so a recipe may train on a real PF-PASCAL and evaluate on
an embedded SPair (said loudly in the log).
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import os

from ml_collections import ConfigDict

from input_pipeline.manual_root import default_manual_root


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  folder: str          # name of the distributed folder
  module: str          # builder module with validate_/prepare_/..._sources
  stem: str            # function suffix in that module
  threshold: str       # the official PCK threshold kind, as the evaluator names it
  splits: tuple[str, ...]
  categories: str      # name of the category tuple in that module

  def function(self, prefix: str):
    name = f"{prefix}_{self.stem}" if prefix in ("validate", "prepare") else f"{self.stem}_{prefix}"
    if prefix == "validate":
      name += "_layout"
    return getattr(importlib.import_module(self.module), name)

  def category_names(self) -> tuple[str, ...]:
    return getattr(importlib.import_module(self.module), self.categories)


_PKG = "input_pipeline.correspondence"
DATASETS = {
    "spair": DatasetSpec("SPair-71k", f"{_PKG}.spair", "spair", "spair", ("trn", "val", "test"),
                         "SPAIR_CATEGORIES"),
    "pfpascal": DatasetSpec("PF-PASCAL", f"{_PKG}.pfpascal", "pfpascal", "pfpascal",
                            ("trn", "val", "test"), "PFPASCAL_CATEGORIES"),
    "pfwillow": DatasetSpec("PF-WILLOW", f"{_PKG}.pfwillow", "pfwillow", "pfwillow", ("test",),
                            "PFWILLOW_CATEGORIES"),
}
DATASET_FOLDERS = {name: spec.folder for name, spec in DATASETS.items()}
UNUSED_SPLIT_PAIRS = 2   # embedded splits nothing reads still exist, as in the real layout


def dataset_spec(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; available: {sorted(DATASETS)}")
  return DATASETS[name]


def configured_folder(dataset: str, manual_dir: str = "") -> str | None:
  """The real dataset folder to read (configured, or present at the default location); None: embedded."""
  spec = dataset_spec(dataset)
  if manual_dir:
    return manual_dir
  default = os.path.join(default_manual_root(), spec.folder)
  return default if os.path.isdir(default) else None


def embedded_pair_counts(dataset: str, emb: ConfigDict, used_splits) -> dict[str, int]:
  """Pairs per split of the embedded copy: the configured counts where a split is used."""
  return {s: int(emb[s]) if s in used_splits else UNUSED_SPLIT_PAIRS for s in dataset_spec(dataset).splits}


def write_embedded(dataset: str, root: str, counts: dict[str, int], seed: int) -> str:
  """Writes the synthetic dataset under `root` in the distributed layout; returns its folder."""
  if dataset == "spair":
    from input_pipeline.correspondence.synthetic_spair import write_synthetic_spair
    return write_synthetic_spair(root, num_pairs=counts, seed=seed)
  if dataset == "pfpascal":
    from input_pipeline.correspondence.synthetic_pf import write_synthetic_pfpascal
    return write_synthetic_pfpascal(root, num_pairs=counts, seed=seed)
  if dataset == "pfwillow":
    from input_pipeline.correspondence.synthetic_pf import write_synthetic_pfwillow
    return write_synthetic_pfwillow(root, num_pairs=counts["test"], seed=seed)
  raise ValueError(f"no embedded version of dataset {dataset!r}")


def resolve_manual_dir(dataset: str, manual_dir: str, workdir: str, emb: ConfigDict,
                       used_splits=("trn", "val", "test")) -> tuple[str, bool]:
  """Returns (dataset folder, is_embedded); a real folder must have the real layout."""
  spec = dataset_spec(dataset)
  folder = configured_folder(dataset, manual_dir)
  if folder is not None:
    spec.function("validate")(folder)  # raises DatasetLayoutError naming the expected layout
    return folder, False
  default = os.path.join(default_manual_root(), spec.folder)
  msg = (f"No {spec.folder} found at {default} and none configured; running on the embedded "
         "synthetic dataset.")
  logging.warning(msg)
  print(msg, flush=True)
  root = os.path.join(workdir, "embedded_data")
  embedded = os.path.join(root, spec.folder)
  if not os.path.isdir(embedded):
    write_embedded(dataset, root, embedded_pair_counts(dataset, emb, used_splits), int(emb.seed))
  return embedded, True


def prepare_sources(data_cfg: ConfigDict, workdir: str, dataset: str | None = None,
                    manual_dir: str | None = None,
                    used_splits=("trn", "val", "test")) -> tuple[dict, bool]:
  """Builds (once) the TFDS ArrayRecord copy of `dataset` (default config.data.dataset) and returns its
  data sources plus is_embedded. `manual_dir` defaults to config.data.manual_dir for the training
  dataset and to the default location for any other.

  In a multi-process job process 0 writes and prepares; the others wait at a barrier, then read.
  """
  import jax
  from jax.experimental import multihost_utils

  dataset = dataset or data_cfg.dataset
  if manual_dir is None:
    manual_dir = data_cfg.manual_dir if dataset == data_cfg.dataset else ""
  spec = dataset_spec(dataset)
  embedded = configured_folder(dataset, manual_dir) is None
  data_dir = data_cfg.data_dir or (os.path.join(workdir, "tfds") if embedded else
                                   os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))
  if jax.process_index() == 0:
    folder, _ = resolve_manual_dir(dataset, manual_dir, workdir, data_cfg.embedded, used_splits)
    spec.function("prepare")(folder, data_dir)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"jaxmatch: {dataset} prepared")
  return spec.function("sources")(data_dir), embedded
