"""Linformer attention (Wang et al. 2020): the "Linformer" row of the paper's Table 3.

Not in the official code; the paper names the architecture only, so this follows the Linformer paper:
the token axis of the keys and values is projected from T down to k with learned matrices E, F in
R^{T x k} before a standard softmax attention, so the attention matrix is T x k instead of T x T:

    head_h = softmax(Q_h (E^T K_h)^T / sqrt(D)) (F^T V_h)

E and F belong to each layer and are shared by its heads (the Linformer paper's "headwise sharing").
k defaults to 256, the projected length of the Linformer paper's main experiments. E and F are
initialised as a PyTorch Linear(T -> k) weight, U(+-1/sqrt(T)).

Because E and F have one row per token position, a layer only accepts the token count it was built
for (the paper's 15^4 for 240 px inputs); another count is an error naming both. The paper reports
that this variant failed to train (SPair PCK 1.3), which it attributes to the low head dimension.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmatch.models.transformatcher.attention import HeadedAttention
from jaxmatch.models.transformatcher.multihead import (CORE_PRECISION, check_even_head_dim,
                                                       project_out, project_qkv)

DEFAULT_PROJECTED_LENGTH = 256


def token_projection_init(tokens: int):
  """U(+-1/sqrt(T)) for a [T, k] projection: PyTorch's Linear(T -> k) default."""
  bound = tokens ** -0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def linformer_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, proj_k: jnp.ndarray,
                        proj_v: jnp.ndarray) -> jnp.ndarray:
  """[B, T, H, D] inputs, projections [T, k] -> [B, T, H, D]."""
  scale = q.shape[-1] ** -0.5
  k_low = jnp.einsum("bthd,tk->bkhd", k, proj_k, precision=CORE_PRECISION)
  v_low = jnp.einsum("bthd,tk->bkhd", v, proj_v, precision=CORE_PRECISION)
  logits = jnp.einsum("bthd,bkhd->bhtk", q * scale, k_low, precision=CORE_PRECISION)
  weights = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("bhtk,bkhd->bthd", weights, v_low, precision=CORE_PRECISION)


class LinformerAttention(HeadedAttention):
  """Multi-head Linformer self-attention, [B, T, dim] -> [B, T, dim]; T fixed by the parameters."""
  projected_length: int = DEFAULT_PROJECTED_LENGTH

  @nn.compact
  def __call__(self, x: jnp.ndarray, cos: Optional[jnp.ndarray] = None,
               sin: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    check_even_head_dim(self.head_dim, self.rotary)
    if self.projected_length < 1:
      raise ValueError(f"linformer_k must be >= 1, got {self.projected_length}")
    t = x.shape[1]
    if self.has_variable("params", "proj_k"):
      built = self.get_variable("params", "proj_k").shape
      if built[0] != t:
        raise ValueError(f"this Linformer layer was built for {built[0]} tokens (its projections are "
                         f"{built}); got {t} tokens. Linformer fixes the sequence length: use the input "
                         "size it was trained at")
    shape = (t, self.projected_length)
    proj_k = self.param("proj_k", token_projection_init(t), shape, jnp.float32)
    proj_v = self.param("proj_v", token_projection_init(t), shape, jnp.float32)
    q, k, v = project_qkv(x, self.heads, self.head_dim, self.dtype, self.precision, self.rotary, cos, sin)
    out = project_out(linformer_attention(q, k, v, proj_k, proj_v), self.dim, self.dtype, self.precision)
    self.sow("intermediates", "attn_out", out)
    return out
