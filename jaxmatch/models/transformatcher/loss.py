"""TransforMatcher training loss (official `supervision.Objective.kps_regression`, reference 4)."""
from __future__ import annotations

import jax.numpy as jnp


def keypoint_loss(pred_norm: jnp.ndarray, gt_norm: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Mean over the batch of (mean over valid keypoints of the SQUARED L2 distance).

  pred_norm, gt_norm: [B, K, 2] normalised (x, y); mask: [B, K] bool. As the official code the
  distance is squared (paper Eq. 12) and averaged per pair, then over pairs. A pair without any
  valid keypoint contributes 0 (the official code would give NaN).
  """
  d2 = jnp.sum((pred_norm.astype(jnp.float32) - gt_norm.astype(jnp.float32)) ** 2, axis=-1)
  m = mask.astype(jnp.float32)
  per_pair = jnp.sum(d2 * m, axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1.0)
  return jnp.mean(per_pair)
