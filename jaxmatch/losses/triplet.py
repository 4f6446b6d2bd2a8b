"""Batch-hard triplet loss (Hermans et al.) as the official re-ID codes compute it.

Distances: d(a, b)^2 = |a|^2 + |b|^2 - 2 a.b clamped below at 1e-12 (the official numerical clamp,
which keeps the square root differentiable); Euclidean distance is its square root (BoT, NFormer,
TransReID), `squared=True` keeps the clamped squared distance. Optional L2 normalisation of the
features first uses TransReID's `normalize_feature`: x / (|x| + 1e-12).

Mining with masks over the whole batch (no PK reshape, so any id counts work): the hardest positive
of anchor i is the largest distance to a sample of the same id, the anchor itself included; the
hardest negative is the smallest distance to a sample of another id.
  - hard margin: mean_i relu(d_ap - d_an + margin)      (MarginRankingLoss, target 1)
  - soft margin: mean_i softplus(d_ap - d_an)          (SoftMarginLoss, target 1; margin <= 0 or None)

Edge cases, defined as the official mask-based mining (NFormer's TripletLoss) behaves:
  - an id that appears once: its only positive is itself, so d_ap = sqrt(1e-12) = 1e-6 (or 1e-12
    squared) and the term reduces to relu(margin - d_an): it still pushes negatives away;
  - an anchor without any negative (the batch holds one id): d_an is +inf and its term is 0, still
    counted in the mean over the batch (the official 1e8 fill gives the same 0).
Rows with `valid=False` (padding) are neither anchors, positives nor negatives; the mean runs over
valid anchors.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

DIST_CLAMP = 1e-12  # official: dist.clamp(min=1e-12) before sqrt
NORM_EPS = 1e-12    # TransReID normalize_feature: x / (|x| + 1e-12)


class TripletOutput(NamedTuple):
  loss: jnp.ndarray     # scalar
  dist_ap: jnp.ndarray  # [B] hardest-positive distance per anchor
  dist_an: jnp.ndarray  # [B] hardest-negative distance per anchor (+inf without a negative)


def normalize_rows(x: jnp.ndarray) -> jnp.ndarray:
  """x / (|x|_2 + 1e-12) row-wise, TransReID's `normalize_feature`."""
  return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + NORM_EPS)


def pairwise_distances(x: jnp.ndarray, y: jnp.ndarray, squared: bool = False) -> jnp.ndarray:
  """[N, M] (squared) Euclidean distances via the expanded form, clamped at 1e-12 as officially."""
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  xx = jnp.sum(x * x, axis=-1)[:, None]
  yy = jnp.sum(y * y, axis=-1)[None, :]
  d2 = jnp.maximum(xx + yy - 2.0 * (x @ y.T), DIST_CLAMP)
  return d2 if squared else jnp.sqrt(d2)


def hard_example_mining(dist: jnp.ndarray, labels: jnp.ndarray, valid: jnp.ndarray | None = None):
  """(dist_ap [B], dist_an [B]): max over same-label columns, min over other-label columns."""
  same = labels[:, None] == labels[None, :]
  if valid is None:
    valid = jnp.ones(labels.shape, bool)
  pos = same & valid[None, :]
  neg = ~same & valid[None, :]
  # Distances are >= 1e-6 and the diagonal is always a positive, so a 0 fill never wins the max.
  dist_ap = jnp.max(jnp.where(pos, dist, 0.0), axis=1)
  dist_an = jnp.min(jnp.where(neg, dist, jnp.inf), axis=1)
  return dist_ap, dist_an


def _check_inputs(features, labels, valid) -> None:
  if features.ndim != 2:
    raise ValueError(f"triplet features must be [batch, dim], got shape {features.shape}")
  if labels.shape != features.shape[:1]:
    raise ValueError(f"labels must be [batch] = {features.shape[:1]}, got {labels.shape}")
  if valid is not None and valid.shape != labels.shape:
    raise ValueError(f"valid must be [batch] = {labels.shape}, got {valid.shape}")


def triplet_loss(features, labels, margin: float | None = 0.3, squared: bool = False,
                 normalize: bool = False, valid=None) -> TripletOutput:
  """Batch-hard triplet loss; margin > 0: hard margin, margin None or <= 0: soft margin."""
  _check_inputs(features, labels, valid)
  x = features.astype(jnp.float32)
  if normalize:
    x = normalize_rows(x)
  dist = pairwise_distances(x, x, squared=squared)
  dist_ap, dist_an = hard_example_mining(dist, labels, valid)
  has_neg = jnp.isfinite(dist_an)
  gap = dist_ap - jnp.where(has_neg, dist_an, 0.0)  # finite everywhere, so gradients stay finite
  if margin is not None and margin > 0:
    per_anchor = jax.nn.relu(gap + margin)
  else:
    per_anchor = jax.nn.softplus(gap)
  per_anchor = jnp.where(has_neg, per_anchor, 0.0)
  if valid is None:
    loss = jnp.mean(per_anchor)
  else:
    w = valid.astype(jnp.float32)
    loss = jnp.sum(per_anchor * w) / jnp.maximum(jnp.sum(w), 1.0)
  return TripletOutput(loss, dist_ap, dist_an)
