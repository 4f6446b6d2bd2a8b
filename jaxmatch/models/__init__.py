"""Models: one package per model plus shared layers and helpers; `registry` is the one place that maps
config.model.name to a model's contract (build, converters, parity adapter, batch fields).

  model = jaxmatch.models.build(config)      # the model object the shared loop and the tasks call
  contract = jaxmatch.models.contract_of(config)
"""
from jaxmatch.models.registry import (MODELS, ModelContract, build, contract_of, get_contract, names,
                                      register, unregister)

__all__ = ["MODELS", "ModelContract", "build", "contract_of", "get_contract", "names", "register",
           "unregister"]
