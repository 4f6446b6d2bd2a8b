"""Official PyTorch weights -> jaxmatch variables, accounting for every key.

  variables = jaxmatch.convert.from_torch(config, state_dict)   # {'params': ..., 'batch_stats': ...}
  state_dict = jaxmatch.convert.load_state_dict('model.pth')    # weights_only; .safetensors / .npz too

Which converter runs is the model's contract (jaxmatch.models.registry): nothing here tests model names.
Every official key is mapped or ignored with a stated reason; anything else raises CheckpointMismatchError
listing the missing, unexpected and mis-shaped keys. The command line (`python -m jaxmatch.convert`) writes
the result as a checkpoint that `python -m jaxmatch.main --mode eval` evaluates.
"""
from __future__ import annotations

import functools
from typing import Mapping

import numpy as np
from ml_collections import ConfigDict

from jaxmatch.convert.keys import CheckpointMismatchError, KeyAccountant, assert_tree_matches  # noqa: F401
from jaxmatch.convert.torch_io import load_state_dict  # noqa: F401
from jaxmatch.models.registry import contract_of


def from_torch(config: ConfigDict, state_dict: Mapping[str, np.ndarray], **options) -> dict:
  """Converts an official state_dict of config.model.name into flax variables (numpy leaves).

  `options` go to the model's converter (the baseline's `drop_classifier`)."""
  convert = contract_of(config).require("from_torch", "converter from official PyTorch weights")
  return convert(config, state_dict, **options)


def complete_config(config: ConfigDict, state_dict: Mapping[str, np.ndarray]) -> None:
  """Fills config fields a recipe leaves to its task and the checkpoint decides, before the model is built
  (e.g. the re-ID classifier size); a no-op for models whose checkpoints decide nothing."""
  complete = contract_of(config).resolve("complete_config")
  if complete is not None:
    complete(config, state_dict)


def imagenet_start(config: ConfigDict, state_dict: Mapping[str, np.ndarray], variables: dict) -> dict:
  """Puts the ImageNet weights the official recipe starts from (e.g. torchvision's resnet101 file in both
  TransforMatcher streams) into freshly initialised `variables`; the rest stays random."""
  start = contract_of(config).require("imagenet_start", "ImageNet-start converter")
  return start(config, state_dict, variables)


@functools.lru_cache(maxsize=2)
def _cached_state_dict(path: str) -> dict:
  return load_state_dict(path)


def with_configured_pretrained(config: ConfigDict, params, model_state) -> tuple[dict, dict]:
  """(params, model_state) with config.model.pretrained's ImageNet weights put in, when the recipe names a
  file; unchanged otherwise. Runs on the host after the jitted init, so ~100 MB of weights never become
  compile-time constants."""
  path = config.model.get("pretrained") or ""
  if not path:
    return params, model_state
  variables = imagenet_start(config, _cached_state_dict(str(path)), {"params": dict(params), **model_state})
  return variables["params"], {k: v for k, v in variables.items() if k != "params"}
