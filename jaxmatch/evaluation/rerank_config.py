"""k-reciprocal re-ranking's options, shared by the preparation (rerank.py) and the Jaccard step
(jaccard.py) so that both depend on this module and neither on the other's caller."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class RerankConfig:
  k1: int = 20
  k2: int = 6
  lambda_value: float = 0.3
  float16_like_transreid: bool = False

  def __post_init__(self):
    if self.k1 < 1 or self.k2 < 1:
      raise ValueError(f'k1 and k2 must be >= 1, got k1={self.k1}, k2={self.k2}')
    if not 0.0 <= self.lambda_value <= 1.0:
      raise ValueError(f'lambda_value must be in [0, 1], got {self.lambda_value}')

  @classmethod
  def from_dict(cls, options: dict | None) -> RerankConfig:
    """{'k1', 'k2', 'lambda' (or 'lambda_value'), 'float16_like_transreid'}; missing keys take defaults."""
    options = dict(options or {})
    if 'lambda' in options:
      options['lambda_value'] = options.pop('lambda')
    unknown = set(options) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f'unknown re-ranking options {sorted(unknown)}; expected k1, k2, lambda '
                       '(or lambda_value) and float16_like_transreid')
    return cls(**options)

  @property
  def half_k1(self) -> int:
    return int(np.around(self.k1 / 2))   # numpy rounds half to even: k1=5 -> 2, as the reference
