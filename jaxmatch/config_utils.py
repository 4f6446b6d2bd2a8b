"""Recipe files: `load_config('configs/x.py:arg')` outside the command line, `load_common` for the shared
parts (configs/common_*.py) a recipe builds on, and `apply_embedded_schedule` (a recipe's CPU schedule
for the embedded data)."""
from __future__ import annotations

import importlib.util
import os
import sys
import types

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


def load_common(recipe_file: str, name: str) -> types.ModuleType:
  """The shared recipe part `name` (a common_*.py next to `recipe_file`) as a module, imported once.

  configs/ is a folder of files, not a package (`--config` loads recipes by path, from any working
  directory), so the shared parts are found beside the recipe that uses them."""
  path = os.path.join(os.path.dirname(os.path.abspath(recipe_file)), f"{name}.py")
  key = f"jaxmatch_configs.{name}:{path}"
  if key in sys.modules:
    return sys.modules[key]
  if not os.path.isfile(path):
    raise FileNotFoundError(f"shared recipe part {name!r} not found: {path}")
  spec = importlib.util.spec_from_file_location(key, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[key] = module
  spec.loader.exec_module(module)
  return module


def apply_embedded_schedule(config: ml_collections.ConfigDict) -> None:
  """The recipe's `embedded_schedule` (a CPU-sized schedule for the synthetic data) over its fields;
  nested sections (e.g. train.learning_rates) are merged field by field."""
  schedule = config.get("embedded_schedule")
  if not schedule:
    return
  changes = []

  def merge(target: ml_collections.ConfigDict, fields, path: str) -> None:
    for key, value in fields.items():
      if key not in target:
        raise ValueError(f"config.embedded_schedule.{path}{key}: config.{path}{key} does not exist")
      if isinstance(target[key], ml_collections.ConfigDict) and hasattr(value, "items"):
        merge(target[key], value, f"{path}{key}.")
      else:
        target[key] = value
        changes.append(f"{path}{key}={value}")

  merge(config, schedule, "")
  print("Embedded data: using the recipe's CPU schedule (" + ", ".join(changes) + ")", flush=True)
