"""Small helpers shared by the stand-in modules (the official repository has a `utils.py` too)."""
import os

import torch

VARIANTS = ("", "official_limits", "perturb_correlation", "perturb_match2match", "perturb_attention_scale",
            "perturb_key_temperature", "perturb_keypoints")


def standin_variant() -> str:
  """Which variant of the stand-in runs (see ../README.md); read at call time, not import time."""
  value = os.environ.get("JAXMATCH_PARITY_STANDIN", "")
  if value not in VARIANTS:
    raise ValueError(f"JAXMATCH_PARITY_STANDIN={value!r}; expected one of {VARIANTS}")
  return value


def l2normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
  """x / ||x||_2 along `dim`, with no epsilon (an all-zero vector gives NaN, as in the official code)."""
  return x / torch.linalg.vector_norm(x, ord=2, dim=dim, keepdim=True)
