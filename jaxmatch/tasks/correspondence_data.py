"""Where the correspondence data comes from: the user's real dataset, or the embedded synthetic one.

A folder the user names must hold the real layout (an error otherwise, never a silent fallback). With no
folder configured, the default location is used when present; else the embedded synthetic dataset (same
on-disk layout, exact ground truth) is written into the workdir and the real builder reads it.
"""
from __future__ import annotations

import logging
import os

from ml_collections import ConfigDict

DATASET_FOLDERS = {"spair": "SPair-71k"}


def default_manual_root() -> str:
  """TFDS's conventional place for manually downloaded datasets (overridable by $JAXMATCH_DATA)."""
  return os.environ.get("JAXMATCH_DATA",
                        os.path.join(os.path.expanduser("~"), "tensorflow_datasets", "downloads", "manual"))


def _embedded_spair(data_cfg: ConfigDict, workdir: str) -> str:
  from input_pipeline.synthetic_spair import write_synthetic_spair
  root = os.path.join(workdir, "embedded_data")
  folder = os.path.join(root, DATASET_FOLDERS["spair"])
  if not os.path.isdir(folder):
    emb = data_cfg.embedded
    write_synthetic_spair(root, num_pairs={"trn": emb.trn, "val": emb.val, "test": emb.test}, seed=emb.seed)
  return folder


def configured_folder(data_cfg: ConfigDict) -> str | None:
  """The real dataset folder to read (configured, or present at the default location); None: embedded."""
  if data_cfg.dataset not in DATASET_FOLDERS:
    raise ValueError(f"unknown config.data.dataset {data_cfg.dataset!r}; available: {sorted(DATASET_FOLDERS)}")
  if data_cfg.manual_dir:
    return data_cfg.manual_dir
  default = os.path.join(default_manual_root(), DATASET_FOLDERS[data_cfg.dataset])
  return default if os.path.isdir(default) else None


def resolve_manual_dir(data_cfg: ConfigDict, workdir: str) -> tuple[str, bool]:
  """Returns (dataset folder, is_embedded); a real folder must have the real layout."""
  from input_pipeline.spair import validate_spair_layout
  folder = configured_folder(data_cfg)
  if folder is not None:
    validate_spair_layout(folder)  # raises DatasetLayoutError naming the expected layout
    return folder, False
  default = os.path.join(default_manual_root(), DATASET_FOLDERS[data_cfg.dataset])
  msg = (f"No {DATASET_FOLDERS[data_cfg.dataset]} found at {default} and none configured "
         "(--config.data.manual_dir); running on the embedded synthetic dataset.")
  logging.warning(msg)
  print(msg, flush=True)
  return _embedded_spair(data_cfg, workdir), True


def prepare_sources(data_cfg: ConfigDict, workdir: str) -> tuple[dict, bool]:
  """Builds (once) the TFDS ArrayRecord copy and returns its data sources plus is_embedded.

  In a multi-process job process 0 writes and prepares; the others wait at a barrier, then read.
  """
  import jax
  from jax.experimental import multihost_utils

  from input_pipeline.spair import prepare_spair, spair_sources
  embedded = configured_folder(data_cfg) is None
  data_dir = data_cfg.data_dir or (os.path.join(workdir, "tfds") if embedded else
                                   os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))
  if jax.process_index() == 0:
    manual_dir, _ = resolve_manual_dir(data_cfg, workdir)
    prepare_spair(manual_dir, data_dir)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("jaxmatch: dataset prepared")
  return spair_sources(data_dir), embedded
