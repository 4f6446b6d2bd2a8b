"""Accounting for every key of a foreign (PyTorch) state_dict during conversion.

A converter claims each key it maps (checking the shape) or ignores (with a reason).
`finish()` raises one error that lists every missing, unexpected and mis-shaped key,
so a mismatched checkpoint is explained in full instead of failing on the first key.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


class CheckpointMismatchError(ValueError):
  """The checkpoint does not fit the model: lists missing / unexpected / mis-shaped keys."""


class KeyAccountant:
  """Tracks which keys of `state_dict` were used, ignored, absent or of the wrong shape."""

  def __init__(self, state_dict: Mapping[str, np.ndarray], what: str = "checkpoint"):
    self._sd = state_dict
    self._what = what
    self._used: set[str] = set()
    self.ignored: dict[str, str] = {}
    self._missing: list[str] = []
    self._misshaped: list[str] = []

  def take(self, key: str, shape: Sequence[int] | None = None) -> np.ndarray | None:
    """Returns the tensor for `key` (float arrays as float32), recording problems instead of raising."""
    if key not in self._sd:
      self._missing.append(key if shape is None else f"{key} {list(shape)}")
      return None
    value = np.asarray(self._sd[key])
    self._used.add(key)
    if shape is not None and tuple(value.shape) != tuple(shape):
      self._misshaped.append(f"{key}: checkpoint {list(value.shape)}, model expects {list(shape)}")
      return None
    if np.issubdtype(value.dtype, np.floating):
      value = value.astype(np.float32)
    return value

  def shape_of(self, key: str) -> tuple[int, ...] | None:
    """Shape of `key` in the checkpoint (None if absent), without claiming the key."""
    return tuple(np.shape(self._sd[key])) if key in self._sd else None

  def ignore(self, key: str, reason: str) -> None:
    """Marks `key` as deliberately unused (it must exist; its absence is not an error)."""
    if key in self._sd:
      self._used.add(key)
      self.ignored[key] = reason

  def ignore_matching(self, predicate, reason: str) -> None:
    for key in self._sd:
      if predicate(key):
        self.ignore(key, reason)

  def finish(self) -> None:
    """Raises CheckpointMismatchError if any key was missing, unexpected or mis-shaped."""
    unexpected = sorted(k for k in self._sd if k not in self._used)
    if not (self._missing or self._misshaped or unexpected):
      return
    lines = [f"{self._what} does not match the model:"]
    for title, keys in (("missing", self._missing), ("unexpected", unexpected),
                        ("wrong shape", self._misshaped)):
      if keys:
        lines.append(f"  {title} ({len(keys)}):")
        lines.extend(f"    {k}" for k in keys[:50])
        if len(keys) > 50:
          lines.append(f"    ... and {len(keys) - 50} more")
    raise CheckpointMismatchError("\n".join(lines))


def set_path(tree: dict, path: Sequence[str], value) -> None:
  """tree[p0][p1]...[pn] = value, creating the intermediate dicts."""
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def get_path(tree: Mapping, path: Sequence[str], default=KeyError):
  """tree[p0][p1]...[pn]; `default` (if given) where the path does not exist."""
  for key in path:
    if not isinstance(tree, Mapping) or key not in tree:
      if default is KeyError:
        raise KeyError("/".join(path))
      return default
    tree = tree[key]
  return tree


def torch_conv_to_flax(w: np.ndarray) -> np.ndarray:
  """[out, in, kh, kw] (PyTorch OIHW) -> [kh, kw, in, out] (flax HWIO)."""
  return np.transpose(w, (2, 3, 1, 0))


def torch_linear_to_flax(w: np.ndarray) -> np.ndarray:
  """[out, in] (PyTorch Linear) -> [in, out] (flax Dense kernel)."""
  return np.transpose(w, (1, 0))


def _flat(tree, prefix=""):
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      yield from _flat(v, f"{prefix}/{k}" if prefix else str(k))
  else:
    yield prefix, tree


def assert_tree_matches(expected, got, what: str = "converted variables") -> None:
  """Both trees must have the same leaf paths and shapes (e.g. converter output vs jax.eval_shape(init))."""
  exp = {k: tuple(v.shape) for k, v in _flat(expected)}
  have = {k: tuple(np.shape(v)) for k, v in _flat(got)}
  missing = sorted(set(exp) - set(have))
  extra = sorted(set(have) - set(exp))
  wrong = sorted(f"{k}: {list(have[k])} vs model {list(exp[k])}" for k in set(exp) & set(have)
                 if exp[k] != have[k])
  if missing or extra or wrong:
    parts = [f"{what} do not fit the model:"]
    for title, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)):
      if keys:
        parts.append(f"  {title} ({len(keys)}): " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
    raise CheckpointMismatchError("\n".join(parts))
