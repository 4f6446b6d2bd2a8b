"""The task contract the training loop calls, and the model-forwarding defaults every task shares.

A task ties a model (built from the registry) to a kind of data and its evaluation protocol. The loop
(`jaxmatch.train.loop`) calls exactly the members of `jaxmatch.train.task.Task`; `ModelTask` implements the ones that only
forward to the model (init, ImageNet start, parameter groups, loss, the batch fields the model consumes),
so a task adds its data and evaluation.
"""
from __future__ import annotations

from typing import Any, Mapping

from ml_collections import ConfigDict

from jaxmatch import models
from jaxmatch.train.task import Task  # noqa: F401  (the contract ModelTask helps implement)


def select_fields(batch: Mapping, fields, names: Mapping[str, str] | None = None, what: str = "batch") -> dict:
  """{field: batch[names.get(field, field)]} for the model's fields; a missing one is a clear error."""
  names = names or {}
  missing = [f for f in fields if names.get(f, f) not in batch]
  if missing:
    raise ValueError(f"the model consumes {list(fields)} but the {what} has no "
                     f"{[names.get(f, f) for f in missing]} (it has {sorted(batch)})")
  return {f: batch[names.get(f, f)] for f in fields}


class ModelTask:
  """Forwards the model parts of `Task` to `self.model` (set by the subclass, from jaxmatch.models.build).

  `field_names` maps the model's batch fields to the pipeline's keys where they differ."""
  unit = "examples"
  steps_per_epoch: int | None = None
  field_names: Mapping[str, str] = {}
  config: ConfigDict
  model: Any = None

  @property
  def contract(self) -> models.ModelContract:
    return models.contract_of(self.config)

  def init_variables(self, rng):
    return self.model.init_variables(rng)

  def load_pretrained(self, params, model_state):
    """config.model.pretrained's ImageNet weights through the model's converter, when the recipe names one."""
    from jaxmatch.convert import with_configured_pretrained
    return with_configured_pretrained(self.config, params, model_state)

  def param_labels(self, params):
    return self.model.param_labels(params)

  def loss_fn(self, params, model_state, batch, rng):
    return self.model.loss_fn(params, model_state, batch, rng)

  def train_inputs(self, batch: Mapping) -> dict:
    return select_fields(batch, self.contract.train_fields, self.field_names, "training batch")

  def eval_inputs(self, batch: Mapping) -> dict:
    return select_fields(batch, self.contract.eval_fields, self.field_names, "evaluation batch")


class ModelOnlyTask(ModelTask):
  """A model without data: enough of a task for `loop.init_state`, to rebuild the train-state layout of
  a saved run (the checkpoint replaces every weight, so no ImageNet start) or to drive the jitted train
  step directly (tests, benchmarks)."""

  def __init__(self, config: ConfigDict, model=None):
    self.config = config
    self.model = model if model is not None else models.build(config)
    self.steps_per_epoch = 1  # a fresh optimizer state does not depend on the epoch length

  def load_pretrained(self, params, model_state):
    return params, model_state
