"""Helpers every model uses: compute dtypes by name and image-size handling."""
from __future__ import annotations

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(name: str):
  """config.model.dtype -> the jnp dtype activations are computed in (parameters stay float32)."""
  if name not in DTYPES:
    raise ValueError(f"config.model.dtype must be one of {sorted(DTYPES)}, got {name!r}")
  return DTYPES[name]


def image_size(img_size, min_side: int = 1) -> tuple[int, int]:
  """An int or (height, width) -> (height, width); each side at least `min_side` pixels."""
  size = (int(img_size), int(img_size)) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
  if len(size) != 2 or min(size) < min_side:
    raise ValueError(f"img_size must be an int or (height, width) of at least {min_side} px, got {img_size!r}")
  return size
