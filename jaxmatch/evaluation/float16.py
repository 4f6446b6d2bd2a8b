"""Rounding float32 values to float16 exactly where a float16 reference rounds (TransReID's re-ranking).

An explicit rounding function rather than float16 dtypes: XLA may compute float16 arithmetic in excess
precision, which would round at other points than numpy does.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

F16_MIN_NORMAL = 2.0 ** -14
F16_MAX = 65504.0


def round_to_float16(x: jax.Array) -> jax.Array:
  """float32 -> float32 holding the nearest float16 value (ties to even), by integer arithmetic."""
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  lsb = (bits >> 13) & 1
  normal = jax.lax.bitcast_convert_type((bits + 0xFFF + lsb) & jnp.uint32(0xFFFFE000), jnp.float32)
  # Below 2^-14 float16 is subnormal, a fixed grid of 2^-24; scaling by powers of two is exact.
  subnormal = jnp.round(x * 2.0 ** 24) * 2.0 ** -24
  out = jnp.where(jnp.abs(x) < F16_MIN_NORMAL, subnormal, normal)
  return jnp.where(jnp.abs(out) > F16_MAX, jnp.sign(x) * jnp.inf, out)


def round_if(x: jax.Array, f16: bool) -> jax.Array:
  return round_to_float16(x) if f16 else x
