"""Center loss (Wen et al. 2016) as the official `CenterLoss` of BoT / NFormer computes it.

distmat[i, c] = |x_i|^2 + |c_c|^2 - 2 x_i.c_c over ALL classes; every entry but the own class is
multiplied by 0, then each entry is clamped to [1e-12, 1e12] and the sum is divided by the batch
size. So the value is mean_i |x_i - c_{y_i}|^2 plus a negligible (C - 1) * 1e-12, and clamped entries
carry no gradient, exactly as officially.

The official recipe trains the centres with their own SGD (lr 0.5) after multiplying their gradient by
1 / center_loss_weight, i.e. on the UNWEIGHTED center-loss gradient: with the shared optimizer that is
the 'centers' parameter group's config.train.group_overrides (optimizer 'sgd', grad_scale 1 / weight).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

CLAMP_MIN, CLAMP_MAX = 1e-12, 1e12


def init_centers(rng, num_classes: int, feat_dim: int) -> jnp.ndarray:
  """Official init: torch.randn(num_classes, feat_dim), i.e. N(0, 1)."""
  return jax.random.normal(rng, (num_classes, feat_dim), jnp.float32)


def center_loss(features, labels, centers) -> jnp.ndarray:
  """Sum over the batch of squared distances to the own centre, clamped as officially, / batch size."""
  if features.ndim != 2 or centers.ndim != 2:
    raise ValueError(f"features [B, D] and centers [C, D] expected, got {features.shape}, {centers.shape}")
  if features.shape[1] != centers.shape[1]:
    raise ValueError(f"feature dim {features.shape[1]} != centre dim {centers.shape[1]}")
  if labels.shape != features.shape[:1]:
    raise ValueError(f"labels must be [batch] = {features.shape[:1]}, got {labels.shape}")
  x = features.astype(jnp.float32)
  c = centers.astype(jnp.float32)
  distmat = jnp.sum(x * x, 1)[:, None] + jnp.sum(c * c, 1)[None, :] - 2.0 * (x @ c.T)
  mask = jax.nn.one_hot(labels, c.shape[0], dtype=jnp.float32)
  return jnp.sum(jnp.clip(distmat * mask, CLAMP_MIN, CLAMP_MAX)) / x.shape[0]

