"""Rebuilding a trained model from its workdir: the effective config and the (latest) checkpoint."""
from __future__ import annotations

import json
import os

from ml_collections import ConfigDict

from jaxmatch import models, parallel
from jaxmatch.tasks.base import ModelOnlyTask
from jaxmatch.train import checkpoint as ckpt
from jaxmatch.train import loop


def workdir_config(workdir: str) -> ConfigDict:
  """The effective configuration a training run wrote (config.json) of a re-ID model."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: extraction needs a workdir written by training "
                            "(python -m jaxmatch.main --config configs/<recipe>.py --workdir DIR)")
  with open(path, encoding="utf-8") as f:
    config = ConfigDict(json.load(f))
  if config.get("task") != "reid":
    raise ValueError(f"{workdir} holds a {config.get('task')!r} model; feature extraction is for re-ID models")
  return config


def load_trained(workdir: str, step: int | None = None, mesh=None):
  """(config, model, params, model_state, step) of a workdir's checkpoint, on `mesh`."""
  config = workdir_config(workdir)
  model = models.build(config)
  mesh = mesh or parallel.make_mesh(None)
  state, _ = loop.init_state(ModelOnlyTask(config, model), config.train, mesh, int(config.train.seed))
  manager = ckpt.make_manager(workdir, int(config.train.keep_checkpoints), with_data=False)
  if manager.latest_step() is None:
    raise ckpt.CheckpointError(f"no checkpoint in {ckpt.checkpoint_dir(workdir)}")
  state, meta = ckpt.restore(manager, ckpt.abstract_like(state, parallel.replicated(mesh)), step=step)
  manager.close()
  return config, model, state.params, state.model_state, int(meta["step"])
