"""Pairwise feature distances and the row-block runner every re-ID evaluator is built on.

Metrics (smaller = more similar), all float32:
  'sqeuclidean'  ||q||^2 + ||g||^2 - 2 q.g, what TransReID's `euclidean_distance` and torchreid's
                 'euclidean' metric return (both squared, neither clamped: the diagonal of a set against
                 itself can be a tiny negative number)
  'euclidean'    sqrt(max(sqeuclidean, 0))
  'cosine'       1 - q^.g^ with x^ = x / max(||x||, 1e-12) (torchreid; F.normalize's epsilon)
Matmuls run at HIGHEST precision: a GPU's default float32 matmul may use TF32 (10-bit mantissa), which
would reorder near neighbours and change metrics.

Row blocks: a (rows x columns) computation never exists whole. It is a pure kernel over one block of rows
(`rows`, sliced on the host, padded to a fixed block so it compiles once) and arrays every block needs
(`shared`, placed once). On a mesh the block's rows are split over the 'data' axis with `shard_map` and
`shared` is replicated, so every device handles its own rows against all columns with no communication:
rankings sort along the column axis, which splitting the columns would turn into a cross-device merge.
Across hosts every process holds the same inputs, places them on the global mesh and receives every
block's rows back (an all-gather in parallel.fetch), so each host ends with the whole result. Without a
mesh everything stays on the process's own device, so one process alone may evaluate (e.g. figures).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from jaxmatch import numerics, parallel
from jaxmatch.numerics import NORMALIZE_EPS, l2_normalize  # noqa: F401  (re-exported)

METRICS = ('sqeuclidean', 'euclidean', 'cosine')
HIGHEST = jax.lax.Precision.HIGHEST
DEFAULT_MEMORY_BUDGET = 1 << 30   # bytes of block temporaries per call when no block size is given


def check_metric(metric: str) -> str:
  if metric not in METRICS:
    raise ValueError(f'unknown distance metric {metric!r}; expected one of {METRICS}')
  return metric


def squared_norms(x: jax.Array) -> jax.Array:
  return jnp.sum(x * x, axis=-1)


def sqeuclidean(x: jax.Array, y: jax.Array, y_sqnorm: jax.Array | None = None) -> jax.Array:
  """[n, d] x [m, d] -> [n, m] squared distances, (|x|^2 + |y|^2) - 2 x.y as torch's addmm computes it."""
  y_sqnorm = squared_norms(y) if y_sqnorm is None else y_sqnorm
  dots = jnp.matmul(x, y.T, precision=HIGHEST)
  return (squared_norms(x)[:, None] + y_sqnorm[None, :]) - 2.0 * dots


def tree_sum(x: jax.Array) -> jax.Array:
  """Sum over the last axis by explicit pairwise halving, so the rounding is the same for every row count
  and device count (XLA chooses its own reduction order per shape, which can differ by an ulp)."""
  width = 1 << max(x.shape[-1] - 1, 0).bit_length()
  x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])])
  while x.shape[-1] > 1:
    half = x.shape[-1] // 2
    x = x[..., :half] + x[..., half:]
  return x[..., 0]


def divide_by_row_max(d: jax.Array) -> jax.Array:
  """Each row divided by its maximum (re-ranking's normalisation: the reference divides a symmetric matrix
  by its column maxima, which is the same thing transposed). Exact division, as numpy's: a quotient one
  ulp off can swap two near-tied neighbours at a list boundary and change a k-reciprocal set."""
  return numerics.divide(d, jnp.max(d, axis=1, keepdims=True))


def pairwise_distance(x: jax.Array, y: jax.Array, metric: str) -> jax.Array:
  """[n, d] x [m, d] -> [n, m] under `metric` (see the module docstring)."""
  if metric == 'sqeuclidean':
    return sqeuclidean(x, y)
  if metric == 'euclidean':
    return jnp.sqrt(jnp.maximum(sqeuclidean(x, y), 0.0))
  if metric == 'cosine':
    return 1.0 - jnp.matmul(l2_normalize(x), l2_normalize(y).T, precision=HIGHEST)
  raise ValueError(f'unknown distance metric {metric!r}; expected one of {METRICS}')


@dataclasses.dataclass(frozen=True)
class BlockedDistance:
  """Distances from blocks of rows to a fixed column set: fn(*row_block, *shared) -> [block, num_columns].

  `fn` must be hashable and stable (a module-level function or one from a cached factory) so that its
  compiled form is reused across calls.
  """
  rows: tuple[np.ndarray, ...]
  shared: tuple[np.ndarray, ...]
  fn: Callable[..., jax.Array]
  num_rows: int
  num_columns: int


@functools.lru_cache(maxsize=None)
def _feature_distance_fn(metric: str) -> Callable[..., jax.Array]:
  def fn(x_block, y):
    return pairwise_distance(x_block, y, metric)
  return fn


def _identity_rows(rows_block):
  return rows_block


def feature_distances(x, y, metric: str) -> BlockedDistance:
  """Rows of x against all of y under `metric`."""
  x, y = check_features(x, y)
  return BlockedDistance((x,), (y,), _feature_distance_fn(check_metric(metric)), x.shape[0], y.shape[0])


def matrix_distances(distmat) -> BlockedDistance:
  """Rows of a given distance matrix (host memory), moved to the device one block at a time."""
  distmat = np.asarray(distmat, np.float32)
  if distmat.ndim != 2:
    raise ValueError(f'distance matrix must be 2-D [num_query, num_gallery], got shape {distmat.shape}')
  if not np.isfinite(distmat).all():
    raise ValueError('distance matrix contains NaN or inf entries; expected finite distances')
  return BlockedDistance((distmat,), (), _identity_rows, distmat.shape[0], distmat.shape[1])


def check_features(x, y) -> tuple[np.ndarray, np.ndarray]:
  x = np.asarray(x, np.float32)
  y = np.asarray(y, np.float32)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f'features must be [num, dim] arrays with the same dim; got query {x.shape} and '
                     f'gallery {y.shape}')
  for name, a in (('query', x), ('gallery', y)):
    if not np.isfinite(a).all():
      raise ValueError(f'{name} features contain NaN or inf entries; expected finite features')
  return x, y


# ---------------------------------------------------------------------------------------------------
# Row-block runner

def num_devices(mesh: Mesh | None) -> int:
  return 1 if mesh is None else int(mesh.devices.size)


def resolve_block_size(num_rows: int, mesh: Mesh | None, block_size: int | None = None,
                       bytes_per_row: int = 0, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
  """Rows per block: `block_size`, or as many as `memory_budget` allows; a multiple of the mesh size and
  never more than the (rounded-up) number of rows."""
  n = num_devices(mesh)
  if block_size is None:
    block_size = max(1, memory_budget // max(bytes_per_row, 1))
  if block_size < 1:
    raise ValueError(f'block_size must be >= 1, got {block_size}')
  block_size = min(block_size, max(num_rows, 1))
  return -(-block_size // n) * n


@functools.lru_cache(maxsize=None)
def _compiled(kernel: Callable, num_row_args: int, num_shared_args: int, mesh: Mesh | None):
  if mesh is None:
    return jax.jit(kernel)
  specs = (P(parallel.DATA_AXIS),) * num_row_args + (P(),) * num_shared_args
  # check_vma off: loop carries start replicated and become per-device; every kernel is row-local.
  return jax.jit(jax.shard_map(kernel, mesh=mesh, in_specs=specs, out_specs=P(parallel.DATA_AXIS),
                               check_vma=False))


def _place(x: np.ndarray, mesh: Mesh | None, sharded: bool) -> jax.Array:
  if mesh is None:
    return jax.device_put(x)
  return jax.device_put(x, parallel.data_sharded(mesh) if sharded else parallel.replicated(mesh))


def _padded_rows(x: np.ndarray, start: int, stop: int, size: int) -> np.ndarray:
  """x[start:stop] padded to `size` rows by repeating the last row (finite values in padding rows)."""
  part = x[start:stop]
  if part.shape[0] == size:
    return part
  return np.concatenate([part, np.repeat(part[-1:], size - part.shape[0], axis=0)])


def map_row_blocks(kernel: Callable, rows: Sequence[np.ndarray], shared: Sequence[Any], *, block_size: int,
                   mesh: Mesh | None = None) -> Iterator[tuple[int, int, Any]]:
  """Yields (start, stop, kernel outputs on the device, padded to block_size rows) for each row block.

  Outputs stay on the device (dispatch is asynchronous), so the next block's input transfer overlaps
  with the current block's computation.
  """
  num_rows = rows[0].shape[0]
  if any(r.shape[0] != num_rows for r in rows):
    raise ValueError(f'row arrays disagree on the number of rows: {[r.shape for r in rows]}')
  if block_size % num_devices(mesh):
    raise ValueError(f'block_size {block_size} is not a multiple of the {num_devices(mesh)} mesh devices')
  fn = _compiled(kernel, len(rows), len(shared), mesh)
  placed = tuple(s if isinstance(s, jax.Array) and mesh is None else _place(np.asarray(s), mesh, False)
                 for s in shared)
  for start in range(0, num_rows, block_size):
    stop = min(start + block_size, num_rows)
    block = tuple(_place(_padded_rows(r, start, stop, block_size), mesh, True) for r in rows)
    yield start, stop, fn(*block, *placed)


def gather_row_blocks(kernel: Callable, rows: Sequence[np.ndarray], shared: Sequence[Any], *,
                      block_size: int, mesh: Mesh | None = None) -> Any:
  """Runs every block and returns the outputs as numpy arrays with exactly num_rows rows."""
  pieces = [(start, stop, out) for start, stop, out in
            map_row_blocks(kernel, rows, shared, block_size=block_size, mesh=mesh)]
  host = [(stop - start, parallel.fetch(out)) for start, stop, out in pieces]
  return jax.tree.map(lambda *xs: np.concatenate([x[:n] for (n, _), x in zip(host, xs)]),
                      *[h for _, h in host])


def distance_matrix(x, y, metric: str = 'euclidean', *, block_size: int | None = None,
                    mesh: Mesh | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> np.ndarray:
  """The full [n, m] matrix, computed in row blocks (for inputs whose matrix fits in host memory)."""
  dist = feature_distances(x, y, metric)
  block = resolve_block_size(dist.num_rows, mesh, block_size, 12 * dist.num_columns, memory_budget)
  return gather_row_blocks(dist.fn, dist.rows, dist.shared, block_size=block, mesh=mesh)
