"""What the paper's comparison attentions (Table 3: vanilla, Linformer, Performer) share.

The official code has only the additive attention; for the others the paper's generic multi-head
self-attention applies (Eq. 1-3): per head h, Q, K, V = X W_Q, X W_K, X W_V (one bias-free
projection `to_qkv` of width 3 * heads * head_dim, split like the additive layer's), an attention
mixing V over the tokens, then MHSA(X) = concat_h(SA_h) W_O + b_O (`to_out`). Only the mixing step
differs between the variants; it runs in float32 at HIGHEST matmul precision, as the additive core.

With the rotary position mode, Q and K are rotated by the same 1-D table the official additive layer
uses (`rotary.rotary_table`) before they meet (standard RoPE, paper Eq. 8-9); V is never rotated.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmatch.models.transformatcher.attention import (rotary_for_heads, rotate_leading,
                                                       torch_linear_bias_init,
                                                       torch_linear_kernel_init)

CORE_PRECISION = jax.lax.Precision.HIGHEST


def project_qkv(x: jnp.ndarray, heads: int, head_dim: int, dtype: Any, precision: Any,
                rotary: bool, cos: Optional[jnp.ndarray], sin: Optional[jnp.ndarray]):
  """x [B, T, dim] -> float32 (q, k, v), each [B, T, heads, head_dim]; q and k rotated if `rotary`.

  Call from inside a compact method: creates the `to_qkv` Dense of the calling module.
  """
  b, t, _ = x.shape
  qkv = nn.Dense(3 * heads * head_dim, use_bias=False, dtype=dtype, precision=precision,
                 kernel_init=torch_linear_kernel_init(), name="to_qkv")(x)
  q, k, v = (z.reshape(b, t, heads, head_dim) for z in jnp.split(qkv.astype(jnp.float32), 3, -1))
  if rotary:
    cos, sin = rotary_for_heads(cos, sin, t, head_dim)
    q, k = rotate_leading(q, cos, sin), rotate_leading(k, cos, sin)
  return q, k, v


def project_out(heads_out: jnp.ndarray, dim: int, dtype: Any, precision: Any) -> jnp.ndarray:
  """[B, T, heads, head_dim] -> concat heads (channel h * head_dim + d) -> `to_out` -> [B, T, dim]."""
  b, t, h, d = heads_out.shape
  merged = heads_out.reshape(b, t, h * d).astype(dtype)
  return nn.Dense(dim, dtype=dtype, precision=precision, kernel_init=torch_linear_kernel_init(),
                  bias_init=torch_linear_bias_init(h * d), name="to_out")(merged)


def check_even_head_dim(head_dim: int, rotary: bool) -> None:
  if rotary and head_dim % 2:
    raise ValueError(f"rotary position embedding needs an even head_dim, got {head_dim}")
