"""Official PyTorch weights -> jaxmatch variables, accounting for every key.

  variables = jaxmatch.convert.from_torch(config, state_dict)   # {'params': ..., 'batch_stats': ...}
  state_dict = jaxmatch.convert.load_state_dict('model.pth')    # weights_only; .safetensors / .npz too

Every official key is mapped or ignored with a stated reason; anything else raises CheckpointMismatchError
listing the missing, unexpected and mis-shaped keys. The command line (`python -m jaxmatch.convert`) writes
the result as a checkpoint that `python -m jaxmatch.main --mode eval` evaluates.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from ml_collections import ConfigDict

from jaxmatch.convert.keys import CheckpointMismatchError, KeyAccountant, assert_tree_matches  # noqa: F401
from jaxmatch.convert.torch_io import load_state_dict  # noqa: F401


def from_torch(config: ConfigDict, state_dict: Mapping[str, np.ndarray], **options) -> dict:
  """Converts an official state_dict of config.model.name into flax variables (numpy leaves).

  `options` go to the model's converter (the baseline's `drop_classifier`)."""
  name = config.model.name
  if name == "transformatcher":
    from jaxmatch.convert.transformatcher import transformatcher_from_torch
    return transformatcher_from_torch(state_dict, config.model, **options)
  if name == "baseline":
    from jaxmatch.convert.baseline import baseline_from_torch
    return baseline_from_torch(state_dict, config.model, seed=int(config.train.get("seed", 0)), **options)
  raise ValueError(f"no converter for config.model.name {name!r}")


def complete_config(config: ConfigDict, state_dict: Mapping[str, np.ndarray]) -> None:
  """Fills config fields a recipe leaves to its task and the checkpoint decides, before the model is built:
  the re-ID baseline's num_classes (the task counts the training ids) from the checkpoint's classifier."""
  if config.model.name == "baseline" and not config.model.get("num_classes"):
    from jaxmatch.convert.baseline import classifier_rows
    rows = classifier_rows(state_dict)
    if rows is None:
      raise ValueError("the checkpoint has no classifier to size the model by: set --config.model.num_classes")
    config.model.num_classes = rows


def backbones_from_torchvision(config: ConfigDict, state_dict: Mapping[str, np.ndarray],
                               variables: dict) -> dict:
  """Puts a torchvision ResNet (e.g. the ImageNet resnet101 file) into every backbone of `variables`.

  This is how the official recipes start: ImageNet weights in both TransforMatcher streams, head random.
  """
  from jaxmatch.convert.resnet import load_torchvision_resnet
  tv = load_torchvision_resnet(state_dict, config.model.backbone_depth, include_fc=False)
  params = dict(variables["params"])
  stats = dict(variables["batch_stats"])
  names = [k for k in params if k.endswith("backbone")]
  if not names:
    raise ValueError(f"model {config.model.name!r} has no backbone to initialise")
  for name in names:
    for collection, tree in (("params", params), ("batch_stats", stats)):
      sub = _take_matching(tree[name], tv[collection])
      assert_tree_matches(tree[name], sub, what=f"torchvision {collection} for {name}")
      tree[name] = sub
  return {"params": params, "batch_stats": stats}


def _take_matching(expected: Mapping, source: Mapping) -> dict:
  """The part of `source` under `expected`'s keys (a backbone may stop before layer4)."""
  return {k: (_take_matching(v, source[k]) if isinstance(v, Mapping) else source[k])
          for k, v in expected.items() if k in source}
