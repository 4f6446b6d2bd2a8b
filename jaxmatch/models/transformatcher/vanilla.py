"""Vanilla (quadratic) softmax attention over all matches: the paper's "Transformer" row of Table 3.

Not in the official code; built from the paper (Eq. 1-3): per head, softmax(Q K^T / sqrt(D_h)) V,
then the shared output projection (see `multihead`). It materialises a [B, heads, T, T] attention
matrix, so it works at small grids only: at the paper's size (T = 15^4 = 50,625 tokens, 8 heads) one
pair needs 8 * 50,625^2 * 4 bytes = 82 GB (76.4 GiB) for that matrix alone; the paper reports this
row as out of memory. The size is known from the shapes at trace time, so the layer refuses with
the memory it would need BEFORE anything is allocated, whenever it exceeds `max_attention_bytes`.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmatch.models.transformatcher.attention import HeadedAttention
from jaxmatch.models.transformatcher.multihead import (CORE_PRECISION, check_even_head_dim,
                                                       project_out, project_qkv)

DEFAULT_MAX_ATTENTION_BYTES = 8 * 2 ** 30
_CORE_ITEMSIZE = 4   # the attention core runs in float32


def attention_matrix_bytes(batch: int, heads: int, tokens: int, itemsize: int = _CORE_ITEMSIZE) -> int:
  """Bytes of one [batch, heads, tokens, tokens] attention matrix."""
  return int(batch) * int(heads) * int(tokens) ** 2 * int(itemsize)


def check_attention_memory(batch: int, heads: int, tokens: int, max_bytes: int) -> None:
  """Raises MemoryError naming the memory vanilla attention would need when it exceeds max_bytes."""
  need = attention_matrix_bytes(batch, heads, tokens)
  if need > max_bytes:
    raise MemoryError(
        f"vanilla softmax attention over {tokens:,} tokens would need {need / 2 ** 30:,.1f} GiB "
        f"({need:,} bytes) for its [batch={batch}, heads={heads}, {tokens}, {tokens}] float32 attention "
        f"matrix, above config.model.max_attention_bytes = {max_bytes / 2 ** 30:,.1f} GiB; use a smaller "
        "grid or batch, a linear-complexity attention (additive, performer, linformer), or raise the limit")


def softmax_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
  """[B, T, H, D] each -> [B, T, H, D]: softmax over keys of q.k / sqrt(D), applied to v."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q * scale, k, precision=CORE_PRECISION)
  weights = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=CORE_PRECISION)


class SoftmaxAttention(HeadedAttention):
  """Multi-head vanilla self-attention, [B, T, dim] -> [B, T, dim]."""
  max_attention_bytes: int = DEFAULT_MAX_ATTENTION_BYTES

  @nn.compact
  def __call__(self, x: jnp.ndarray, cos: Optional[jnp.ndarray] = None,
               sin: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    b, t, _ = x.shape
    check_attention_memory(b, self.heads, t, self.max_attention_bytes)
    check_even_head_dim(self.head_dim, self.rotary)
    q, k, v = project_qkv(x, self.heads, self.head_dim, self.dtype, self.precision, self.rotary, cos, sin)
    out = project_out(softmax_attention(q, k, v), self.dim, self.dtype, self.precision)
    self.sow("intermediates", "attn_out", out)
    return out
