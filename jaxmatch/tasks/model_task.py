"""What every task forwards to its model for the shared loop: init, host-side pretrained weights,
parameter groups and the loss. Tasks subclass it and add their data and evaluation."""
from __future__ import annotations


class ModelTask:
  model = None  # set by the subclass: an object built by jaxmatch.models.build

  def init_variables(self, rng):
    return self.model.init_variables(rng)

  def load_pretrained(self, params, model_state):
    """Called by the loop after the jitted init; models without file-based weights return them as is."""
    load = getattr(self.model, "load_pretrained", None)
    return load(params, model_state) if load is not None else (params, model_state)

  def param_labels(self, params):
    return self.model.param_labels(params)

  def loss_fn(self, params, model_state, batch, rng):
    return self.model.loss_fn(params, model_state, batch, rng)
