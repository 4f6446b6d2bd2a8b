"""The rotary embedding exactly as TransforMatcher's code applies it (reference section 2.5).

Official: one `rotary_embedding_torch.RotaryEmbedding(dim=4, freqs_for='pixel')` (versions <= 0.4.0)
shared by all layers, evaluated on the *flattened* token index n = 0 .. T-1 (a 1-D rotary
embedding, not a 4-D one):

* frequencies `torch.linspace(1., max_freq / 2, dim // 2) * pi` in float32 = [f32(pi), f32(f32(5) * f32(pi))]
  (the second is one ulp above f32(5 * pi));
* angles `float32(n) * freq`, each product rounded to float32, repeated per interleaved pair:
  per-token angle vector [a_n, a_n, b_n, b_n];
* `t * cos + rotate_half(t) * sin` with rotate_half((x0, x1)) = (-x1, x0).

Because positions are integers and the frequencies multiples of pi, the rotation is nearly the
sign flip (-1)^n; what is left (|sin| up to 0.065) comes only from the float32 rounding of the
angles, so the table must be built exactly this way: float32 angles, cos/sin in float64 NumPy,
cast to float32 (a constant, not a parameter).
"""
from __future__ import annotations

import functools

import numpy as np
import jax.numpy as jnp

# dim=4 ('pixel' frequencies, default max_freq=10): linspace(1, 5, 2) * pi, computed in float32.
ROTARY_DIM = 4
ROTARY_FREQS = np.array([1.0, 5.0], dtype=np.float32) * np.float32(np.pi)


def pixel_freqs(dim: int = ROTARY_DIM, max_freq: float = 10.0) -> np.ndarray:
  """rotary_embedding_torch 'pixel' frequencies in float32: linspace(1, max_freq/2, dim//2) * pi."""
  base = np.linspace(1.0, max_freq / 2, dim // 2).astype(np.float32)
  return base * np.float32(np.pi)


def rotary_angles(num_tokens: int, freqs: np.ndarray = ROTARY_FREQS) -> np.ndarray:
  """[num_tokens, 2*len(freqs)] float32 angles [a, a, b, b] = float32(n) * freq (float32 products).

  Equals the official RotaryEmbedding cache (fixture array out/rotary_freqs_cache) bit for bit.
  """
  freqs = np.asarray(freqs, dtype=np.float32)
  pos = np.arange(num_tokens, dtype=np.float32)
  angles = pos[:, None] * freqs[None, :]            # float32 * float32 -> rounded to float32
  return np.repeat(angles, 2, axis=1).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _rotary_table_np(num_tokens: int) -> tuple[np.ndarray, np.ndarray]:
  angles = rotary_angles(num_tokens).astype(np.float64)
  cos = np.cos(angles).astype(np.float32)
  sin = np.sin(angles).astype(np.float32)
  cos.setflags(write=False)
  sin.setflags(write=False)
  return cos, sin


def rotary_table(num_tokens: int) -> tuple[np.ndarray, np.ndarray]:
  """(cos, sin), each [num_tokens, 4] float32: cos/sin of the float32 angles taken in float64."""
  return _rotary_table_np(int(num_tokens))


def rotate_half(x: jnp.ndarray) -> jnp.ndarray:
  """Interleaved pairs: (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
  pairs = x.reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
  rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1)
  return rotated.reshape(x.shape)


def apply_rotary(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
  """x * cos + rotate_half(x) * sin over the last axis (as rotary_embedding_torch.apply_rotary_emb).

  `cos`/`sin` must broadcast against `x` (e.g. [N, 1, 4] for x [B, N, heads, 4]).
  """
  return x * cos + rotate_half(x) * sin
