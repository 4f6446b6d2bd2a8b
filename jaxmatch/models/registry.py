"""The one registry of models: config.model.name -> the model's contract.

Each model package defines `CONTRACT = ModelContract(...)` in its `__init__.py` and is named once in
`MODELS` below. Everything else (tasks, `jaxmatch.convert`, `jaxmatch.parity`, `jaxmatch.extract`) asks
this registry and never tests model names. A contract names its converters and parity adapter by dotted
path ("package.module:function"), so a model package never imports `convert/` or `parity/`: they are
imported only by the code that uses them. Tests may `register` a contract of their own.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from ml_collections import ConfigDict

# name -> the package whose CONTRACT describes the model: the one line a new model adds.
MODELS = {
    "transformatcher": "jaxmatch.models.transformatcher",
    "baseline": "jaxmatch.models.reid",
    "transreid": "jaxmatch.models.transreid",
}

Ref = str | Callable | None  # "module.path:attribute", the callable itself, or absent


@dataclasses.dataclass(frozen=True)
class ModelContract:
  """What the rest of jaxmatch needs from a model.

  build(config) -> model object with `module` (the linen module), `init_variables(rng) -> (params,
      model_state)`, `loss_fn(params, model_state, batch, rng) -> (loss, (model_state, metrics))`,
      `param_labels(params)` and the task's inference method (`predict` for correspondence, `embed` for
      re-identification), all pure functions of their arguments.
  task: the task that runs it ('correspondence' or 'reid').
  train_fields / eval_fields: the batch fields the model consumes in training and at inference (e.g.
      image, label, camera, view); the task hands it exactly these.
  from_torch(config, state_dict, **options) -> variables: the official checkpoint, every key accounted for.
  complete_config(config, state_dict): fills fields the checkpoint decides (e.g. classifier size).
  imagenet_start(config, state_dict, variables) -> variables: the ImageNet weights the official recipe
      starts from, put into the freshly initialised variables.
  parity_adapter: module exposing `ADAPTER` for `python -m jaxmatch.parity`.
  """
  name: str
  task: str
  build: Ref
  train_fields: tuple[str, ...]
  eval_fields: tuple[str, ...]
  from_torch: Ref = None
  complete_config: Ref = None
  imagenet_start: Ref = None
  parity_adapter: str | None = None

  def resolve(self, member: str) -> Callable | None:
    """The named member as a callable (imported on first use), or None when the model has none."""
    return resolve_ref(getattr(self, member))

  def require(self, member: str, what: str) -> Callable:
    fn = self.resolve(member)
    if fn is None:
      raise ValueError(f"model {self.name!r} has no {what}")
    return fn


def resolve_ref(ref: Ref) -> Any:
  if ref is None or callable(ref):
    return ref
  module, _, attribute = ref.partition(":")
  target = importlib.import_module(module)
  return getattr(target, attribute) if attribute else target


_REGISTERED: dict[str, ModelContract] = {}


def register(contract: ModelContract) -> None:
  """Adds (or replaces) a model at run time, e.g. a test's tiny model."""
  _REGISTERED[contract.name] = contract


def unregister(name: str) -> None:
  _REGISTERED.pop(name, None)


def names() -> list[str]:
  return sorted(set(MODELS) | set(_REGISTERED))


def get_contract(name: str) -> ModelContract:
  """The contract of model `name` (config.model.name)."""
  if name in _REGISTERED:
    return _REGISTERED[name]
  if name not in MODELS:
    raise ValueError(f"unknown config.model.name {name!r}; available: {', '.join(names())}")
  contract = importlib.import_module(MODELS[name]).CONTRACT
  if contract.name != name:
    raise ValueError(f"{MODELS[name]}.CONTRACT is named {contract.name!r}, registered as {name!r}")
  return contract


def contract_of(config: ConfigDict) -> ModelContract:
  return get_contract(config.model.name)


def build(config: ConfigDict):
  """Builds the model named by config.model.name, e.g. `build(get_config())` for TransforMatcher."""
  contract = contract_of(config)
  task = config.get("task")
  if task is not None and task != contract.task:
    raise ValueError(f"model {contract.name!r} runs under config.task={contract.task!r}, not {task!r}")
  return contract.resolve("build")(config)
