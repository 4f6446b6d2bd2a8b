"""Position information of the match tokens: rotary (the official code) or absolute learnable.

`position` (config.model.position):
* 'rotary' (default, the official code): no additive term; the attention layers rotate Q and K by the
  official 1-D rotary table over the flattened token index (see `rotary`).
* 'absolute' (paper Tables 2-3, "Absolute [fairseq]"): a learnable table with one width-sized vector
  per 4-D position (h1, w1, h2, w2), added to the input embedding before the first block; the
  attention layers then do not rotate. The official code declares exactly this table,
  `match2match.posenc` [15, 15, 15, 15, 16] initialised N(0, 1), but its forward never reads it (the
  paper's absolute-PE runs are not in the released code), so where it is added follows the paper:
  to the embedded tokens X = C^T W_in, the input of the blocks. Initialisation and the name `posenc`
  follow the official declaration.
* 'none': neither (an ablation without position information).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

POSITION_MODES = ("rotary", "absolute", "none")


def check_position_mode(mode: str) -> None:
  if mode not in POSITION_MODES:
    raise ValueError(f"config.model.position must be one of {POSITION_MODES}, got {mode!r}")


class AbsolutePositionEmbedding(nn.Module):
  """x [B, T, width] + posenc[(h1, w1, h2, w2)] with tokens in row-major (h1, w1, h2, w2) order."""
  grid: tuple[int, int, int, int]

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    b, t, width = x.shape
    h1, w1, h2, w2 = self.grid
    if h1 * w1 * h2 * w2 != t:
      raise ValueError(f"{t} tokens do not form the 4-D grid {self.grid}")
    table = self.param("posenc", nn.initializers.normal(stddev=1.0), (h1, w1, h2, w2, width), jnp.float32)
    return x + table.reshape(t, width)[None].astype(x.dtype)
