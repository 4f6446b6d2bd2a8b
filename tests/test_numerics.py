"""Exact division and L2 normalisation, bit for bit against numpy float32."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmatch import numerics

# numpy: 0.32549423 and 0.3254942; times the reciprocal of the maximum both become 0.3254942
NEAR_TIE_ROW = np.array([[0.7555896, 0.75558954, 2.321361]], np.float32)


def _row_max_divide(d):
  return numerics.divide(d, jnp.max(d, axis=1, keepdims=True))


def test_row_max_division_keeps_a_near_tie_apart():
  got = np.asarray(jax.jit(_row_max_divide)(NEAR_TIE_ROW))
  expected = NEAR_TIE_ROW / NEAR_TIE_ROW.max(axis=1, keepdims=True)
  np.testing.assert_array_equal(got, expected)
  assert got[0, 0] != got[0, 1]
  # what the reciprocal rewrite computes: the two collapse to one value
  reciprocal = NEAR_TIE_ROW * (np.float32(1) / NEAR_TIE_ROW.max())
  assert reciprocal[0, 0] == reciprocal[0, 1]


@pytest.mark.parametrize('divisor', ['row max', 'column', 'jit argument', 'constant'])
def test_divide_equals_numpy_for_every_broadcast(divisor):
  rs = np.random.RandomState(1)
  x = rs.uniform(0, 3, (37, 211)).astype(np.float32)
  y = {'row max': x.max(axis=1, keepdims=True), 'column': rs.uniform(0.5, 2, (1, 211)).astype(np.float32),
       'jit argument': np.float32(7), 'constant': None}[divisor]
  if y is None:
    got, expected = jax.jit(lambda a: numerics.divide(a, np.float32(3)))(x), x / np.float32(3)
  else:
    got, expected = jax.jit(numerics.divide)(x, y), x / y
  np.testing.assert_array_equal(np.asarray(got), expected)


def test_compiled_row_max_division_has_no_reciprocal():
  x = jax.ShapeDtypeStruct((16, 64), jnp.float32)
  hlo = jax.jit(_row_max_divide).lower(x).compile().as_text()
  assert ' multiply(' not in hlo and ' divide(' in hlo
  # the unprotected form is rewritten (if XLA stops doing so, numerics.divide's barrier is moot)
  plain = jax.jit(lambda d: d / jnp.max(d, axis=1, keepdims=True)).lower(x).compile().as_text()
  assert ' multiply(' in plain


def test_divide_inside_shard_map_and_loops():
  mesh = jax.make_mesh((8,), ('data',))
  x = np.random.RandomState(2).uniform(0, 3, (64, 129)).astype(np.float32)

  def steps(d):
    return jax.lax.fori_loop(0, 3, lambda _, a: _row_max_divide(a) + 0.5, d)

  fn = jax.jit(jax.shard_map(steps, mesh=mesh, in_specs=jax.P('data'), out_specs=jax.P('data')))
  expected = x
  for _ in range(3):
    expected = expected / expected.max(axis=1, keepdims=True) + np.float32(0.5)
  got = fn(jax.device_put(x, jax.NamedSharding(mesh, jax.P('data'))))
  np.testing.assert_array_equal(np.asarray(got), expected)


def test_l2_normalize_divides_exactly_by_the_clamped_norm():
  """The norm's summation order is XLA's (numpy's pairwise sum and torch's differ again, by an ulp in
  about a fifth of the rows here), so the division is checked given the same norm."""
  rs = np.random.RandomState(3)
  x = rs.normal(size=(300, 96)).astype(np.float32)
  x[7] = 0.0                                                     # clamped to eps: stays zero
  x[8] = 1e-15                                                   # norm 9.8e-15 < eps (not subnormal)
  norm = np.asarray(jax.jit(numerics.l2_norm)(x))
  expected = x / np.maximum(norm, np.float32(numerics.NORMALIZE_EPS))
  for got in (jax.jit(numerics.l2_normalize)(x), numerics.l2_normalize(x)):
    np.testing.assert_array_equal(np.asarray(got), expected)
  assert not np.asarray(expected[7]).any() and np.all(expected[8] == np.float32(1e-15) / np.float32(1e-12))
  np.testing.assert_allclose(norm, np.sqrt(np.sum(x * x, axis=-1, keepdims=True)), rtol=1e-6)


def test_l2_normalize_along_another_axis():
  x = np.random.RandomState(4).normal(size=(5, 40, 7)).astype(np.float32)
  norm = np.asarray(jax.jit(lambda a: numerics.l2_norm(a, axis=1))(x))
  got = jax.jit(lambda a: numerics.l2_normalize(a, axis=1))(x)
  np.testing.assert_array_equal(np.asarray(got), x / np.maximum(norm, np.float32(1e-12)))
