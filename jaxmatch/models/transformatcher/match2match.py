"""TransforMatcher's match-to-match head (official `Match2Match`, reference sections 2.3-2.6).

  corr [B, h, w, h, w, L] (pre-ReLU)  --ReLU--> tokens [B, T = h*w*h*w, L]
  --to_embedding (Linear L -> width)--> `depth` pre-LN blocks:
        x = x + Attn(LN_attn(x));   x = x + fc2(GELU_erf(fc1(LN_mlp(x))))
  (LayerNorm eps 1e-5; no final LayerNorm) --to_original (Linear width -> 1)--> refined [B, h, w, h, w]
  --4-D separable bilinear align-corners upsampling (first (h1, w1), then (h2, w2))-->
  corr_up [B, (f*h)*(f*w), (f*h)*(f*w)], row = source cell y*W + x, column = target cell.

Token n = ((h1*w + w1)*h + h2)*w + w2 (row-major), which is also the rotary position.

Flax parameter names and the official keys they come from (`L` = block index; mapping in
`jaxmatch.convert.transformatcher`; Dense kernels = transposed PyTorch Linear weights):
  to_embedding/{kernel,bias}            <- to_embedding.1.{weight,bias}
  block_L/norm_attn/{scale,bias}        <- trans_nc.L.0.norm.{weight,bias}
  block_L/attn/to_qkv/kernel            <- trans_nc.L.0.fn.to_qkv.weight
  block_L/attn/to_q_attn_logits/kernel  <- trans_nc.L.0.fn.to_q_attn_logits.weight
  block_L/attn/to_k_attn_logits/kernel  <- trans_nc.L.0.fn.to_k_attn_logits.weight
  block_L/attn/to_r/{kernel,bias}       <- trans_nc.L.0.fn.to_r.{weight,bias}
  block_L/attn/to_out/{kernel,bias}     <- trans_nc.L.0.fn.to_out.{weight,bias}
  block_L/norm_mlp/{scale,bias}         <- trans_nc.L.1.norm.{weight,bias}
  block_L/mlp_fc1/{kernel,bias}         <- trans_nc.L.1.fn.0.{weight,bias}
  block_L/mlp_fc2/{kernel,bias}         <- trans_nc.L.1.fn.2.{weight,bias}
  to_original/{kernel,bias}             <- to_original.0.{weight,bias}
Not parameters: the rotary table (a constant; official `pos_emb.freqs` buffers) and the
official `posenc` tensor (never used by the official forward).

Variants (paper Tables 2-3; the official code has only the default): `attention` picks the layer of
every block ('additive' default, 'performer', 'linformer', 'softmax'; see `variants`) and `position`
the position information ('rotary' default, 'absolute' adds the learnable `posenc` table to the
embedded tokens, 'none'; see `positional`). Non-default choices add or replace parameters under the
same `block_L/attn` names (Performer: none beyond to_qkv/to_out; Linformer: proj_k, proj_v; absolute:
`position/posenc` [h1, w1, h2, w2, width]).

Initialisation follows PyTorch's defaults (uniform +-1/sqrt(fan_in) for Linear weights and
biases; LayerNorm 1, 0), so a from-scratch run starts from the official distribution.

Intermediates sown into 'intermediates': embed [B, T, width]; block_L/after_attn and
block_L/out [B, T, width]; block_L/attn/{qkv, q_logits, global_q, k_logits, global_k, attn_out}.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmatch.models.transformatcher.attention import torch_linear_bias_init, torch_linear_kernel_init
from jaxmatch.models.transformatcher.geometry import upsample4d_align_corners
from jaxmatch.models.transformatcher.linformer import DEFAULT_PROJECTED_LENGTH
from jaxmatch.models.transformatcher.performer import DEFAULT_NUM_FEATURES
from jaxmatch.models.transformatcher.positional import AbsolutePositionEmbedding, check_position_mode
from jaxmatch.models.transformatcher.rotary import rotary_table
from jaxmatch.models.transformatcher.vanilla import DEFAULT_MAX_ATTENTION_BYTES
from jaxmatch.models.transformatcher.variants import check_attention, make_attention

LN_EPS = 1e-5


def _dense(features: int, fan_in: int, name: str, dtype, precision, use_bias: bool = True):
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, precision=precision,
                  kernel_init=torch_linear_kernel_init(), bias_init=torch_linear_bias_init(fan_in),
                  name=name)


def _layer_norm(name: str, dtype):
  # Two-pass variance (as PyTorch) instead of E[x^2] - E[x]^2.
  return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, use_fast_variance=False, name=name)


class Match2MatchBlock(nn.Module):
  """Pre-LN attention block (additive by default) + pre-LN GELU MLP, both with residuals.

  `cos`/`sin` None: no rotary embedding (the absolute and no-position variants).
  """
  width: int = 16
  heads: int = 8
  head_dim: int = 4
  mlp_ratio: int = 4
  dtype: Any = jnp.float32
  precision: Any = None
  attention: str = "additive"
  performer_features: int = DEFAULT_NUM_FEATURES
  linformer_k: int = DEFAULT_PROJECTED_LENGTH
  max_attention_bytes: int = DEFAULT_MAX_ATTENTION_BYTES

  @nn.compact
  def __call__(self, x: jnp.ndarray, cos: Optional[jnp.ndarray],
               sin: Optional[jnp.ndarray]) -> jnp.ndarray:
    y = _layer_norm("norm_attn", self.dtype)(x)
    y = make_attention(self.attention, self.width, self.heads, self.head_dim, self.dtype,
                       self.precision, rotary=cos is not None, performer_features=self.performer_features,
                       linformer_k=self.linformer_k, max_attention_bytes=self.max_attention_bytes)(y, cos, sin)
    x = x + y.astype(x.dtype)
    self.sow("intermediates", "after_attn", x)
    hidden = self.width * self.mlp_ratio
    y = _layer_norm("norm_mlp", self.dtype)(x)
    y = _dense(hidden, self.width, "mlp_fc1", self.dtype, self.precision)(y)
    y = nn.gelu(y, approximate=False)
    y = _dense(self.width, hidden, "mlp_fc2", self.dtype, self.precision)(y)
    x = x + y.astype(x.dtype)
    self.sow("intermediates", "out", x)
    return x


class Match2Match(nn.Module):
  """Official Match2Match from the pre-ReLU multi-layer correlation.

  __call__(corr_prerelu [B, h, w, h, w, L]) -> (refined [B, h, w, h, w] float32,
                                                 corr_up [B, (f h)(f w), (f h)(f w)] float32)
  Any grid size and any L work (the paper: 15 -> 30, L = 26).
  """
  width: int = 16
  heads: int = 8
  head_dim: int = 4
  depth: int = 6
  mlp_ratio: int = 4
  upsample_factor: int = 2
  dtype: Any = jnp.float32
  precision: Any = None
  attention: str = "additive"
  position: str = "rotary"
  performer_features: int = DEFAULT_NUM_FEATURES
  linformer_k: int = DEFAULT_PROJECTED_LENGTH
  max_attention_bytes: int = DEFAULT_MAX_ATTENTION_BYTES

  @nn.compact
  def __call__(self, corr: jnp.ndarray):
    if corr.ndim != 6:
      raise ValueError(f"Match2Match expects [B, h1, w1, h2, w2, L], got shape {corr.shape}")
    check_attention(self.attention)
    check_position_mode(self.position)
    b, h1, w1, h2, w2, n_ch = corr.shape
    tokens = h1 * w1 * h2 * w2
    x = jax.nn.relu(corr).reshape(b, tokens, n_ch)
    x = _dense(self.width, n_ch, "to_embedding", self.dtype, self.precision)(x)
    x = x.astype(jnp.float32)       # residual stream kept in float32
    if self.position == "absolute":
      x = AbsolutePositionEmbedding((h1, w1, h2, w2), name="position")(x)
    self.sow("intermediates", "embed", x)

    cos = sin = None
    if self.position == "rotary":
      cos_np, sin_np = rotary_table(tokens)
      cos, sin = jnp.asarray(cos_np), jnp.asarray(sin_np)
    for i in range(self.depth):
      x = Match2MatchBlock(self.width, self.heads, self.head_dim, self.mlp_ratio, self.dtype,
                           self.precision, self.attention, self.performer_features, self.linformer_k,
                           self.max_attention_bytes, name=f"block_{i}")(x, cos, sin)

    refined = _dense(1, self.width, "to_original", self.dtype, self.precision)(x)
    refined = refined[..., 0].astype(jnp.float32).reshape(b, h1, w1, h2, w2)
    f = self.upsample_factor
    up = upsample4d_align_corners(refined, (f * h1, f * w1, f * h2, f * w2))
    corr_up = up.reshape(b, f * h1 * f * w1, f * h2 * f * w2)
    return refined, corr_up
