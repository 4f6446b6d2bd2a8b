"""Official re-ID strong-baseline encoder state_dict -> jaxmatch `BaselineModel` variables (and back).

Accepted layouts (keys after an optional DataParallel `module.` prefix):
* NFormer's `nformer_model.pth`: the encoder under `backbone.` (`backbone.base.*` torchvision-named
  ResNet without fc, `backbone.projection.*` Linear(2048 -> 256), `backbone.bottleneck.*` BNNeck
  BatchNorm1d, `backbone.classifier.weight`) next to the neighbour transformer's `nformer.*` keys, which
  are not part of this model and are ignored with that reason;
* a plain BoT (reid-strong-baseline) checkpoint: the same keys without `backbone.` (`base.*`,
  `bottleneck.*`, `classifier.*`) and no projection; with NECK 'no' BoT has no `bottleneck` and a
  classifier with bias.

One table (`baseline_tensors`) lists every tensor with its torch key, torch shape and flax location;
`baseline_from_torch` and `baseline_to_torch` both walk it, so they cannot disagree, and the parity tests
map gradients and BatchNorm statistics back to official names through it. `num_batches_tracked` is
ignored (it only matters for momentum=None; the official BatchNorms use 0.1).

Not in the checkpoint: the center-loss centres (the official `CenterLoss` is a separate criterion that
the training script never saves). When config.model.center_loss_weight > 0 they are drawn fresh, N(0, 1)
as officially, from `seed`. The classifier must cover config.model.num_classes identities;
`drop_classifier=True` discards the checkpoint's classifier (trained on other identities) and starts a
new one with the official N(0, 0.001^2) init.
"""
from __future__ import annotations

from typing import Mapping

import jax
import numpy as np

from jaxmatch.convert.keys import CheckpointMismatchError, KeyAccountant, set_path
from jaxmatch.convert.resnet import Tensor, resnet_tensors, tensors_from_torch, tensors_to_torch
from jaxmatch.convert.torch_io import strip_prefix
from jaxmatch.models.resnet import EXPANSION, stage_features

NFORMER_PREFIX = "backbone."  # the encoder inside NFormer's wrapper
NFORMER_REASON = ("NFormer neighbour-transformer head: not part of the strong baseline (the encoder is "
                  "converted on its own)")
NUM_BATCHES_REASON = ("BatchNorm num_batches_tracked only matters for momentum=None (cumulative average); "
                      "every official encoder BatchNorm uses momentum 0.1")
DROPPED_CLASSIFIER_REASON = ("classifier dropped on request (trained on other identities); a new one is "
                             "initialised")
RESNET_WIDTH = stage_features(4) * EXPANSION  # pooled layer4 channels (2048), the projection's input


def check_official_layout(model_cfg) -> None:
  """Official BoT / NFormer encoders have no ReLU in the stem; their weights only mean that network."""
  if bool(model_cfg.get("stem_relu", True)):
    raise ValueError("official BoT / NFormer encoders have no ReLU between the stem's bn1 and max-pool; set "
                     "config.model.stem_relu=False to load their weights")


def _model(model_cfg):
  from jaxmatch.models.reid.baseline import NECKS, BaselineModel
  neck = model_cfg.get("neck", "bnneck")
  if neck not in NECKS:
    raise ValueError(f"config.model.neck must be one of {NECKS}, got {neck!r}")
  return BaselineModel(model_cfg)


def detect_prefix(state_dict: Mapping) -> str:
  """'backbone.' for NFormer's wrapper, '' for a plain BoT checkpoint (keys `base.*`)."""
  return NFORMER_PREFIX if any(k.startswith(NFORMER_PREFIX + "base.") for k in state_dict) else ""


def head_tensors(model_cfg, prefix: str = "", with_classifier: bool = True) -> list[Tensor]:
  """Projection (embed_dim > 0), BNNeck BatchNorm1d and classifier, official names <-> flax paths."""
  model = _model(model_cfg)
  dim, num_classes = model.feat_dim, int(model_cfg.num_classes)
  tensors = []
  if model_cfg.get("embed_dim", 0):
    tensors += [Tensor(f"{prefix}projection.weight", (dim, RESNET_WIDTH), "params", ("projection", "kernel")),
                Tensor(f"{prefix}projection.bias", (dim,), "params", ("projection", "bias"))]
  if model_cfg.get("neck", "bnneck") == "bnneck":
    bn = ("neck", "bottleneck")
    tensors += [Tensor(f"{prefix}bottleneck.weight", (dim,), "params", bn + ("scale",)),
                Tensor(f"{prefix}bottleneck.bias", (dim,), "params", bn + ("bias",)),
                Tensor(f"{prefix}bottleneck.running_mean", (dim,), "batch_stats", bn + ("mean",)),
                Tensor(f"{prefix}bottleneck.running_var", (dim,), "batch_stats", bn + ("var",))]
    classifier = [Tensor(f"{prefix}classifier.weight", (num_classes, dim), "params",
                         ("neck", "classifier", "kernel"))]
  else:  # BoT NECK 'no': nn.Linear(in_planes, num_classes) with bias, straight on the pooled feature
    classifier = [Tensor(f"{prefix}classifier.weight", (num_classes, dim), "params",
                         ("classifier", "kernel")),
                  Tensor(f"{prefix}classifier.bias", (num_classes,), "params", ("classifier", "bias"))]
  return tensors + (classifier if with_classifier else [])


def baseline_tensors(model_cfg, prefix: str = NFORMER_PREFIX, with_classifier: bool = True) -> list[Tensor]:
  """Every official encoder tensor (ResNet `base.*` + head) with its flax location, in state_dict order."""
  base = [t._replace(path=("backbone",) + t.path)
          for t in resnet_tensors(_model(model_cfg).stage_sizes, prefix=f"{prefix}base.")]
  return base + head_tensors(model_cfg, prefix, with_classifier)


def _add_fresh_head(params: dict, model_cfg, seed: int, with_classifier: bool) -> None:
  """Adds what the checkpoint does not provide: centres (and a dropped classifier), official inits."""
  from jaxmatch.losses import init_centers
  from jaxmatch.models.reid.bnneck import classifier_init
  num_classes, dim = int(model_cfg.num_classes), _model(model_cfg).feat_dim
  center_key, classifier_key = jax.random.split(jax.random.key(seed))
  if model_cfg.get("center_loss_weight", 0.0):
    params["centers"] = np.asarray(init_centers(center_key, num_classes, dim))
  if with_classifier:
    where = ("neck", "classifier") if model_cfg.get("neck", "bnneck") == "bnneck" else ("classifier",)
    set_path(params, where + ("kernel",), np.asarray(classifier_init(classifier_key, (dim, num_classes))))
    if where == ("classifier",):
      set_path(params, where + ("bias",), np.zeros((num_classes,), np.float32))


def _shape(sd: Mapping, key: str) -> tuple[int, ...] | None:
  return tuple(np.shape(sd[key])) if key in sd else None


def _hints(sd: Mapping, model_cfg, prefix: str) -> list[str]:
  """Likely causes of a mismatch, in the config fields that fix them."""
  hints = []
  proj = _shape(sd, f"{prefix}projection.weight")
  embed = int(model_cfg.get("embed_dim", 0) or 0)
  if proj and proj[0] != embed:
    hints.append(f"the checkpoint projects {proj[1]} -> {proj[0]} before the neck (NFormer's encoder): "
                 f"set config.model.embed_dim={proj[0]}")
  if not proj and embed:
    hints.append("the checkpoint has no projection (a plain BoT encoder): set config.model.embed_dim=0")
  cls = _shape(sd, f"{prefix}classifier.weight")
  if cls and cls[0] != int(model_cfg.num_classes):
    hints.append(f"the checkpoint's classifier covers {cls[0]} training identities, config.model.num_classes "
                 f"is {model_cfg.num_classes}: set it to {cls[0]}, or convert with drop_classifier=True to "
                 "start a new classifier")
  if not any(k.startswith(f"{prefix}base.") for k in sd):
    hints.append("expected the ResNet under 'backbone.base.*' (NFormer) or 'base.*' (BoT)")
  return hints


def _finish(acc: KeyAccountant, sd: Mapping, model_cfg, prefix: str) -> None:
  try:
    acc.finish()
  except CheckpointMismatchError as e:
    hints = _hints(sd, model_cfg, prefix)
    if not hints:
      raise
    raise CheckpointMismatchError(f"{e}\n  hints:\n" + "\n".join(f"    {h}" for h in hints)) from None


def baseline_from_torch(state_dict: Mapping[str, np.ndarray], model_cfg, drop_classifier: bool = False,
                        seed: int = 0) -> dict:
  """An official BoT / NFormer encoder state_dict -> {'params', 'batch_stats'} of BaselineModel (numpy).

  Raises CheckpointMismatchError listing every missing, unexpected and mis-shaped key (with hints for
  embed_dim / num_classes), ValueError for a config the official code cannot have produced.
  """
  check_official_layout(model_cfg)
  sd = strip_prefix(state_dict)
  prefix = detect_prefix(sd)
  acc = KeyAccountant(sd, what="BoT / NFormer encoder checkpoint")
  variables = encoder_from_torch(acc, model_cfg, prefix, drop_classifier)
  _finish(acc, sd, model_cfg, prefix)
  _add_fresh_head(variables["params"], model_cfg, seed, with_classifier=drop_classifier)
  return variables


def encoder_from_torch(acc: KeyAccountant, model_cfg, prefix: str = NFORMER_PREFIX,
                       drop_classifier: bool = False) -> dict:
  """Claims every official key in `acc` (mapped, or ignored with a reason in acc.ignored); the caller's
  acc.finish() raises on the rest. Returns the checkpoint's variables (no centres, no dropped classifier)."""
  tensors = baseline_tensors(model_cfg, prefix, with_classifier=not drop_classifier)
  variables = tensors_from_torch(acc, tensors)
  acc.ignore_matching(lambda k: k.endswith("num_batches_tracked"), NUM_BATCHES_REASON)
  acc.ignore_matching(lambda k: k.startswith("nformer."), NFORMER_REASON)
  if drop_classifier:
    acc.ignore_matching(lambda k: k.startswith(f"{prefix}classifier."), DROPPED_CLASSIFIER_REASON)
  return variables


def baseline_to_torch(variables: Mapping, model_cfg, prefix: str = NFORMER_PREFIX) -> dict[str, np.ndarray]:
  """Inverse of `baseline_from_torch` for the collections present (variables, or gradients: 'params').

  The centres have no official key and are left out; so is a missing classifier.
  """
  collections = {c: {k: v for k, v in variables[c].items() if k != "centers"}
                 for c in ("params", "batch_stats") if c in variables}
  params = collections.get("params", {})
  has_classifier = "classifier" in params or "classifier" in params.get("neck", {})
  return tensors_to_torch(collections, baseline_tensors(model_cfg, prefix, with_classifier=has_classifier))


def classifier_rows(state_dict: Mapping) -> int | None:
  """Number of identities the checkpoint's classifier covers (None without a classifier)."""
  sd = strip_prefix(state_dict)
  weight = sd.get(f"{detect_prefix(sd)}classifier.weight")
  return None if weight is None else int(np.shape(weight)[0])


def from_torch(config, state_dict: Mapping[str, np.ndarray], drop_classifier: bool = False) -> dict:
  """The model contract's converter; fresh centres (and a dropped classifier) are drawn from train.seed."""
  return baseline_from_torch(state_dict, config.model, drop_classifier=drop_classifier,
                             seed=int(config.train.get("seed", 0)))


def complete_config(config, state_dict: Mapping[str, np.ndarray]) -> None:
  """Sizes the classifier from the checkpoint when the recipe leaves num_classes to the training ids."""
  if config.model.get("num_classes"):
    return
  rows = classifier_rows(state_dict)
  if rows is None:
    raise ValueError("the checkpoint has no classifier to size the model by: set --config.model.num_classes")
  config.model.num_classes = rows


def imagenet_start(config, state_dict: Mapping[str, np.ndarray], variables: Mapping) -> dict:
  """The official start: every torchvision key but fc into the ResNet backbone; neck, classifier and
  centres keep their fresh initialisation."""
  if config.model.get("stage_sizes"):
    raise ValueError("config.model.pretrained loads a torchvision ResNet; leave stage_sizes unset")
  from jaxmatch.convert.resnet import backbones_from_torchvision
  return backbones_from_torchvision(state_dict, int(config.model.get("depth", 50)), variables)
