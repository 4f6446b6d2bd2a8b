"""BNNeck (Luo et al., "Bag of Tricks"): BatchNorm1d with a frozen zero shift, then a bias-free classifier.

The triplet / center losses see the feature BEFORE the BatchNorm, the ID loss the classifier logits of
the feature AFTER it, and the test feature is usually the normalised one ('after'). The official code
sets `bottleneck.bias.requires_grad_(False)` with the bias initialised to 0.

Freezing here is zero-grad, not removal: the bias is a real parameter (so the tree mirrors the official
state_dict's `bottleneck.bias` key by key), read through `jax.lax.stop_gradient`, so its gradient is
exactly 0; the model also labels it 'frozen' for the optimizer (train/state.py), so weight decay cannot
move a non-zero value either (a converted checkpoint's), as the official optimizer never sees it. The BatchNorm itself is TorchBatchNorm (eps 1e-5, momentum 0.1,
running variance from the unbiased batch variance). The classifier is Linear(dim -> num_classes,
bias=False) initialised N(0, 0.001^2) as the official `weights_init_classifier`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmatch.models.layers import TorchBatchNorm

CLASSIFIER_STD = 0.001
classifier_init = nn.initializers.normal(CLASSIFIER_STD)


def _stop_bias_gradient(variables: dict) -> dict:
  params = variables.get("params", {})
  if "bias" not in params:  # nothing to freeze yet (e.g. while the module is initialising)
    return variables
  return {**variables, "params": {**params, "bias": jax.lax.stop_gradient(params["bias"])}}


def frozen_bias_batch_norm(initializing: bool):
  """TorchBatchNorm class whose shift ('bias') receives no gradient; pass the parent's
  `self.is_initializing()` (map_variables may only (re)initialise while the parent initialises)."""
  return nn.map_variables(TorchBatchNorm, "params", _stop_bias_gradient, init=initializing)


class BNNeck(nn.Module):
  """[B, D] feature -> (after-BN feature [B, D], logits [B, num_classes] or None without a classifier).

  Variables (official names in brackets): 'bottleneck' {scale, bias} params and {mean, var}
  batch_stats [bottleneck.weight/bias/running_mean/running_var]; 'classifier'/kernel [D, C]
  [classifier.weight, transposed].
  """
  num_classes: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 2:
      raise ValueError(f"BNNeck expects pooled features [batch, dim], got shape {x.shape}")
    batch_norm = frozen_bias_batch_norm(self.is_initializing())
    feat = batch_norm(dtype=self.dtype, name="bottleneck")(x, train=train)
    if not self.num_classes:
      return feat, None
    logits = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                      kernel_init=classifier_init, name="classifier")(feat)
    return feat, logits
