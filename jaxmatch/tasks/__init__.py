"""Tasks tie a model to its data and evaluation protocol (correspondence: PCK; re-identification: CMC/mAP)."""
from __future__ import annotations

from ml_collections import ConfigDict


def build(config: ConfigDict, workdir: str):
  if config.task == "correspondence":
    from jaxmatch.tasks.correspondence import CorrespondenceTask
    return CorrespondenceTask(config, workdir)
  if config.task == "reid":
    from jaxmatch.tasks.reid import ReidTask
    return ReidTask(config, workdir)
  raise ValueError(f"unknown config.task {config.task!r}; available: correspondence, reid")
