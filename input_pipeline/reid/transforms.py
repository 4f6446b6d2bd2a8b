"""Re-ID image transforms in NumPy and PIL, each drawing from an explicit `np.random.Generator`.

The official re-ID codebases build their training transform from torchvision on PIL images; the
steps here reproduce those operations (not their random streams, which come from torch/`random`):

* resize: PIL resampling straight to (H, W), no aspect preservation. torchvision `Resize` on a PIL
  image is PIL bilinear (antialiased) unless told otherwise; TransReID trains with bicubic and tests
  with bilinear, TransMatcher uses bicubic for both, BoT/NFormer and KPM bilinear.
* horizontal flip with probability p.
* pad + random crop: constant-0 padding on every side, then a uniformly placed (H, W) window
  (torchvision `Pad(10)` + `RandomCrop`: offsets drawn inclusively in [0, 2 * pad]).
* rotation: uniform angle in [-deg, deg], nearest neighbour, no expand, fill 0 (torchvision
  `RandomRotation` on PIL).
* colour jitter: torchvision `ColorJitter` on PIL, done with the same PIL calls (ImageEnhance
  Brightness / Contrast / Color and the uint8 HSV hue rotation), so for equal factors and order the
  output is bit-identical. As in torchvision the four steps run in a fresh random order per image;
  the difference is only the draw order (order first, then every factor, from NumPy).
* occlusion: QAConv's white square (side uniform in [max(1, min*W), max*W), top-left uniform).
* normalise: x / 255 then (x - mean) / std, per recipe (ImageNet, 0.5/0.5, or none).
* random erasing on the NORMALISED image, as the official code applies it to the normalised tensor.
  'bot' (BoT / NFormer): p = 0.5, up to 100 attempts, area fraction U(0.02, 0.4), aspect U(0.3,
  1/0.3), h = round(sqrt(a * r)), w = round(sqrt(a / r)), accepted when h < H and w < W, top/left
  uniform inclusive so the box lies inside the image, box filled with the constants (0.485, 0.456,
  0.406) written into the normalised values (not zeros, not the normalised mean). 'timm_pixel'
  (TransReID, timm 0.3 `RandomErasing(mode='pixel')`): area U(0.02, 1/3), log-uniform aspect,
  10 attempts, per-pixel N(0, 1) fill.

`ReidAugment` composes them from a config in the order resize -> flip -> pad + crop -> rotation ->
colour jitter -> occlusion -> normalise -> erasing. (TransMatcher flips after the crop; flipping
commutes with a uniformly placed crop of a symmetric padding, so the distribution is the same.)
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageEnhance

from input_pipeline.images import IMAGENET_MEAN, IMAGENET_STD

INTERPOLATIONS = {'nearest': Image.NEAREST, 'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}


# ----------------------------------------------------------------------------- geometry

def resize(img: np.ndarray, size_hw: Sequence[int], interpolation: str = 'bilinear') -> np.ndarray:
  """uint8 [h, w, 3] -> [H, W, 3] by PIL resampling (antialiased when shrinking, as torchvision)."""
  if interpolation not in INTERPOLATIONS:
    raise ValueError(f'interpolation must be one of {sorted(INTERPOLATIONS)}, '
                     f'got {interpolation!r}')
  h, w = size_hw
  if img.shape[:2] == (h, w):
    return img
  return np.asarray(Image.fromarray(img).resize((w, h), INTERPOLATIONS[interpolation]))


def hflip(img: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(img[:, ::-1])


def random_hflip(rng: np.random.Generator, img: np.ndarray, p: float) -> np.ndarray:
  return hflip(img) if rng.uniform() < p else img


def pad(img: np.ndarray, amount: int, value: int = 0) -> np.ndarray:
  return np.pad(img, ((amount, amount), (amount, amount), (0, 0)), constant_values=value)


def crop(img: np.ndarray, top: int, left: int, size_hw: Sequence[int]) -> np.ndarray:
  h, w = size_hw
  return np.ascontiguousarray(img[top:top + h, left:left + w])


def random_crop(rng: np.random.Generator, img: np.ndarray, size_hw: Sequence[int]) -> np.ndarray:
  """(H, W) window at a uniform offset; every offset in [0, h - H] x [0, w - W] is possible."""
  h, w = size_hw
  if img.shape[0] < h or img.shape[1] < w:
    raise ValueError(f'cannot crop {size_hw} out of an image of shape {img.shape[:2]}')
  top = int(rng.integers(0, img.shape[0] - h, endpoint=True))
  left = int(rng.integers(0, img.shape[1] - w, endpoint=True))
  return crop(img, top, left, size_hw)


def pad_and_random_crop(rng: np.random.Generator, img: np.ndarray, amount: int) -> np.ndarray:
  return random_crop(rng, pad(img, amount), img.shape[:2]) if amount > 0 else img


def random_rotation(rng: np.random.Generator, img: np.ndarray, degrees: float) -> np.ndarray:
  """Centre rotation by U(-deg, deg), nearest neighbour, same size, black fill."""
  if degrees <= 0:
    return img
  angle = float(rng.uniform(-degrees, degrees))
  pil = Image.fromarray(img).rotate(angle, resample=Image.NEAREST, expand=False,
                                    fillcolor=(0, 0, 0))
  return np.asarray(pil)


# ----------------------------------------------------------------------------- photometric

def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
  return np.asarray(ImageEnhance.Brightness(Image.fromarray(img)).enhance(factor))


def adjust_contrast(img: np.ndarray, factor: float) -> np.ndarray:
  return np.asarray(ImageEnhance.Contrast(Image.fromarray(img)).enhance(factor))


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
  return np.asarray(ImageEnhance.Color(Image.fromarray(img)).enhance(factor))


def adjust_hue(img: np.ndarray, shift: float) -> np.ndarray:
  """Hue rotation by `shift` turns in PIL's uint8 HSV (the hue byte wraps), as torchvision."""
  if not -0.5 <= shift <= 0.5:
    raise ValueError(f'hue shift must lie in [-0.5, 0.5], got {shift}')
  hue, sat, val = Image.fromarray(img).convert('HSV').split()
  h = np.asarray(hue, np.uint8) + np.uint8(np.int64(shift * 255) % 256)   # uint8 wrap-around
  return np.asarray(Image.merge('HSV', (Image.fromarray(h, 'L'), sat, val)).convert('RGB'))


def jitter_range(value, name: str, centre: float,
                 bound: tuple[float, float]) -> tuple[float, float] | None:
  """torchvision's parameter rule: a scalar v means [centre - v, centre + v] (clipped at the bound);
  a pair is used as given. Returns None when the range is the identity."""
  if value is None:
    return None
  if np.isscalar(value):
    if value < 0:
      raise ValueError(f'colour jitter {name} must be non-negative, got {value}')
    lo, hi = max(centre - value, bound[0]), centre + value
  else:
    lo, hi = (float(v) for v in value)
  if not bound[0] <= lo <= hi <= bound[1]:
    raise ValueError(f'colour jitter {name} range ({lo}, {hi}) must lie within {bound}')
  return None if lo == hi == centre else (lo, hi)


@dataclasses.dataclass(frozen=True)
class ColorJitter:
  """torchvision ColorJitter(brightness, contrast, saturation, hue) on uint8 images."""
  brightness: object = 0.0
  contrast: object = 0.0
  saturation: object = 0.0
  hue: object = 0.0

  def ranges(self):
    inf = float('inf')
    return (jitter_range(self.brightness, 'brightness', 1.0, (0.0, inf)),
            jitter_range(self.contrast, 'contrast', 1.0, (0.0, inf)),
            jitter_range(self.saturation, 'saturation', 1.0, (0.0, inf)),
            jitter_range(self.hue, 'hue', 0.0, (-0.5, 0.5)))

  def draw(self, rng: np.random.Generator):
    """(order of the four steps, factor per step or None)."""
    order = rng.permutation(4)
    factors = [None if r is None else float(rng.uniform(r[0], r[1])) for r in self.ranges()]
    return order, factors

  def __call__(self, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    order, factors = self.draw(rng)
    return apply_color_jitter(img, order, factors)


def apply_color_jitter(img: np.ndarray, order, factors) -> np.ndarray:
  steps = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
  for i in order:
    if factors[i] is not None:
      img = steps[i](img, factors[i])
  return img


def random_occlusion(rng: np.random.Generator, img: np.ndarray, min_size: float,
                     max_size: float) -> np.ndarray:
  """QAConv RandomOcclusion: a white s x s square, s in [max(1, min*W), max*W), inside the image."""
  h, w = img.shape[:2]
  lo, hi = max(1, int(min_size * w)), int(max_size * w)
  if hi <= lo or hi > min(h, w):
    raise ValueError(f'occlusion sizes ({min_size}, {max_size}) give no valid square side for a '
                     f'{h}x{w} image')
  side = int(rng.integers(lo, hi))
  top, left = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
  out = img.copy()
  out[top:top + side, left:left + side] = 255
  return out


def normalize(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """uint8 [H, W, 3] -> float32 (x / 255 - mean) / std (torchvision ToTensor + Normalize)."""
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  return np.ascontiguousarray((img.astype(np.float32) / np.float32(255) - mean) / std)


# ----------------------------------------------------------------------------- random erasing

@dataclasses.dataclass(frozen=True)
class RandomErasing:
  """One erased box on a normalised float [H, W, C] image (module doc: the two recipes)."""
  prob: float = 0.5
  area: tuple[float, float] = (0.02, 0.4)
  aspect: tuple[float, float] = (0.3, 1 / 0.3)
  log_aspect: bool = False       # timm draws the aspect ratio log-uniformly, BoT uniformly
  attempts: int = 100
  fill: str = 'mean'             # 'mean': the constants `fill_value`; 'normal': N(0, 1) per pixel
  fill_value: tuple[float, ...] = IMAGENET_MEAN

  def __post_init__(self):
    if self.fill not in ('mean', 'normal'):
      raise ValueError(f"erasing fill must be 'mean' or 'normal', got {self.fill!r}")
    if not (0 < self.area[0] <= self.area[1] <= 1 and 0 < self.aspect[0] <= self.aspect[1]):
      raise ValueError(f'erasing needs 0 < area lo <= hi <= 1 and 0 < aspect lo <= hi, got '
                       f'area={self.area}, aspect={self.aspect}')

  def draw_box(self, rng: np.random.Generator, h: int, w: int):
    """(top, left, height, width) of the box, or None (no erasing this time)."""
    if rng.uniform() >= self.prob:
      return None
    for _ in range(self.attempts):
      target = rng.uniform(*self.area) * h * w
      if self.log_aspect:
        ratio = math.exp(rng.uniform(math.log(self.aspect[0]), math.log(self.aspect[1])))
      else:
        ratio = rng.uniform(*self.aspect)
      eh, ew = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
      if eh < h and ew < w:            # as the official code (a 0-sized box erases nothing)
        top = int(rng.integers(0, h - eh, endpoint=True))
        left = int(rng.integers(0, w - ew, endpoint=True))
        return top, left, eh, ew
    return None

  def __call__(self, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    h, w, c = img.shape
    box = self.draw_box(rng, h, w)
    if box is None:
      return img
    top, left, eh, ew = box
    out = img.copy()
    if self.fill == 'mean':
      if len(self.fill_value) != c:
        raise ValueError(f'erasing fill_value has {len(self.fill_value)} values for {c} channels')
      out[top:top + eh, left:left + ew] = np.asarray(self.fill_value, img.dtype)
    else:
      out[top:top + eh, left:left + ew] = rng.standard_normal((eh, ew, c)).astype(img.dtype)
    return out


ERASING_RECIPES = {
    'bot': dict(prob=0.5, area=(0.02, 0.4), aspect=(0.3, 1 / 0.3), log_aspect=False, attempts=100,
                fill='mean', fill_value=IMAGENET_MEAN),
    'timm_pixel': dict(prob=0.5, area=(0.02, 1 / 3), aspect=(0.3, 1 / 0.3), log_aspect=True,
                       attempts=10, fill='normal'),
}


# ----------------------------------------------------------------------------- composition

DEFAULTS = dict(
    interpolation='bilinear',       # training resize
    test_interpolation='bilinear',  # evaluation resize
    flip_prob=0.5, pad=10, rotation=0.0,
    color_jitter=None,              # None or {brightness, contrast, saturation, hue}
    occlusion=None,                 # None or (min_size, max_size) as fractions of the width
    mean=IMAGENET_MEAN, std=IMAGENET_STD,
    erasing='bot',                  # None, a name in ERASING_RECIPES, or RandomErasing fields
)


def _plain(config) -> dict:
  """dict / ConfigDict / None -> a plain dict with only known keys (unknown keys are an error)."""
  if config is None:
    return {}
  if hasattr(config, 'to_dict'):
    config = config.to_dict()
  if not isinstance(config, Mapping):
    raise TypeError(f'augment config must be a mapping or ConfigDict, got {type(config).__name__}')
  unknown = sorted(set(config) - set(DEFAULTS))
  if unknown:
    raise ValueError(f'unknown augment keys {unknown}; known keys are {sorted(DEFAULTS)}')
  return dict(config)


def make_erasing(spec) -> RandomErasing | None:
  """None / False / '' / 'none' (as a command-line override can only give a string): no erasing."""
  if spec is None or spec is False or (isinstance(spec, str) and spec.lower() in ('', 'none')):
    return None
  if isinstance(spec, str):
    if spec not in ERASING_RECIPES:
      raise ValueError(f'unknown erasing recipe {spec!r}; choose from {sorted(ERASING_RECIPES)}')
    return RandomErasing(**ERASING_RECIPES[spec])
  spec = spec.to_dict() if hasattr(spec, 'to_dict') else dict(spec)
  base = dict(ERASING_RECIPES[spec.pop('recipe', 'bot')])
  base.update(spec)
  return RandomErasing(**{k: tuple(v) if isinstance(v, list) else v for k, v in base.items()})


class ReidAugment:
  """Training and test transforms of one recipe: uint8 image of any size -> float32 [H, W, 3]."""

  def __init__(self, size_hw: Sequence[int], config=None):
    cfg = {**DEFAULTS, **_plain(config)}
    self.size = tuple(int(s) for s in size_hw)
    if len(self.size) != 2 or min(self.size) < 1:
      raise ValueError(f'img_size must be (height, width) with positive entries, got {size_hw}')
    for key in ('interpolation', 'test_interpolation'):
      if cfg[key] not in INTERPOLATIONS:
        raise ValueError(f'{key} must be one of {sorted(INTERPOLATIONS)}, got {cfg[key]!r}')
    self.cfg = cfg
    jitter = cfg['color_jitter']
    self.jitter = ColorJitter(**_plain_jitter(jitter)) if jitter else None
    if self.jitter is not None:
      self.jitter.ranges()       # validate now, not inside a worker
    self.erasing = make_erasing(cfg['erasing'])
    if len(cfg['mean']) != 3 or len(cfg['std']) != 3 or min(cfg['std']) <= 0:
      raise ValueError(f"mean/std need 3 values each with std > 0, got {cfg['mean']}, {cfg['std']}")

  def train(self, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    cfg = self.cfg
    img = resize(img, self.size, cfg['interpolation'])
    img = random_hflip(rng, img, cfg['flip_prob'])
    img = pad_and_random_crop(rng, img, int(cfg['pad']))
    img = random_rotation(rng, img, float(cfg['rotation']))
    if self.jitter is not None:
      img = self.jitter(rng, img)
    if cfg['occlusion']:
      img = random_occlusion(rng, img, *cfg['occlusion'])
    out = normalize(img, cfg['mean'], cfg['std'])
    return self.erasing(rng, out) if self.erasing is not None else out

  def test(self, img: np.ndarray) -> np.ndarray:
    return normalize(resize(img, self.size, self.cfg['test_interpolation']), self.cfg['mean'],
                     self.cfg['std'])


def _plain_jitter(jitter) -> dict:
  jitter = jitter.to_dict() if hasattr(jitter, 'to_dict') else dict(jitter)
  unknown = set(jitter) - {'brightness', 'contrast', 'saturation', 'hue'}
  if unknown:
    raise ValueError(f'unknown color_jitter keys {sorted(unknown)}')
  return {k: tuple(v) if isinstance(v, list) else v for k, v in jitter.items()}
