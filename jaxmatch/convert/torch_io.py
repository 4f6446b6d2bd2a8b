"""Reading PyTorch-style weight files into `{name: numpy array}` without running pickled code.

.pth / .pt / .bin are read with `torch.load(weights_only=True)`, which refuses arbitrary pickled
objects; `allow_pickle=True` is the explicit opt-in for legacy checkpoints that need it.
.safetensors and .npz need no torch at all.
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np

_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "net")


def to_numpy_tree(sd: Mapping) -> dict[str, np.ndarray]:
  out = {}
  for key, value in sd.items():
    if hasattr(value, "detach"):  # torch.Tensor
      value = value.detach().cpu()
      if str(value.dtype) == "torch.bfloat16":
        value = value.float()
      value = value.numpy()
    out[str(key)] = np.asarray(value)
  return out


def unwrap_state_dict(obj) -> Mapping:
  """Training scripts often save {'state_dict': ..., 'epoch': ...}; return the tensor mapping."""
  if isinstance(obj, Mapping):
    for key in _CONTAINER_KEYS:
      if key in obj and isinstance(obj[key], Mapping):
        return obj[key]
  return obj


def strip_prefix(sd: Mapping[str, np.ndarray], prefix: str = "module.") -> dict[str, np.ndarray]:
  """Removes a DataParallel-style prefix when every key carries it."""
  if sd and all(k.startswith(prefix) for k in sd):
    return {k[len(prefix):]: v for k, v in sd.items()}
  return dict(sd)


def load_state_dict(path: str, allow_pickle: bool = False) -> dict[str, np.ndarray]:
  """Loads a checkpoint file as {official key: numpy array}."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint file not found: {path}")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".npz":
    with np.load(path, allow_pickle=False) as data:
      return strip_prefix({k: data[k] for k in data.files})
  if ext == ".safetensors":
    from safetensors.numpy import load_file
    return strip_prefix(load_file(path))
  if ext in (".pth", ".pt", ".bin", ".tar", ".ckpt"):
    try:
      import torch
    except ImportError as e:
      raise ImportError(f"reading {path} needs PyTorch; install the parity extra "
                        "(pip install -e '.[parity]') or convert the file to .safetensors/.npz") from e
    try:
      obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # pickle.UnpicklingError and friends
      if allow_pickle:
        raise
      raise ValueError(f"{path} could not be read with weights_only=True ({e}). If you trust the "
                       "file, pass --allow_pickle to run its pickled code.") from e
    return strip_prefix(to_numpy_tree(unwrap_state_dict(obj)))
  raise ValueError(f"unsupported checkpoint format {ext!r} ({path}); expected .pth/.pt/.bin, "
                   ".safetensors or .npz")
