"""TransReID's train/test transforms (reference/transreid.md, section 5): timm's pixel-mode random
erasing and the torchvision composition, expressed through the re-ID augment config."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from conftest import optional_import
from input_pipeline.reid import transforms as T
from input_pipeline.reid.sampling import augment_rng

SIZE = (256, 128)
TRANSREID = dict(interpolation='bicubic', test_interpolation='bilinear', flip_prob=0.5, pad=10,
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), erasing='timm_pixel')


@pytest.fixture(scope='module')
def normalised():
  return np.random.default_rng(0).uniform(-1, 1, size=(*SIZE, 3)).astype(np.float32)


def _box(mask: np.ndarray):
  """(top, left, height, width) of a rectangular mask, or None; fails if it is not a rectangle."""
  if not mask.any():
    return None
  ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
  top, left, h, w = ys[0], xs[0], ys[-1] - ys[0] + 1, xs[-1] - xs[0] + 1
  assert mask.sum() == h * w, 'the erased region is not one rectangle'
  return int(top), int(left), int(h), int(w)


class _NumpyRandom:
  """Python's `random` API over a NumPy generator, with the draws the erasing code makes in that order."""

  def __init__(self, rng: np.random.Generator):
    self.rng = rng

  def random(self):
    return self.rng.uniform()

  def uniform(self, lo, hi):
    return self.rng.uniform(lo, hi)

  def randint(self, lo, hi):                     # inclusive, as random.randint
    return int(self.rng.integers(lo, hi, endpoint=True))


def test_timm_pixel_erasing_places_the_box_as_timm(normalised, monkeypatch):
  """timm's own RandomErasing, its `random` module swapped for the same NumPy draws: identical boxes."""
  torch = optional_import('torch')
  erasing_module = optional_import('timm.data.random_erasing')
  theirs = erasing_module.RandomErasing(probability=0.5, mode='pixel', max_count=1, device='cpu')
  ours = T.make_erasing('timm_pixel')
  chw = torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))
  for seed in range(100):
    monkeypatch.setattr(erasing_module, 'random', _NumpyRandom(np.random.default_rng(seed)))
    ref = theirs(chw.clone()).numpy().transpose(1, 2, 0)
    out = ours(np.random.default_rng(seed), normalised)
    assert _box((out != normalised).any(axis=2)) == _box((ref != normalised).any(axis=2)), seed


def test_timm_pixel_erasing_boxes_rate_and_untouched_pixels(normalised):
  erasing = T.make_erasing('timm_pixel')
  h, w = SIZE
  erased, ratios = 0, []
  for seed in range(400):
    out = erasing(np.random.default_rng(seed), normalised)
    mask = (out != normalised).any(axis=2)
    np.testing.assert_array_equal(out[~mask], normalised[~mask])      # outside the box: unchanged
    box = _box(mask)                                                   # inside the image by indexing
    assert box == erasing.draw_box(np.random.default_rng(seed), h, w)
    if box is None:
      continue
    erased += 1
    _, _, eh, ew = box
    assert eh < h and ew < w
    # Rounding each side to a whole pixel moves the area by under 6% and the aspect by under 5% here.
    assert 0.02 * 0.94 <= eh * ew / (h * w) <= (1 / 3) * 1.02
    assert 0.3 * 0.95 <= eh / ew <= (1 / 0.3) / 0.95
    ratios.append(math.log(eh / ew))
  assert 160 <= erased <= 240                                          # p = 0.5 (4 sigma)
  # log-uniform aspect: log(h / w) symmetric about 0 across (log 0.3, -log 0.3)
  assert abs(np.mean(ratios)) < 0.15 and np.max(ratios) > 0.8 and np.min(ratios) < -0.8


def test_timm_pixel_fill_is_iid_standard_normal():
  erasing = T.make_erasing('timm_pixel')
  img = np.full((*SIZE, 3), 7.0, np.float32)           # no N(0, 1) draw reaches 7 in practice
  values = []
  for seed in range(40):
    out = erasing(np.random.default_rng(seed), img)
    mask = (out != 7.0).any(axis=2)
    values.append(out[mask])                           # [pixels, 3]
  values = np.concatenate(values)
  assert len(values) > 10_000
  assert abs(values.mean()) < 0.02 and abs(values.std() - 1) < 0.02
  assert stats.kstest(values.ravel(), 'norm').pvalue > 1e-3
  corr = np.corrcoef(values.T)                         # channels drawn independently
  assert np.abs(corr - np.eye(3)).max() < 0.03


def test_transreid_train_transform_is_reproducible_from_the_pipeline_generator():
  aug = T.ReidAugment(SIZE, TRANSREID)
  img = np.random.default_rng(1).integers(0, 256, size=(300, 140, 3), dtype=np.uint8)
  a = aug.train(augment_rng(seed=3, epoch=2, position=17), img)
  b = aug.train(augment_rng(seed=3, epoch=2, position=17), img)
  c = aug.train(augment_rng(seed=3, epoch=2, position=18), img)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (*SIZE, 3) and a.dtype == np.float32 and not np.array_equal(a, c)


def _forced_offsets(seed: int):
  """The crop offsets ReidAugment.train draws after its flip draw (no rotation, jitter or occlusion)."""
  rng = np.random.default_rng(seed)
  rng.uniform()
  return (int(rng.integers(0, 20, endpoint=True)), int(rng.integers(0, 20, endpoint=True)))


@pytest.mark.parametrize('shape', [(300, 140), (128, 64)])      # shrink (antialiased) and enlarge
@pytest.mark.parametrize('flip', [0.0, 1.0])
def test_transreid_train_transform_equals_torchvision(shape, flip):
  tv = optional_import('torchvision.transforms')
  F = optional_import('torchvision.transforms.functional')
  from PIL import Image
  img = np.random.default_rng(2).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
  aug = T.ReidAugment(SIZE, {**TRANSREID, 'erasing': 'none', 'flip_prob': flip})
  for seed in range(3):
    top, left = _forced_offsets(seed)
    pil = tv.Resize(SIZE, interpolation=tv.InterpolationMode.BICUBIC)(Image.fromarray(img))
    pil = F.hflip(pil) if flip else pil
    pil = F.crop(tv.Pad(10, fill=0, padding_mode='constant')(pil), top, left, *SIZE)
    ref = tv.Normalize((0.5,) * 3, (0.5,) * 3)(tv.ToTensor()(pil)).numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(aug.train(np.random.default_rng(seed), img), ref, rtol=0, atol=1e-6)


def test_transreid_test_transform_equals_torchvision():
  tv = optional_import('torchvision.transforms')
  from PIL import Image
  img = np.random.default_rng(3).integers(0, 256, size=(300, 140, 3), dtype=np.uint8)
  compose = tv.Compose([tv.Resize(SIZE), tv.ToTensor(), tv.Normalize((0.5,) * 3, (0.5,) * 3)])
  ref = compose(Image.fromarray(img)).numpy().transpose(1, 2, 0)
  np.testing.assert_allclose(T.ReidAugment(SIZE, TRANSREID).test(img), ref, rtol=0, atol=1e-6)
