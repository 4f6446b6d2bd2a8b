"""TransforMatcher's additive (Fastformer-style) attention, exactly as the official `FastAttention`.

Reference section 2.4. Per batch element and head h (T tokens, head_dim D = 4):
   1  [Q | K | V] = Y W_qkv^T (no bias); head h owns channels h*D .. h*D + D-1 of each
   2  split heads
   3  rotated copies Q~ = rot(Q), K~ = rot(K) (1-D rotary over the flattened token index); V not rotated
   4  alpha = softmax_T(scale * Q w_q)            logits from the UN-rotated Q, scale = D^-1/2
   5  g_q = sum_n alpha_n Q~_n
   6  P = K * g_q (un-rotated K), pair-sum channels (2j, 2j+1) -> T x D/2
   7  beta = softmax_T(scale * P w_k)
   8  g_k = sum_n beta_n K~_n
   9  U = V * g_k, pair-sum -> T x D/2
  10  R = U W_r^T + b_r + Q                         residual with the UN-rotated Q
  11  concat heads (channel h*D + d) -> out = R W_o^T + b_o
w_q (`to_q_attn_logits`), w_k (`to_k_attn_logits`) and W_r (`to_r`) are shared by all heads.
The softmaxes run over ALL tokens, separately per batch element and head.
With rotary=False (the paper's absolute-position variant, Tables 2-3) step 3 is the identity: the
global sums use the un-rotated Q and K.

Parameter names (flax) = the official sub-module names: to_qkv, to_q_attn_logits,
to_k_attn_logits, to_r, to_out (Dense kernels are the transposed PyTorch weights).

Initialisation: PyTorch Linear defaults (U(+-1/sqrt(fan_in)) for weights and biases).

Numerics: to_qkv / to_out run in `dtype` with `precision`; the attention core (rotary, logits,
softmaxes, the global sums over all tokens, to_r) always runs in float32 at HIGHEST matmul
precision, so bf16 compute stays stable and GPUs never use TF32 there. For float32 parity runs
on GPU pass precision=jax.lax.Precision.HIGHEST as well.
Intermediates sown into the 'intermediates' collection (token-major, channel-last):
  qkv [B, T, 3*H*D], q_logits [B, T, H] (before the scale), global_q [B, H, D],
  k_logits [B, T, H] (before the scale), global_k [B, H, D], attn_out [B, T, dim].
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmatch.models.transformatcher.rotary import apply_rotary, rotary_table


def torch_linear_kernel_init():
  """PyTorch Linear default weight init: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))."""
  return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_linear_bias_init(fan_in: int):
  """PyTorch Linear default bias init: U(+-1/sqrt(fan_in))."""
  bound = 1.0 / (fan_in ** 0.5)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def rotary_for_heads(cos: Optional[jnp.ndarray], sin: Optional[jnp.ndarray], tokens: int,
                     head_dim: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The [T, R] rotary table as float32 [T, 1, R] (broadcasts over heads); built when not given."""
  if cos is None or sin is None:
    cos_np, sin_np = rotary_table(tokens)
    cos, sin = jnp.asarray(cos_np), jnp.asarray(sin_np)
  if cos.shape[0] != tokens or cos.shape[-1] > head_dim:
    raise ValueError(f"rotary table {cos.shape} does not fit {tokens} tokens x head_dim {head_dim}")
  return cos[:, None, :].astype(jnp.float32), sin[:, None, :].astype(jnp.float32)


def rotate_leading(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
  """Rotates the first R channels of x [B, T, H, D] by the [T, 1, R] table; the rest pass through.

  As rotary_embedding_torch.apply_rotary_emb with the official dim=4 table (R = 4).
  """
  rot = cos.shape[-1]
  return jnp.concatenate([apply_rotary(x[..., :rot], cos, sin), x[..., rot:]], axis=-1)


def pair_sum(x: jnp.ndarray) -> jnp.ndarray:
  """einops reduce('... (d r) -> ... d', 'sum', r=2): sums adjacent channels (2j, 2j+1)."""
  return x.reshape(x.shape[:-1] + (x.shape[-1] // 2, 2)).sum(axis=-1)


class HeadedAttention(nn.Module):
  """The hyperparameters every attention variant shares: [B, T, dim] tokens, `heads` x `head_dim`
  inner width, compute dtype, matmul precision, and whether Q/K are rotated by the rotary table."""
  dim: int = 16
  heads: int = 8
  head_dim: int = 4
  dtype: Any = jnp.float32
  precision: Any = None
  rotary: bool = True


class AdditiveAttention(HeadedAttention):
  """Official TransforMatcher FastAttention. Input [B, T, dim] -> [B, T, dim]."""

  @nn.compact
  def __call__(self, x: jnp.ndarray, cos: Optional[jnp.ndarray] = None,
               sin: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """`cos`/`sin`: [T, 4] rotary table (built from the token count when omitted; ignored when
    rotary=False); with head_dim > 4 only the first 4 channels of each head rotate (as the
    official dim=4 rotary)."""
    b, t, _ = x.shape
    h, d = self.heads, self.head_dim
    if d % 2:
      raise ValueError(f"head_dim must be even (pair-summing), got {d}")
    inner = h * d
    f32 = jnp.float32
    scale = d ** -0.5

    if self.rotary:
      cos, sin = rotary_for_heads(cos, sin, t, d)

    kinit = torch_linear_kernel_init()
    core = jax.lax.Precision.HIGHEST   # tiny float32 projections of the core: never TF32
    qkv = nn.Dense(3 * inner, use_bias=False, dtype=self.dtype, precision=self.precision,
                   kernel_init=kinit, name="to_qkv")(x)
    self.sow("intermediates", "qkv", qkv)
    q, k, v = jnp.split(qkv.astype(f32), 3, axis=-1)
    q = q.reshape(b, t, h, d)
    k = k.reshape(b, t, h, d)
    v = v.reshape(b, t, h, d)
    q_rot = rotate_leading(q, cos, sin) if self.rotary else q
    k_rot = rotate_leading(k, cos, sin) if self.rotary else k

    # steps 4-5: global query from un-rotated logits, rotated values
    q_logits = nn.Dense(1, use_bias=False, dtype=f32, param_dtype=f32, precision=core,
                        kernel_init=kinit, name="to_q_attn_logits")(q)[..., 0]            # [B, T, H]
    self.sow("intermediates", "q_logits", q_logits)
    q_attn = jax.nn.softmax(q_logits * scale, axis=1)
    global_q = jnp.einsum("bnh,bnhd->bhd", q_attn, q_rot, precision=core)   # as torch.einsum
    self.sow("intermediates", "global_q", global_q)

    # steps 6-8: global key
    p = pair_sum(k * global_q[:, None])                                  # [B, T, H, D/2]
    k_logits = nn.Dense(1, use_bias=False, dtype=f32, param_dtype=f32, precision=core,
                        kernel_init=kinit, name="to_k_attn_logits")(p)[..., 0]
    self.sow("intermediates", "k_logits", k_logits)
    k_attn = jax.nn.softmax(k_logits * scale, axis=1)
    global_k = jnp.einsum("bnh,bnhd->bhd", k_attn, k_rot, precision=core)
    self.sow("intermediates", "global_k", global_k)

    # steps 9-11: value path, residual with un-rotated q, output projection
    u = pair_sum(v * global_k[:, None])                                  # [B, T, H, D/2]
    r = nn.Dense(d, dtype=f32, param_dtype=f32, precision=core, kernel_init=kinit,
                 bias_init=torch_linear_bias_init(d // 2), name="to_r")(u) + q
    r = r.reshape(b, t, inner).astype(self.dtype)
    out = nn.Dense(self.dim, dtype=self.dtype, precision=self.precision, kernel_init=kinit,
                   bias_init=torch_linear_bias_init(inner), name="to_out")(r)
    self.sow("intermediates", "attn_out", out)
    return out
