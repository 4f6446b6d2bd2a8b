"""Model registry: `build(config)` returns the model object the shared loop and converters use.

Each model object owns its linen `module`, `init_variables(rng) -> (params, model_state)`,
`loss_fn(params, model_state, batch, rng) -> (loss, (model_state, metrics))`, `predict(...)` and
`param_labels(params)` (parameter groups with their own learning rates).
"""
from __future__ import annotations

from ml_collections import ConfigDict


def build(config: ConfigDict):
  """Builds the model named by config.model.name, e.g. `build(get_config())` for TransforMatcher."""
  name = config.model.name
  if name == "transformatcher":
    from jaxmatch.models.transformatcher.model import TransforMatcherModel
    return TransforMatcherModel(config.model, img_size=config.data.img_size)
  if name == "baseline":
    from jaxmatch.models.reid.baseline import BaselineModel
    return BaselineModel(config.model, img_size=config.data.img_size)
  raise ValueError(f"unknown config.model.name {name!r}; available: transformatcher, baseline")
