"""Float arithmetic that compiles to exactly the operations written, so results equal numpy's bit for bit.

XLA's algebraic simplifier rewrites a division by a broadcast value, A / broadcast(B), into
A * broadcast(1 / B): one division per row instead of one per element, but two roundings, so on random
data about a third of the quotients come out one ulp away from the correctly rounded A / B that numpy
(and torch) compute. It does so whatever B is, a reduction of A, a jit argument or a constant, and
jnp's implicit broadcasting (x / row_max[:, None], x / scalar) always produces the broadcast. `divide`
broadcasts the divisor itself and passes it through `jax.lax.optimization_barrier`, an operation the
simplifier cannot see through, so the division stays a division. The barrier is dropped after the
simplifier has run and the broadcast then fuses into the division as before: no full-size copy of the
divisor is made.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NORMALIZE_EPS = 1e-12   # torch.nn.functional.normalize's default


def divide(x, y) -> jax.Array:
  """x / y elementwise with numpy broadcasting, each quotient rounded once (IEEE division)."""
  x, y = jnp.asarray(x), jnp.asarray(y)
  dtype = jnp.result_type(x, y)
  shape = jnp.broadcast_shapes(x.shape, y.shape)
  x = jnp.broadcast_to(x.astype(dtype), shape)
  y = jax.lax.optimization_barrier(jnp.broadcast_to(y.astype(dtype), shape))
  return x / y


def l2_norm(x, axis: int = -1) -> jax.Array:
  """sqrt(sum(x * x)) along `axis`, kept as a size-1 axis (the summation order is XLA's own)."""
  x = jnp.asarray(x)
  return jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))


def l2_normalize(x, eps: float = NORMALIZE_EPS, axis: int = -1) -> jax.Array:
  """x / max(||x||_2, eps) along `axis`, as torch.nn.functional.normalize(x, dim=axis, eps=eps)."""
  x = jnp.asarray(x)
  return divide(x, jnp.maximum(l2_norm(x, axis), eps))
