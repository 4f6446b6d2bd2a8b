"""The match-to-match attention chosen by config.model.attention, and the checks of variant names.

attention (config.model.attention):
* 'additive'  (default) the official Fastformer-style layer (`attention.AdditiveAttention`);
* 'performer' FAVOR+ random-feature attention (`performer`), features from the 'performer' PRNG stream;
* 'linformer' sequence-projected attention (`linformer`), fixed token count;
* 'softmax'   vanilla quadratic attention (`vanilla`), refused above config.model.max_attention_bytes.
All take and return [B, T, dim] and the same optional rotary table, so a block can hold any of them
under the one parameter name `attn`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxmatch.models.transformatcher.attention import AdditiveAttention
from jaxmatch.models.transformatcher.linformer import DEFAULT_PROJECTED_LENGTH, LinformerAttention
from jaxmatch.models.transformatcher.performer import DEFAULT_NUM_FEATURES, PerformerAttention
from jaxmatch.models.transformatcher.vanilla import DEFAULT_MAX_ATTENTION_BYTES, SoftmaxAttention

ATTENTIONS = ("additive", "performer", "linformer", "softmax")


def check_attention(kind: str) -> None:
  if kind not in ATTENTIONS:
    raise ValueError(f"config.model.attention must be one of {ATTENTIONS}, got {kind!r}")


def make_attention(kind: str, dim: int, heads: int, head_dim: int, dtype: Any = jnp.float32,
                   precision: Any = None, rotary: bool = True,
                   performer_features: int = DEFAULT_NUM_FEATURES,
                   linformer_k: int = DEFAULT_PROJECTED_LENGTH,
                   max_attention_bytes: int = DEFAULT_MAX_ATTENTION_BYTES,
                   name: str = "attn") -> nn.Module:
  """The attention layer of one block (call it inside the block's compact method)."""
  check_attention(kind)
  common = dict(dim=dim, heads=heads, head_dim=head_dim, dtype=dtype, precision=precision,
                rotary=rotary, name=name)
  if kind == "additive":
    return AdditiveAttention(**common)
  if kind == "performer":
    return PerformerAttention(num_features=performer_features, **common)
  if kind == "linformer":
    return LinformerAttention(projected_length=linformer_k, **common)
  return SoftmaxAttention(max_attention_bytes=max_attention_bytes, **common)
