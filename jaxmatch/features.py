"""Feature extraction, the one place: test-time features of every image of a re-ID split (a dataset split
or a folder of loose images), used by the re-ID evaluation and by `python -m jaxmatch.extract`.

The model is fed exactly the batch fields its contract names (image, and camera / view for models with
side information), mapped from the pipeline's keys. With config.eval.flip_average the features of each
image and its mirror image are summed.
"""
from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np
from ml_collections import ConfigDict

from input_pipeline.errors import DatasetLayoutError
from input_pipeline.reid.market1501 import IMAGE_SUFFIXES, parse_pid_cam
from input_pipeline.reid.splits import ReidSplit
from jaxmatch import models, parallel
from jaxmatch.tasks.base import select_fields
from jaxmatch.tasks.side_info import SideInfo

# The model's batch fields -> the re-ID pipeline's keys.
REID_FIELD_NAMES = {"camera": "camid", "view": "viewid"}


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


class FeatureExtractor:
  """`extract(params, model_state, mesh, split) -> [N, D]` float32 features in record order, with the
  model's jitted `embed` compiled once per mesh."""

  def __init__(self, model, config: ConfigDict):
    self.model, self.config = model, config
    self.fields = models.contract_of(config).eval_fields
    self.side_info = SideInfo.from_config(config)
    self._embed = {}

  def _jitted(self, mesh):
    if id(mesh) not in self._embed:
      repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
      self._embed[id(mesh)] = jax.jit(self.model.embed, in_shardings=(repl, repl, data), out_shardings=data)
    return self._embed[id(mesh)]

  def extract(self, params, model_state, mesh, split) -> np.ndarray:
    from input_pipeline.reid.pipeline import make_iterator, reid_eval_dataset
    d, e = self.config.data, self.config.eval
    parallel.check_batch_divisible(e.batch_size, mesh)
    ds = reid_eval_dataset(split, img_size=tuple(d.img_size),
                           batch_size=parallel.per_process_batch(e.batch_size),
                           shard_index=jax.process_index(), shard_count=jax.process_count(),
                           flip=bool(e.flip_average), augment=d.augment)
    embed = self._jitted(mesh)
    views = ("image", "image_flip") if e.flip_average else ("image",)
    feats, index = [], []
    for batch in make_iterator(ds, num_workers=d.num_workers):
      f = sum(parallel.gather_rows(embed(params, model_state, parallel.to_global(
          self.inputs(batch, view), mesh))) for view in views)
      keep = parallel.gather_rows(batch["index"])
      feats.append(f[keep >= 0])
      index.append(keep[keep >= 0])
    order = np.argsort(np.concatenate(index), kind="stable")
    return np.concatenate(feats)[order]

  def inputs(self, batch: dict, view: str = "image") -> dict:
    """The model's eval fields of a pipeline batch, the image taken from `view` (the mirror image)."""
    inputs = select_fields({**batch, "image": batch[view]}, self.fields, REID_FIELD_NAMES, "evaluation batch")
    valid = batch.get("valid")
    if valid is not None:  # padding rows carry id -1; give them row 0 rather than an error
      inputs = {k: (np.where(valid, v, self.side_info.ids[k][0] if self.side_info.ids[k] else 0)
                    if k in ("camera", "view") else v) for k, v in inputs.items()}
    return self.side_info.apply(inputs, "evaluation images")


def extract_to_files(workdir: str, split: ReidSplit, output: str, *, step: int | None = None,
                     batch_size: int | None = None, fixed_camera: int | None = None,
                     fixed_view: int | None = None) -> tuple[str, str]:
  """Writes `output` (.npy features) and its .json metadata; returns both paths. `fixed_camera` /
  `fixed_view`: the side-information row for images whose camera / view the model's table lacks."""
  from jaxmatch.tasks.restore import load_trained
  mesh = parallel.make_mesh(None)
  config, model, params, model_state, step = load_trained(workdir, step, mesh)
  if batch_size:
    config.eval.batch_size = int(batch_size)
  for key, value in (("fixed_camera", fixed_camera), ("fixed_view", fixed_view)):
    if value is not None:
      config.eval[key] = int(value)
  feats = FeatureExtractor(model, config).extract(params, model_state, mesh, split)
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
