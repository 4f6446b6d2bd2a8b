"""What the training loop calls on a task: every member, nothing probed. Tasks (jaxmatch/tasks) implement
it; `jaxmatch.tasks.base.ModelTask` provides the members that only forward to the model."""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Protocol

from ml_collections import ConfigDict


class Task(Protocol):
  unit: str                      # what one training example is called in progress output
  steps_per_epoch: int | None    # epoch length for epoch-stepped schedules (None: schedules count steps)

  def init_variables(self, rng) -> tuple[Any, Any]: ...            # (params, model_state), jitted
  def load_pretrained(self, params, model_state) -> tuple[Any, Any]: ...  # host-side, after init
  def param_labels(self, params) -> Any: ...
  def loss_fn(self, params, model_state, batch, rng): ...           # -> (loss, (model_state, metrics))
  def num_train_steps(self, train_config: ConfigDict) -> int: ...
  def train_iterator(self, batch_size: int, seed: int, shard_index: int = 0,
                     shard_count: int = 1) -> Iterator[dict]: ...  # checkpointable (grain)
  def train_inputs(self, batch: Mapping) -> dict: ...              # the device part of a host batch
  def evaluate(self, params, model_state, mesh, workdir: str, step: int, tag: str,
               periodic: bool = False) -> dict: ...                # scalars to log
