"""Evaluators: PCK for semantic correspondence (re-identification metrics live beside it)."""
from __future__ import annotations

from jaxmatch.evaluation.pck import ALPHAS, PCKAccumulator, pck_per_pair, pck_threshold

__all__ = ['ALPHAS', 'PCKAccumulator', 'pck_per_pair', 'pck_threshold']
