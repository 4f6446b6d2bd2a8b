"""Image decoding with PIL: JPEG bytes or a file path to a uint8 RGB array.

Decoding is forced to completion (`Image.load`) so that truncated files fail here, with the file's
name, instead of later inside a worker process with an anonymous PIL error.
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from input_pipeline.errors import CorruptImageError

# The ImageNet channel statistics every backbone here was trained with (RGB in [0, 1]); the one copy.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def open_rgb(data: bytes | str | os.PathLike, name: str | None = None) -> Image.Image:
  """Opens and fully decodes an image, converted to RGB."""
  label = name or (str(data) if not isinstance(data, bytes) else '<bytes>')
  source = io.BytesIO(data) if isinstance(data, bytes) else data
  try:
    with Image.open(source) as img:
      img.load()
      return img.convert('RGB')
  except FileNotFoundError:
    raise  # a missing file is a layout problem, reported by the caller
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
    raise CorruptImageError(f'cannot decode image {label}: {err}') from err


def decode_image(data: bytes | str | os.PathLike, name: str | None = None) -> np.ndarray:
  """Returns the image as a contiguous uint8 array of shape [H, W, 3]."""
  return np.ascontiguousarray(np.asarray(open_rgb(data, name), dtype=np.uint8))
