"""Identity (classification) loss of the re-ID baselines: cross-entropy with optional label smoothing.

The smoothing is the official `CrossEntropyLabelSmooth` of the strong-baseline family (BoT, NFormer):
the target is (1 - eps) * one_hot + eps / num_classes on EVERY class (the true class included), and
the loss is the batch mean of -sum(target * log_softmax(logits)). eps = 0 is plain cross-entropy.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _check_inputs(logits, labels, epsilon: float) -> None:
  if logits.ndim != 2:
    raise ValueError(f"logits must be [batch, num_classes], got shape {logits.shape}")
  if labels.shape != logits.shape[:1]:
    raise ValueError(f"labels must be [batch] = {logits.shape[:1]} to match the logits, got {labels.shape}")
  if not 0.0 <= epsilon < 1.0:
    raise ValueError(f"label smoothing epsilon must be in [0, 1), got {epsilon}")
  # Out-of-range labels would silently become all-zero one-hot rows; checkable only on host arrays.
  if isinstance(labels, np.ndarray) and labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
    raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got range [{labels.min()}, {labels.max()}]")


def smoothed_targets(labels, num_classes: int, epsilon: float) -> jnp.ndarray:
  """[B, C] float32 targets: (1 - eps) on the true class plus eps / C everywhere."""
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return (1.0 - epsilon) * one_hot + epsilon / num_classes


def cross_entropy(logits, labels, epsilon: float = 0.0) -> jnp.ndarray:
  """Mean over the batch of the (label-smoothed) cross-entropy; computed in float32.

  logits: [B, C]; labels: [B] integer classes in [0, C).
  """
  _check_inputs(logits, labels, epsilon)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  targets = smoothed_targets(labels, logits.shape[-1], epsilon)
  return jnp.mean(-jnp.sum(targets * log_probs, axis=-1))


def accuracy(logits, labels) -> jnp.ndarray:
  """Fraction of rows whose arg-max class is the label (a training metric)."""
  return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
