"""Layers with PyTorch semantics, so that converted weights and training dynamics carry over exactly.

`TorchBatchNorm` reproduces `torch.nn.BatchNorm2d` (eps 1e-5, momentum 0.1 with the PyTorch convention
new = (1 - momentum) * old + momentum * batch, running variance updated with the UNBIASED batch variance
while the output uses the biased one). Statistics are always computed in float32, whatever the compute
dtype. The reductions are plain `jnp` means over every axis but the last, so under `jax.jit` with the
batch sharded over a device mesh they are the statistics of the global batch (what a single-GPU PyTorch
run computes); no `axis_name` is involved. Also here: the initialisers torchvision uses for convolutions
and `nn.Linear`.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# torchvision ResNet: kaiming_normal_(mode='fan_out', nonlinearity='relu'), an untruncated normal.
conv_kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Linear weight: kaiming_uniform_(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
linear_torch_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def linear_torch_bias(fan_in: int):
  """torch.nn.Linear bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (flax bias inits do not see fan_in)."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class TorchBatchNorm(nn.Module):
  """BatchNorm over the last (channel) axis with torch.nn.BatchNorm semantics.

  Variables: params 'scale' (torch weight), 'bias'; batch_stats 'mean' (running_mean), 'var' (running_var),
  all float32. `train=True` normalises with batch statistics and updates the running ones (pass
  mutable=['batch_stats']); `train=False` uses the running statistics (use_running_average = not train).
  """
  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Any = jnp.float32  # output dtype
  scale_init: Any = nn.initializers.ones
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x, train: bool = False):
    features = x.shape[-1]
    scale = self.param("scale", self.scale_init, (features,), jnp.float32)
    bias = self.param("bias", self.bias_init, (features,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
    x32 = x.astype(jnp.float32)
    if train:
      mean, var = self._batch_moments(x32)
      if not self.is_initializing():  # init must return the torch initial state (0, 1)
        n = x.size // features
        unbiased = var * (n / (n - 1))
        ra_mean.value = (1.0 - self.momentum) * ra_mean.value + self.momentum * mean
        ra_var.value = (1.0 - self.momentum) * ra_var.value + self.momentum * unbiased
    else:
      mean, var = ra_mean.value, ra_var.value
    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    y = (x32 - mean) * mul + bias
    return y.astype(self.dtype)

  @staticmethod
  def _batch_moments(x32):
    n = x32.size // x32.shape[-1]
    if n < 2:  # torch raises the same way: the unbiased variance needs two values
      raise ValueError("TorchBatchNorm in training needs more than 1 value per channel, "
                       f"got input {x32.shape}")
    axes = tuple(range(x32.ndim - 1))
    mean = jnp.mean(x32, axes)
    # Two-pass variance: no cancellation for activations with a large mean.
    var = jnp.mean(jnp.square(x32 - mean), axes)
    return mean, var
