"""Keypoint and box geometry for the S x S input frame: rescaling and the keypoint-aware random crop.

Rescaling follows the official loaders bit for bit: a float32 factor float32(S / W) times float32
coordinates (x by S/W, y by S/H), which reproduces their torch tensor-times-Python-float products.
The random crop is TransforMatcher's `random_crop`: with probability 1 - p a plain resize; otherwise a
crop whose edges are drawn (inclusive integers) between the image border and the keypoints' extent
padded by 20 px (or, for a single keypoint, by half its distance to each border), resized to S x S;
keypoints and the box are shifted, rescaled and clamped to [0, S - 1]. Images here are uint8 and
resized with PIL bilinear (antialiased), where the official code resizes the normalised float
tensor with torchvision; the difference is uint8 rounding and the antialias filter on downscaling.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

CROP_PAD = 20
CROP_PROB = 0.5


def frame_factors(size_wh, img_size: int) -> np.ndarray:
  """float32 (S / W, S / H)."""
  w, h = size_wh
  return np.array([np.float32(img_size / w), np.float32(img_size / h)], np.float32)


def scale_points(points, size_wh, img_size: int) -> np.ndarray:
  """[K, 2] (x, y) original pixels -> the S x S frame, exactly as the official get_points."""
  return np.asarray(points, np.float32) * frame_factors(size_wh, img_size)


def scale_bbox(bbox, size_wh, img_size: int) -> np.ndarray:
  """[x1, y1, x2, y2] original pixels -> the S x S frame, exactly as the official get_bbox."""
  return np.asarray(bbox, np.float32) * np.tile(frame_factors(size_wh, img_size), 2)


def resize_image(img: np.ndarray, img_size: int) -> np.ndarray:
  """uint8 [H, W, 3] -> [S, S, 3] with PIL bilinear (antialiased), like torchvision Resize on PIL."""
  return np.asarray(Image.fromarray(img).resize((img_size, img_size), Image.BILINEAR))


def crop_pads(points: np.ndarray, size_wh) -> tuple[int, int, int, int]:
  """(left, right, top, bottom) margins kept around the keypoints."""
  if len(points) != 1:
    return CROP_PAD, CROP_PAD, CROP_PAD, CROP_PAD
  (x, y), (w, h) = points[0], size_wh
  return int(x // 2), int((w - x) // 2), int(y // 2), int((h - y) // 2)


def draw_crop_box(rng: np.random.Generator, points: np.ndarray, size_wh) -> tuple[int, int, int, int]:
  """(left, top, width, height) with inclusive integer draws as in the official random_crop."""
  w, h = size_wh
  left_pad, right_pad, top_pad, bottom_pad = crop_pads(points, size_wh)
  lo, hi = points.min(axis=0).astype(np.int64), points.max(axis=0).astype(np.int64)  # truncation
  left = int(rng.integers(0, max(0, lo[0] - left_pad), endpoint=True))
  top = int(rng.integers(0, max(0, lo[1] - top_pad), endpoint=True))
  right = int(rng.integers(min(w, hi[0] + right_pad), w, endpoint=True))
  bottom = int(rng.integers(min(h, hi[1] + bottom_pad), h, endpoint=True))
  return left, top, max(right - left, 1), max(bottom - top, 1)


def crop_and_resize(img: np.ndarray, box, img_size: int) -> np.ndarray:
  left, top, width, height = box
  pil = Image.fromarray(img).crop((left, top, left + width, top + height))
  return np.asarray(pil.resize((img_size, img_size), Image.BILINEAR))


def random_keypoint_crop(rng: np.random.Generator, img: np.ndarray, points: np.ndarray, bbox,
                         img_size: int, p: float = CROP_PROB):
  """Augmenting resize/crop of one image.

  Args: uint8 image [H, W, 3], valid keypoints [n, 2] and bbox [4] in ORIGINAL pixels.
  Returns (image [S, S, 3] uint8, keypoints [n, 2] and bbox [4] float32 in the S frame).
  """
  h, w = img.shape[:2]
  points = np.asarray(points, np.float32)
  scaled = scale_points(points, (w, h), img_size)
  if rng.uniform() > p or len(points) == 0:
    return resize_image(img, img_size), scaled, scale_bbox(bbox, (w, h), img_size)
  # Round trip through the S frame as the official code does (it starts from rescaled keypoints),
  # so the truncated extents agree with it even where float32 rounding moves an integer.
  original = scaled * np.array([np.float32(w / img_size), np.float32(h / img_size)], np.float32)
  box = draw_crop_box(rng, original, (w, h))
  left, top, width, height = box
  factors = np.array([np.float32(img_size / width), np.float32(img_size / height)], np.float32)
  shift = np.array([left, top], np.float32)
  new_points = np.clip((original - shift) * factors, 0, img_size - 1)
  new_bbox = np.clip((np.asarray(bbox, np.float32) - np.tile(shift, 2)) * np.tile(factors, 2),
                     0, img_size - 1)
  return crop_and_resize(img, box, img_size), new_points, new_bbox
