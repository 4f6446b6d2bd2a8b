"""Official TransReID state_dicts (`transformer_120.pth`) -> jaxmatch TransReIDModel variables (and back).

Keys after an optional DDP `module.` prefix: `base.*` (the ViT, timm naming, plus `base.sie_embed`
[T, 1, D]), with JPM `b1.0.*` / `b2.0.*` (block copies) and `b1.1.*` / `b2.1.*` (LayerNorm copies),
`bottleneck[_k].*` BNNecks and `classifier[_k].weight`. Ignored, with their reasons: `base.fc.*` (the
ImageNet head slot, never used), with JPM `base.blocks.{depth-1}.*` and `base.norm.*` (b1 / b2 are
independent copies; the originals never run), and `num_batches_tracked` (momentum 0.1 everywhere).

One table (`transreid_tensors`) drives both directions. A checkpoint of another architecture or dataset
than the config describes raises a ValueError naming each difference (width, depth, JPM, patch grid /
stride, SIE table, classifier) before any key is read.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from jaxmatch.convert.keys import KeyAccountant, set_path
from jaxmatch.convert.resnet import Tensor, tensors_from_torch, tensors_to_torch
from jaxmatch.convert.torch_io import strip_prefix, unwrap_state_dict
from jaxmatch.convert.vit import block_tensors, imagenet_accountant, vit_tensors

FC_REASON = "base.fc: ImageNet classifier slot of the backbone, never used by the re-ID forward"
DEAD_REASON = ("with JPM the backbone runs blocks 0..depth-2 only; its last block and final LayerNorm are "
               "never used (b1 / b2 are independent copies)")
NUM_BATCHES_REASON = "BatchNorm num_batches_tracked only matters for momentum=None; the BNNecks use 0.1"


def _model(model_cfg, img_size):
  from jaxmatch.models.transreid.model import TransReIDModel
  return TransReIDModel(model_cfg, img_size=img_size)


def neck_names(jpm: bool, parts: int) -> list[tuple[str, str, str]]:
  """(official BN name, official classifier name, flax neck name) per branch."""
  names = [("bottleneck", "classifier", "neck")]
  if jpm:
    names += [(f"bottleneck_{k}", f"classifier_{k}", f"neck_{k}") for k in range(1, parts + 1)]
  return names


def transreid_tensors(model_cfg, img_size, with_classifier: bool = True) -> list[Tensor]:
  """Every live official tensor with its flax location, in state_dict order."""
  model = _model(model_cfg, img_size)
  arch, jpm = model.arch, model.jpm
  d = arch.embed_dim
  tensors = vit_tensors(arch, model.grid, "base.", ("base",), num_blocks=arch.depth - 1 if jpm else None,
                        final_norm=not jpm)
  _, rows = model.sie
  if rows:
    tensors.insert(2, Tensor("base.sie_embed", (rows, 1, d), "params", ("sie_embed",)))
  if jpm:
    for b in ("b1", "b2"):
      tensors += block_tensors(f"{b}.0.", (b, "block"), arch)
      tensors += [Tensor(f"{b}.1.weight", (d,), "params", (b, "norm", "scale")),
                  Tensor(f"{b}.1.bias", (d,), "params", (b, "norm", "bias"))]
  num_classes = int(model_cfg.num_classes)
  for bn, cls, neck in neck_names(jpm, int(model_cfg.get("num_parts", 4))):
    if with_classifier:
      tensors.append(Tensor(f"{cls}.weight", (num_classes, d), "params", (neck, "classifier", "kernel")))
    tensors += [Tensor(f"{bn}.weight", (d,), "params", (neck, "bottleneck", "scale")),
                Tensor(f"{bn}.bias", (d,), "params", (neck, "bottleneck", "bias")),
                Tensor(f"{bn}.running_mean", (d,), "batch_stats", (neck, "bottleneck", "mean")),
                Tensor(f"{bn}.running_var", (d,), "batch_stats", (neck, "bottleneck", "var"))]
  return tensors


# ------------------------------------------------------------------ what the checkpoint is

def _depth(sd: Mapping) -> int:
  ids = {int(k.split(".")[2]) for k in sd if k.startswith("base.blocks.")}
  return max(ids) + 1 if ids else 0


def describe(sd: Mapping) -> dict:
  """Architecture and dataset facts readable from an official state_dict."""
  shape = lambda k: tuple(np.shape(sd[k])) if k in sd else None  # noqa: E731
  cls_token, classifier, sie = shape("base.cls_token"), shape("classifier.weight"), shape("base.sie_embed")
  return {"embed_dim": cls_token[-1] if cls_token else None, "depth": _depth(sd),
          "jpm": any(k.startswith("b1.") for k in sd),
          "num_patches": shape("base.pos_embed")[1] - 1 if shape("base.pos_embed") else None,
          "sie_rows": sie[0] if sie else 0, "num_classes": classifier[0] if classifier else None}


def check_checkpoint(sd: Mapping, model_cfg, img_size) -> None:
  """ValueError naming every difference between the checkpoint and the configured model."""
  have, model = describe(sd), _model(model_cfg, img_size)
  grid = model.grid
  want = {"embed_dim": model.arch.embed_dim, "depth": model.arch.depth, "jpm": model.jpm,
          "num_patches": grid[0] * grid[1], "sie_rows": model.sie[1],
          "num_classes": int(model_cfg.num_classes)}
  fixes = {"embed_dim": "backbone / embed_dim", "depth": "backbone / depth", "jpm": "jpm",
           "num_patches": f"stride / data.img_size (config: grid {grid} at stride {model_cfg.get('stride', 12)})",
           "sie_rows": "sie_camera / sie_view / num_cameras / num_views", "num_classes": "num_classes"}
  diffs = [f"  {k}: checkpoint {have[k]}, config {want[k]} (config.model {fixes[k]})"
           for k in want if have[k] != want[k]]
  if diffs:
    raise ValueError("the TransReID checkpoint is for another architecture / dataset than the config:\n"
                     + "\n".join(diffs))


# ------------------------------------------------------------------ conversion

def transreid_from_torch(state_dict: Mapping, model_cfg, img_size) -> dict:
  """Official state_dict -> {'params', 'batch_stats'} (numpy); every key mapped or ignored with a reason."""
  sd = strip_prefix(dict(unwrap_state_dict(state_dict)))
  check_checkpoint(sd, model_cfg, img_size)
  acc = KeyAccountant(sd, what="TransReID checkpoint")
  variables = claim(acc, model_cfg, img_size)
  acc.finish()
  return variables


def claim(acc: KeyAccountant, model_cfg, img_size) -> dict:
  """Maps every live key and ignores the dead ones (the caller finishes)."""
  model = _model(model_cfg, img_size)
  variables = tensors_from_torch(acc, transreid_tensors(model_cfg, img_size))
  acc.ignore_matching(lambda k: k.startswith("base.fc."), FC_REASON)
  acc.ignore_matching(lambda k: k.endswith("num_batches_tracked"), NUM_BATCHES_REASON)
  if model.jpm:
    last = model.arch.depth - 1
    acc.ignore_matching(lambda k: k.startswith(f"base.blocks.{last}.") or k.startswith("base.norm."), DEAD_REASON)
  return variables


def transreid_to_torch(variables: Mapping, model_cfg, img_size) -> dict[str, np.ndarray]:
  """Inverse of transreid_from_torch for the collections present (variables, or gradients: 'params')."""
  collections = {c: variables[c] for c in ("params", "batch_stats") if c in variables}
  return tensors_to_torch(collections, transreid_tensors(model_cfg, img_size))


def from_torch(config, state_dict: Mapping) -> dict:
  """The model contract's converter."""
  return transreid_from_torch(state_dict, config.model, config.data.img_size)


def complete_config(config, state_dict: Mapping) -> None:
  """Classifier size and SIE table size from the checkpoint, where the recipe leaves them unset."""
  sd = strip_prefix(dict(unwrap_state_dict(state_dict)))
  facts, c = describe(sd), config.model
  if not c.get("num_classes"):
    if facts["num_classes"] is None:
      raise ValueError("the checkpoint has no classifier to size the model by: set config.model.num_classes")
    c.num_classes = int(facts["num_classes"])
  rows = facts["sie_rows"]
  cams, views = int(c.get("num_cameras", 0) or 0), int(c.get("num_views", 0) or 0)
  use_cam, use_view = bool(c.get("sie_camera", True)), bool(c.get("sie_view", False))
  if not rows:
    return
  if use_cam and use_view:
    if cams and not views:
      c.num_views = rows // cams
    elif views and not cams:
      c.num_cameras = rows // views
    elif not (cams or views):
      raise ValueError(f"the checkpoint's SIE table has {rows} = cameras * views rows: set config.model."
                       "num_cameras or num_views to split it")
  elif use_cam and not cams:
    c.num_cameras = rows
  elif use_view and not views:
    c.num_views = rows


def imagenet_start(config, state_dict: Mapping, variables: Mapping) -> dict:
  """The official start: the timm ViT / DeiT file into the backbone (pos_embed resized, head / dist
  dropped), then b1 and b2 each a copy of the last block and final LayerNorm; SIE, necks and classifiers
  keep their fresh initialisation."""
  model = _model(config.model, config.data.img_size)
  arch, jpm = model.arch, model.jpm
  acc, timm = imagenet_accountant(state_dict, arch, config.data.img_size, config.model.get("stride", 12))
  acc.finish()
  timm = timm["params"]
  out = {"params": _copy_tree(variables["params"]), **{k: v for k, v in variables.items() if k != "params"}}
  params = out["params"]
  last = arch.depth - 1
  for key, value in timm.items():
    if jpm and key in (f"blocks_{last}", "norm"):
      continue
    set_path(params, ("base", key), value)
  if jpm:
    for branch in ("b1", "b2"):
      set_path(params, (branch, "block"), _copy_tree(timm[f"blocks_{last}"]))
      set_path(params, (branch, "norm"), _copy_tree(timm["norm"]))
  return out


def _copy_tree(tree):
  if isinstance(tree, Mapping):
    return {k: _copy_tree(v) for k, v in tree.items()}
  return np.array(tree)
