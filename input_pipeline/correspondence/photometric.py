"""Photometric training augmentation on uint8 RGB images, in NumPy and PIL.

Equivalent of the albumentations 1.x chain TransforMatcher copies from CATs (each step p = 0.2, in
this order): ToGray, Posterize(4 bits), Equalize (per channel, OpenCV's algorithm), Sharpen
(alpha in [0.2, 0.5], lightness in [0.5, 1]), RandomBrightnessContrast (+-0.2, brightness by max),
Solarize(128), ColorJitter(0.2, 0.2, 0.2, 0.2) with its four parts in random order. The arithmetic
follows the albumentations/OpenCV uint8 formulas (look-up tables, truncation or round-to-nearest as
they do). Known differences: the hue shift is done in float HSV, where OpenCV quantises uint8 HSV
(hue in 2 deg steps, saturation and value in 8 bits), and greyscale conversions use float weights
rather than OpenCV's fixed-point ones, so a pixel may differ by a level or two. All draws come from the given NumPy
generator, so results are reproducible per record.
"""
from __future__ import annotations

import numpy as np

STEP_PROB = 0.2
_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


def _to_uint8(values: np.ndarray) -> np.ndarray:
  """OpenCV saturate_cast: round half to even, clip."""
  return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _apply_lut(img: np.ndarray, lut: np.ndarray) -> np.ndarray:
  return lut.astype(np.uint8)[img]


def gray(img: np.ndarray) -> np.ndarray:
  """[H, W] uint8 luma."""
  return _to_uint8(img.astype(np.float32) @ _GRAY_WEIGHTS)


def to_gray(img: np.ndarray) -> np.ndarray:
  return np.repeat(gray(img)[..., None], 3, axis=2)


def posterize(img: np.ndarray, bits: int = 4) -> np.ndarray:
  return img & np.uint8((0xFF << (8 - bits)) & 0xFF)


def _equalize_channel(channel: np.ndarray) -> np.ndarray:
  """cv2.equalizeHist: the first occupied level maps to 0, the cumulative count scales to 255."""
  hist = np.bincount(channel.ravel(), minlength=256)
  first = int(np.flatnonzero(hist)[0])
  total = channel.size
  if hist[first] == total:
    return np.full_like(channel, first)
  scale = np.float32(255.0 / (total - hist[first]))
  cum = np.cumsum(hist) - hist[first]
  lut = _to_uint8(cum.astype(np.float32) * scale)
  lut[:first + 1] = 0
  return lut[channel]


def equalize(img: np.ndarray) -> np.ndarray:
  return np.stack([_equalize_channel(img[..., c]) for c in range(3)], axis=2)


def sharpen(img: np.ndarray, alpha: float, lightness: float) -> np.ndarray:
  """3x3 kernel (1 - a) * identity + a * [[-1 -1 -1] [-1 8+l -1] [-1 -1 -1]], reflect-101 borders."""
  kernel = np.full((3, 3), -alpha, np.float32)
  kernel[1, 1] = (1 - alpha) + alpha * (8 + lightness)
  padded = np.pad(img.astype(np.float32), ((1, 1), (1, 1), (0, 0)), mode='reflect')
  h, w = img.shape[:2]
  out = sum(kernel[dy, dx] * padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))
  return _to_uint8(out)


def brightness_contrast(img: np.ndarray, alpha: float, beta: float) -> np.ndarray:
  """albumentations uint8 path: lut = clip(i * alpha + beta * 255) truncated to uint8."""
  lut = np.arange(256, dtype=np.float32) * np.float32(alpha) + np.float32(beta * 255)
  return _apply_lut(img, np.clip(lut, 0, 255))


def solarize(img: np.ndarray, threshold: int = 128) -> np.ndarray:
  levels = np.arange(256)
  return _apply_lut(img, np.where(levels >= threshold, 255 - levels, levels))


def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
  return _apply_lut(img, np.clip(np.arange(256) * factor, 0, 255))


def adjust_contrast(img: np.ndarray, factor: float) -> np.ndarray:
  mean = float(gray(img).mean())
  return _apply_lut(img, np.clip(np.arange(256) * factor + mean * (1 - factor), 0, 255))


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
  grey = gray(img).astype(np.float32)[..., None]
  return _to_uint8(img.astype(np.float32) * factor + grey * (1 - factor))


def _rgb_to_hsv(rgb: np.ndarray):
  """Float HSV (each in [0, 1]) of float RGB in [0, 1], vectorised colorsys."""
  maxc, minc = rgb.max(-1), rgb.min(-1)
  delta = maxc - minc
  safe = np.where(delta > 0, delta, 1.0)
  r, g, b = (rgb[..., i] for i in range(3))
  hue = np.where(maxc == r, (g - b) / safe, np.where(maxc == g, 2.0 + (b - r) / safe,
                                                     4.0 + (r - g) / safe))
  hue = np.where(delta > 0, (hue / 6.0) % 1.0, 0.0)
  return hue, np.where(maxc > 0, delta / np.where(maxc > 0, maxc, 1.0), 0.0), maxc


def _hsv_to_rgb(hue, sat, val) -> np.ndarray:
  sector = np.floor(hue * 6.0)
  frac = hue * 6.0 - sector
  p, q, t = val * (1 - sat), val * (1 - sat * frac), val * (1 - sat * (1 - frac))
  choices = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)]
  index = sector.astype(np.int64) % 6
  return np.stack([np.choose(index, [c[ch] for c in choices]) for ch in range(3)], axis=-1)


def adjust_hue(img: np.ndarray, shift: float) -> np.ndarray:
  """Rotates hue by `shift` turns (+-0.2 = +-72 deg) in float HSV."""
  if shift == 0:
    return img
  hue, sat, val = _rgb_to_hsv(img.astype(np.float64) / 255.0)
  return _to_uint8(_hsv_to_rgb((hue + shift) % 1.0, sat, val) * 255.0)


def color_jitter(rng: np.random.Generator, img: np.ndarray, strength: float = 0.2) -> np.ndarray:
  b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
  hue = rng.uniform(-strength, strength)
  steps = [lambda x: adjust_brightness(x, b), lambda x: adjust_contrast(x, c),
           lambda x: adjust_saturation(x, s), lambda x: adjust_hue(x, hue)]
  for i in rng.permutation(4):
    img = steps[i](img)
  return img


def photometric_augment(rng: np.random.Generator, img: np.ndarray,
                        p: float = STEP_PROB) -> np.ndarray:
  """The full chain on a uint8 [H, W, 3] image; each step fires independently with probability p."""
  chain = [
      lambda x: to_gray(x),
      lambda x: posterize(x, 4),
      lambda x: equalize(x),
      lambda x: sharpen(x, rng.uniform(0.2, 0.5), rng.uniform(0.5, 1.0)),
      lambda x: brightness_contrast(x, 1 + rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2)),
      lambda x: solarize(x, 128),
      lambda x: color_jitter(rng, x, 0.2),
  ]
  for step in chain:
    if rng.uniform() < p:
      img = step(img)
  return np.ascontiguousarray(img)
