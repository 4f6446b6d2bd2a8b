"""Feature extraction with a trained re-ID model: a folder of images or a dataset split -> features.

The model, its weights and the preprocessing come from a training workdir: its `config.json` (the
effective configuration, with the classifier size) and its latest (or a chosen) checkpoint. Outputs
are `<name>.npy` (float32 [N, D], the model's test-time feature) and `<name>.json` (file names and,
where known, pid / camera / viewpoint per row, plus where the features came from).
"""
from __future__ import annotations

import json
import os
import pathlib

import numpy as np
from ml_collections import ConfigDict

from input_pipeline.errors import DatasetLayoutError
from input_pipeline.reid.market1501 import IMAGE_SUFFIXES, parse_pid_cam
from input_pipeline.reid.splits import ReidSplit
from jaxmatch.tasks.base import ModelTask


class _FileSource:
  """source[i] -> {'image': the file's bytes}; picklable for grain worker processes."""

  def __init__(self, paths: list[str]):
    self._paths = paths

  def __len__(self) -> int:
    return len(self._paths)

  def __getitem__(self, i: int) -> dict:
    with open(self._paths[i], "rb") as f:
      return {"image": f.read()}

  def __repr__(self) -> str:
    return f"_FileSource({len(self._paths)} files)"


def folder_split(folder) -> ReidSplit:
  """Every image under `folder` (recursively, sorted); pid/camera parsed from `<pid>_c<cam>...` names,
  -1 where a name does not follow that pattern."""
  root = pathlib.Path(folder).expanduser()
  if not root.is_dir():
    raise DatasetLayoutError(f"{root} is not a folder of images")
  paths = sorted(p for p in root.rglob("*")
                 if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
  if not paths:
    raise DatasetLayoutError(f"{root} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
  names = [str(p.relative_to(root)) for p in paths]
  ids = [parse_pid_cam(p.name) or (-1, -1) for p in paths]
  pids = np.array([i[0] for i in ids], np.int64)
  camids = np.array([i[1] for i in ids], np.int64)
  return ReidSplit(dataset="folder", split=str(root), source=_FileSource([str(p) for p in paths]),
                   pids=pids, camids=camids, viewids=np.full(len(paths), -1, np.int64), names=names)


def workdir_config(workdir: str) -> ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: extraction needs a workdir written by training "
                            "(python -m jaxmatch.main --config configs/<recipe>.py --workdir DIR)")
  with open(path, encoding="utf-8") as f:
    config = ConfigDict(json.load(f))
  if config.get("task") != "reid":
    raise ValueError(f"{workdir} holds a {config.get('task')!r} model; feature extraction is for re-ID models")
  return config


class _Restorable(ModelTask):
  """What loop.init_state needs to rebuild the train-state layout of a saved run."""

  def __init__(self, model, steps_per_epoch: int = 1):
    self.model, self.steps_per_epoch = model, steps_per_epoch

  def load_pretrained(self, params, model_state):
    return params, model_state  # the checkpoint replaces every weight


def load_trained(workdir: str, step: int | None = None, mesh=None):
  """(config, model, params, model_state, step) of a workdir's checkpoint, on `mesh`."""
  from jaxmatch import models
  from jaxmatch.train import checkpoint as ckpt
  from jaxmatch import parallel
  from jaxmatch.train import loop
  config = workdir_config(workdir)
  model = models.build(config)
  mesh = mesh or parallel.make_mesh(None)
  state, _ = loop.init_state(_Restorable(model), config.train, mesh, int(config.train.seed))
  manager = ckpt.make_manager(workdir, int(config.train.keep_checkpoints), with_data=False)
  if manager.latest_step() is None:
    raise ckpt.CheckpointError(f"no checkpoint in {ckpt.checkpoint_dir(workdir)}")
  state, meta = ckpt.restore(manager, ckpt.abstract_like(state, parallel.replicated(mesh)), step=step)
  manager.close()
  return config, model, state.params, state.model_state, int(meta["step"])


def extract_to_files(workdir: str, split: ReidSplit, output: str, *, step: int | None = None,
                     batch_size: int | None = None) -> tuple[str, str]:
  """Writes `output` (.npy features) and its .json metadata; returns both paths."""
  import jax

  from jaxmatch.tasks.reid import extract_features, jit_embed
  from jaxmatch import parallel
  mesh = parallel.make_mesh(None)
  config, model, params, model_state, step = load_trained(workdir, step, mesh)
  if batch_size:
    config.eval.batch_size = int(batch_size)
  feats = extract_features(jit_embed(model, mesh), params, model_state, mesh, split, config)
  npy = output if output.endswith(".npy") else output + ".npy"
  meta_path = npy[:-4] + ".json"
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(npy)), exist_ok=True)
    np.save(npy, feats.astype(np.float32))
    meta = {"workdir": os.path.abspath(workdir), "step": step, "source": f"{split.dataset}:{split.split}",
            "num_images": int(feats.shape[0]), "feature_dim": int(feats.shape[1]),
            "neck_feat": config.model.get("neck_feat", "after"),
            "l2_normalized": bool(config.model.get("feat_norm", True)),
            "names": [n.decode() if isinstance(n, bytes) else str(n) for n in split.names],
            "pids": split.pids.tolist(), "camids": split.camids.tolist(), "viewids": split.viewids.tolist()}
    with open(meta_path, "w", encoding="utf-8") as f:
      json.dump(meta, f, indent=1)
  return npy, meta_path
