"""Loading a recipe file outside the command line: `load_config('configs/x.py:arg')`."""
from __future__ import annotations

import importlib.util
import os

import ml_collections


def load_config(spec: str) -> ml_collections.ConfigDict:
  """'path/to/recipe.py[:arg]' -> the ConfigDict its get_config(arg) returns (as --config would)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file not found: {path}")
  module_spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()
