"""Performer attention (FAVOR+, Choromanski et al. 2020): the "Performer" row of the paper's Table 3.

Not in the official code; the paper names the architecture only, so this follows the Performer paper's
FAVOR+ with positive orthogonal random features. For x in R^D (queries and keys each pre-scaled by
D^-1/4, so that their product carries softmax's 1/sqrt(D)):

    phi(x) = exp(w_i . x - |x|^2 / 2) / sqrt(m),  i = 1..m,  w_i ~ N(0, I_D)
    E_w[phi(q) . phi(k)] = exp(q . k)                 (Lemma 1: positive and unbiased)

The m features come in blocks of D exactly orthogonal directions (Haar: QR of a Gaussian matrix with
diag(R) > 0), each row
rescaled by the norm of an independent Gaussian D-vector so every row is still marginally N(0, I_D);
orthogonality lowers the estimator's variance, unbiasedness is kept. Attention over T tokens in O(T m D):

    out = D^-1 phi(Q) (phi(K)^T V),   D = diag(phi(Q) (phi(K)^T 1_T)).

The features are redrawn on every call from the 'performer' PRNG stream (`apply(..., rngs={'performer':
key})`): training passes a key derived from the step's loss rng (a fresh draw every step, as the
reference FAVOR+ implementation redraws), evaluation a fixed key, so predictions are reproducible.
One draw per layer, shared by the heads (as the reference).

Feature count: neither the TransforMatcher paper nor its code gives one; the default 256 is the reference
FAVOR+ implementation's default and the setting of the Performer paper's experiments (performer-pytorch's
default D ln D would be 5 features at D = 4, too few for a usable softmax estimate).

Numerics: exp arguments are shifted by their maximum (per query token; per head over all key tokens),
constants that cancel between numerator and normaliser; a 1e-6 floor after exp keeps the normaliser
positive (the reference's numerical stabiliser).
"""
from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmatch.models.transformatcher.attention import HeadedAttention
from jaxmatch.models.transformatcher.multihead import (CORE_PRECISION, check_even_head_dim,
                                                       project_out, project_qkv)

DEFAULT_NUM_FEATURES = 256
RNG_STREAM = "performer"
STABILIZER = 1e-6


def orthogonal_random_features(key: jax.Array, num_features: int, dim: int) -> jnp.ndarray:
  """[num_features, dim] float32: blocks of `dim` orthogonal rows, each row norm-rescaled to N(0, I)."""
  if num_features < 1 or dim < 1:
    raise ValueError(f"need num_features >= 1 and dim >= 1, got {num_features}, {dim}")
  blocks = math.ceil(num_features / dim)
  block_key, norm_key = jax.random.split(key)
  gaussian = jax.random.normal(block_key, (blocks, dim, dim), jnp.float32)
  q, r = jnp.linalg.qr(gaussian)
  # Householder QR leaves the signs of diag(R) to the data (r_11 = -sign(g_11)|g_1|), which would tie
  # each direction's sign to its own coordinates and bias exp(w.x); fixing diag(R) > 0 makes Q Haar
  # distributed, so its columns (rows of Q^T) are isotropic unit vectors, orthogonal within a block.
  q = q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
  directions = jnp.swapaxes(q, -1, -2).reshape(blocks * dim, dim)[:num_features]
  norms = jnp.linalg.norm(jax.random.normal(norm_key, (num_features, dim), jnp.float32), axis=-1)
  return directions * norms[:, None]


def positive_random_features(x: jnp.ndarray, omega: jnp.ndarray,
                             offset: jnp.ndarray | float = 0.0) -> jnp.ndarray:
  """phi(x) = exp(omega x - |x|^2/2 - offset) / sqrt(m) for x [..., D], omega [m, D] -> [..., m].

  With offset 0 this is FAVOR+'s unbiased feature map; an offset only rescales phi.
  """
  proj = jnp.einsum("...d,md->...m", x, omega, precision=CORE_PRECISION)
  sq = 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
  return jnp.exp(proj - sq - offset) / math.sqrt(omega.shape[0])


def _stable_features(x: jnp.ndarray, omega: jnp.ndarray, token_axis_max: bool) -> jnp.ndarray:
  """FAVOR+ features of x [B, T, H, D] with the max-shift (per token, or per head over all tokens)."""
  proj = jnp.einsum("bthd,md->bthm", x, omega, precision=CORE_PRECISION)
  sq = 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
  axes = (1, 3) if token_axis_max else (3,)
  shift = jax.lax.stop_gradient(jnp.max(proj - sq, axis=axes, keepdims=True))
  return (jnp.exp(proj - sq - shift) + STABILIZER) / math.sqrt(omega.shape[0])


def favor_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, omega: jnp.ndarray) -> jnp.ndarray:
  """FAVOR+ estimate of softmax(q k^T / sqrt(D)) v for [B, T, H, D] inputs and features omega [m, D]."""
  quarter = q.shape[-1] ** -0.25
  phi_q = _stable_features(q * quarter, omega, token_axis_max=False)    # [B, T, H, m]
  phi_k = _stable_features(k * quarter, omega, token_axis_max=True)
  kv = jnp.einsum("bthm,bthd->bhmd", phi_k, v, precision=CORE_PRECISION)
  num = jnp.einsum("bthm,bhmd->bthd", phi_q, kv, precision=CORE_PRECISION)
  den = jnp.einsum("bthm,bhm->bth", phi_q, jnp.sum(phi_k, axis=1), precision=CORE_PRECISION)
  return num / den[..., None]


class PerformerAttention(HeadedAttention):
  """Multi-head FAVOR+ self-attention, [B, T, dim] -> [B, T, dim]; needs the 'performer' rng stream."""
  num_features: int = DEFAULT_NUM_FEATURES

  @nn.compact
  def __call__(self, x: jnp.ndarray, cos: Optional[jnp.ndarray] = None,
               sin: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    check_even_head_dim(self.head_dim, self.rotary)
    if not self.has_rng(RNG_STREAM):
      raise ValueError("Performer attention redraws its random features from an explicit PRNG key: "
                       f"pass rngs={{'{RNG_STREAM}': key}} to init/apply (training: from the loss rng; "
                       "evaluation: a fixed key)")
    omega = orthogonal_random_features(self.make_rng(RNG_STREAM), self.num_features, self.head_dim)
    self.sow("intermediates", "features", omega)
    q, k, v = project_qkv(x, self.heads, self.head_dim, self.dtype, self.precision, self.rotary, cos, sin)
    out = project_out(favor_attention(q, k, v, omega), self.dim, self.dtype, self.precision)
    self.sow("intermediates", "attn_out", out)
    return out
