"""grain pair pipeline: batch contents, eval padding, sharding, determinism, exact resume, augmentation."""
from __future__ import annotations

import json
import pathlib
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from input_pipeline.correspondence import photometric as ph
from input_pipeline.correspondence.geometry import crop_pads, draw_crop_box, random_keypoint_crop
from input_pipeline.images import decode_image
from input_pipeline.correspondence.pipeline import IMAGENET_MEAN, IMAGENET_STD, make_iterator, pair_dataset
from input_pipeline.correspondence.spair import prepare_spair, read_layout, spair_sources
from input_pipeline.correspondence.synthetic_spair import write_synthetic_spair
from jaxmatch.evaluation.pck import PCKAccumulator
from jaxmatch.tasks.correspondence import pck_thresholds

S = 64     # small frame keeps the tests fast; scaling is checked at the default 240 too


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  tfds.disable_progress_bar()
  base = tmp_path_factory.mktemp('pairs')
  root = pathlib.Path(write_synthetic_spair(base / 'manual', {'trn': 20, 'val': 10, 'test': 3}))
  return root, spair_sources(prepare_spair(root, base / 'tfds'))


def _dataset(sources, split='trn', **kw):
  args = dict(img_size=S, batch_size=4, train=True, augment=True, seed=0)
  return pair_dataset(sources, split, **{**args, **kw})


def _assert_batches_equal(a: dict, b: dict):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_eval_batch_contents_match_the_loader_definition(data):
  root, sources = data
  batch = pair_dataset(sources, 'val', batch_size=4, train=False, augment=False)[0]
  shapes = {'src_img': ((4, 240, 240, 3), np.float32), 'trg_img': ((4, 240, 240, 3), np.float32),
            'src_kps': ((4, 40, 2), np.float32), 'trg_kps': ((4, 40, 2), np.float32),
            'kp_mask': ((4, 40), np.bool_), 'n_pts': ((4,), np.int32),
            'src_bbox': ((4, 4), np.float32), 'trg_bbox': ((4, 4), np.float32),
            'category': ((4,), np.int32), 'pair_index': ((4,), np.int32), 'valid': ((4,), np.bool_),
            **{k: ((4,), np.int32) for k in ('vpvar', 'scvar', 'trncn', 'occln')}}
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == shapes
  lines = read_layout(root / 'Layout' / 'large' / 'val.txt')
  thr = pck_thresholds(batch, ('spair',), 240)['spair']     # as the task computes it on the host
  for i in range(4):
    line = lines[i]
    ann = json.loads((root / 'PairAnnotation' / 'val' / f'{line}.json').read_text())
    category = line.split(':')[1]
    for side in ('src', 'trg'):
      path = root / 'JPEGImages' / category / ann[f'{side}_imname']
      pil = Image.open(path).convert('RGB')
      w, h = pil.size
      expected = np.asarray(pil.resize((240, 240), Image.BILINEAR), np.float32) / 255
      np.testing.assert_allclose(batch[f'{side}_img'][i] * IMAGENET_STD + IMAGENET_MEAN,
                                 expected, atol=1e-6)
      n = len(ann[f'{side}_kps'])
      factor = np.array([np.float32(240 / w), np.float32(240 / h)])
      np.testing.assert_array_equal(batch[f'{side}_kps'][i, :n],
                                    np.float32(ann[f'{side}_kps']) * factor)
      assert not batch[f'{side}_kps'][i, n:].any()
    box = np.float32(ann['trg_bndbox']) * np.tile(factor, 2)
    np.testing.assert_array_equal(batch['trg_bbox'][i], box)
    assert thr[i] == max(box[2] - box[0], box[3] - box[1])
    assert batch['n_pts'][i] == n and batch['kp_mask'][i].sum() == n and batch['kp_mask'][i, :n].all()
    assert batch['vpvar'][i] == ann['viewpoint_variation'] and batch['pair_index'][i] == i
  assert batch['valid'].all()


def test_eval_is_one_ordered_pass_with_padded_last_batch(data):
  _, sources = data
  ds = pair_dataset(sources, 'val', img_size=S, batch_size=4, train=False, augment=False)
  batches = [ds[i] for i in range(len(ds))]
  assert len(batches) == 3
  last = batches[-1]
  np.testing.assert_array_equal(last['valid'], [True, True, False, False])
  np.testing.assert_array_equal(last['pair_index'], [8, 9, -1, -1])
  assert not last['src_img'][2:].any() and not last['kp_mask'][2:].any()
  thr = pck_thresholds(last, ('spair',), S)['spair']
  with np.errstate(all='raise'):                      # no division by zero on padding rows
    scores = PCKAccumulator().add(last['trg_kps'], {**last, 'pck_thr': thr})
  assert scores.shape[0] == 2 and (scores == 1).all()
  seen = np.concatenate([b['pair_index'][b['valid']] for b in batches])
  np.testing.assert_array_equal(seen, np.arange(10))


def test_training_reshuffles_each_epoch_and_drops_the_remainder(data):
  _, sources = data
  ds = _dataset(sources, batch_size=6, augment=False, num_epochs=2)
  assert len(ds) == 6                                 # 20 // 6 = 3 batches per epoch
  order = [ds[i]['pair_index'] for i in range(6)]
  first, second = np.concatenate(order[:3]), np.concatenate(order[3:])
  assert len(set(first)) == len(set(second)) == 18
  assert not np.array_equal(first, second)
  assert all(ds[i]['valid'].all() for i in range(6))
  assert len(_dataset(sources, augment=False)) > 10 ** 9          # num_epochs=None: forever


def test_augmented_batch_stays_in_the_frame(data):
  _, sources = data
  for i in range(3):
    b = _dataset(sources)[i]
    for side in ('src', 'trg'):
      kps = b[f'{side}_kps']
      assert (kps >= 0).all() and (kps <= S - 1).all() and not kps[~b['kp_mask']].any()
      assert (b[f'{side}_bbox'] >= 0).all() and (b[f'{side}_bbox'] <= S - 1).all()
    assert (pck_thresholds(b, ('spair',), S)['spair'] > 0).all() and b['valid'].all()


def test_determinism_and_seed(data):
  _, sources = data
  _assert_batches_equal(_dataset(sources)[2], _dataset(sources)[2])
  other = _dataset(sources, seed=1)[2]
  assert not np.array_equal(_dataset(sources)[2]['src_img'], other['src_img'])


@pytest.mark.parametrize('train', [True, False])
def test_shards_are_slices_of_the_global_batch(data, train):
  _, sources = data
  split = 'trn' if train else 'val'
  whole = _dataset(sources, split, batch_size=4, train=train, augment=train)
  shards = [_dataset(sources, split, batch_size=2, train=train, augment=train, shard_index=i,
                     shard_count=2) for i in range(2)]
  if not train:                                      # (training streams are endless)
    assert len(shards[0]) == len(shards[1]) == len(whole)
  for step in range(2 if train else len(whole)):
    joined = {k: np.concatenate([s[step][k] for s in shards]) for k in whole[step]}
    _assert_batches_equal(whole[step], joined)


def test_iterator_state_resumes_exactly_in_process(data):
  _, sources = data
  it = make_iterator(_dataset(sources), num_workers=0)
  next(it), next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  fresh = make_iterator(_dataset(sources), num_workers=0)
  fresh.set_state(state)
  for want in expected:
    _assert_batches_equal(want, next(fresh))


def test_worker_processes_give_the_same_batches_and_resume(data):
  _, sources = data
  start = time.time()
  ds = _dataset(sources)
  it = make_iterator(ds, num_workers=2)
  for i in range(2):
    _assert_batches_equal(ds[i], next(it))
  state = it.get_state()
  it.close()
  resumed = make_iterator(_dataset(sources), num_workers=2)
  resumed.set_state(state)
  _assert_batches_equal(ds[2], next(resumed))
  resumed.close()
  assert time.time() - start < 50


# ----------------------------------------------------------------------------- crop geometry

def _dot_image(points, size_wh) -> np.ndarray:
  """Grey image with a Gaussian dot in channel k at keypoint k (k < 3)."""
  w, h = size_wh
  ys, xs = np.mgrid[0:h, 0:w]
  img = np.full((h, w, 3), 20.0)
  for k, (x, y) in enumerate(points):
    img[..., k] += 220 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 3.0 ** 2))
  return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _dot_centre(channel: np.ndarray) -> np.ndarray:
  """Intensity-weighted centre of the dot around the channel's maximum."""
  y, x = np.unravel_index(np.argmax(channel), channel.shape)
  y0, x0 = max(y - 4, 0), max(x - 4, 0)
  win = np.clip(channel[y0:y + 5, x0:x + 5].astype(float) - 30, 0, None)
  yy, xx = np.mgrid[y0:y0 + win.shape[0], x0:x0 + win.shape[1]]
  return np.array([(xx * win).sum(), (yy * win).sum()]) / win.sum()


@pytest.mark.parametrize('points', [[[60, 40], [140, 90], [100, 120]], [[120, 70]]])
def test_crop_moves_keypoints_with_the_image_content(points):
  size = (200, 150)
  img = _dot_image(points, size)
  bbox = np.float32([50, 30, 150, 130])
  cropped = 0
  for seed in range(40):
    out, kps, box = random_keypoint_crop(np.random.default_rng(seed), img, points, bbox, 96)
    assert out.shape == (96, 96, 3) and out.dtype == np.uint8
    cropped += not np.allclose(kps, np.float32(points) * np.float32([96 / 200, 96 / 150]))
    for k in range(len(points)):
      # x * S / W keypoint scaling vs PIL's pixel-centre resampling: < 0.5 px apart at these scales.
      np.testing.assert_allclose(_dot_centre(out[..., k]), kps[k], atol=1.0)
    assert (box >= 0).all() and (box <= 95).all()
  assert 10 < cropped < 30                             # p = 0.5 between crop and plain resize


def test_crop_draws_are_inclusive_and_keep_the_padding():
  points = np.float32([[22, 30], [100, 90]])
  lefts, rights = set(), set()
  for seed in range(300):
    left, top, width, height = draw_crop_box(np.random.default_rng(seed), points, (123, 140))
    lefts.add(left)
    rights.add(left + width)
    assert left <= 22 - 20 and top <= 30 - 20
    assert left + width >= 100 + 20 and top + height >= 90 + 20
  assert lefts == {0, 1, 2} and rights == {120, 121, 122, 123}
  assert crop_pads(np.float32([[30, 50]]), (101, 80)) == (15, 35, 25, 15)   # single-keypoint rule
  assert crop_pads(points, (123, 140)) == (20, 20, 20, 20)


# ----------------------------------------------------------------------------- photometric

def test_photometric_operations():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
  assert not (ph.posterize(img) % 16).any()
  np.testing.assert_array_equal(ph.solarize(np.uint8([[[0, 127, 128]]])), [[[0, 127, 127]]])
  grey = ph.to_gray(img)
  assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
  two = np.zeros((4, 4, 3), np.uint8)
  two[:2] = 100
  two[2:] = 180
  eq = ph.equalize(two)
  assert set(np.unique(eq)) == {0, 255}                # OpenCV: lowest level -> 0, top -> 255
  np.testing.assert_array_equal(ph.sharpen(img, 0.0, 0.7), img)
  np.testing.assert_array_equal(ph.brightness_contrast(img, 1.0, 0.0), img)
  np.testing.assert_array_equal(ph.brightness_contrast(np.uint8([[[10, 100, 250]]]), 1.2, 0.1),
                                [[[37, 145, 255]]])      # trunc(i * 1.2 + 25.5), clipped
  np.testing.assert_array_equal(ph.adjust_saturation(img, 1.0), img)
  np.testing.assert_array_equal(ph.adjust_hue(img, 1e-12), img)    # float HSV round trip
  np.testing.assert_array_equal(ph.adjust_hue(np.uint8([[[200, 40, 40]]]), 1 / 3),
                                [[[40, 200, 40]]])                  # red + 120 deg = green
  np.testing.assert_array_equal(ph.adjust_hue(np.uint8([[[90, 90, 90]]]), 0.2), [[[90, 90, 90]]])
  np.testing.assert_array_equal(ph.photometric_augment(rng, img, p=0.0), img)
  a = ph.photometric_augment(np.random.default_rng(5), img, p=1.0)
  b = ph.photometric_augment(np.random.default_rng(5), img, p=1.0)
  np.testing.assert_array_equal(a, b)
  assert a.dtype == np.uint8 and a.shape == img.shape and not np.array_equal(a, img)


def test_corrupt_image_in_a_record_names_it():
  from input_pipeline.errors import CorruptImageError
  with pytest.raises(CorruptImageError, match='cat/x.jpg'):
    decode_image(b'\xff\xd8\xff\xe0 not really a jpeg', 'cat/x.jpg')


# ----------------------------------------------------------------------------- PF-PASCAL / PF-WILLOW

@pytest.fixture(scope='module')
def pf_data(tmp_path_factory):
  from input_pipeline.correspondence.pfpascal import pfpascal_sources, prepare_pfpascal
  from input_pipeline.correspondence.pfwillow import pfwillow_sources, prepare_pfwillow
  from input_pipeline.correspondence.synthetic_pf import write_synthetic_pfpascal, write_synthetic_pfwillow
  tfds.disable_progress_bar()
  base = tmp_path_factory.mktemp('pf_pairs')
  pascal = write_synthetic_pfpascal(base / 'manual', {'trn': 8, 'val': 2, 'test': 3}, seed=4)
  willow = write_synthetic_pfwillow(base / 'manual', 5, seed=4)
  return (pfpascal_sources(prepare_pfpascal(pascal, base / 'tfds')),
          pfwillow_sources(prepare_pfwillow(willow, base / 'tfds')))


def test_pfpascal_flip_rows_are_mirrored_as_the_official_loader(pf_data):
  """flip = 1 (trn csv): image mirrored, x -> S - x (not S - 1 - x), box (x1, x2) -> (S - x2, S - x1)."""
  sources, _ = pf_data
  trn = sources['trn']
  plain = pair_dataset({**sources, 'trn': _NoFlip(trn)}, 'trn', img_size=S, batch_size=8, train=False,
                       augment=False)[0]
  flipped = pair_dataset(sources, 'trn', img_size=S, batch_size=8, train=False, augment=False)[0]
  flips = np.array([trn[i]['flip'] for i in range(8)], bool)
  assert flips.any() and not flips.all()
  for i in range(8):
    n = flipped['n_pts'][i]
    for side in ('src', 'trg'):
      kps, ref = flipped[f'{side}_kps'][i, :n], plain[f'{side}_kps'][i, :n]
      box, ref_box = flipped[f'{side}_bbox'][i], plain[f'{side}_bbox'][i]
      if flips[i]:
        np.testing.assert_array_equal(kps, np.stack([np.float32(S) - ref[:, 0], ref[:, 1]], 1))
        np.testing.assert_array_equal(box, [S - ref_box[2], ref_box[1], S - ref_box[0], ref_box[3]])
        np.testing.assert_array_equal(flipped[f'{side}_img'][i], plain[f'{side}_img'][i][:, ::-1])
      else:
        np.testing.assert_array_equal(kps, ref)
        np.testing.assert_array_equal(flipped[f'{side}_img'][i], plain[f'{side}_img'][i])
  np.testing.assert_array_equal(pck_thresholds(flipped, ('pfpascal',), S)['pfpascal'],
                                np.full(8, S, np.float32))                       # alpha_img: image side
  assert 'vpvar' not in flipped                      # no SPair difficulty flags in PF-PASCAL


class _NoFlip:
  """A pair source whose records all have flip = 0 (the reference for the mirrored rows)."""

  def __init__(self, source):
    self._source = source

  def __len__(self):
    return len(self._source)

  def __getitem__(self, i):
    return {**self._source[i], 'flip': 0}


def test_pfwillow_threshold_kinds_in_the_pipeline(pf_data):
  from jaxmatch.evaluation.pck import pck_threshold
  _, sources = pf_data
  batch = pair_dataset(sources, 'test', img_size=240, batch_size=4, train=False, augment=False)[0]
  assert batch['n_pts'].tolist() == [10] * 4 and batch['valid'].all()
  kps = batch['trg_kps'][:, :10]
  # The official value: the -2 padded row's extent, max(x_max, y_max) + 2 when all coordinates > -2.
  official = pck_thresholds(batch, ('pfwillow',), 240)['pfwillow']
  np.testing.assert_array_equal(official, kps.max(axis=(1, 2)) + np.float32(2))
  box = pck_threshold('pfwillow_bbox_kp', batch['trg_kps'], batch['kp_mask'])
  np.testing.assert_array_equal(box, (kps.max(1) - kps.min(1)).max(1))
  assert (box < official).all()
  aug = pair_dataset(sources, 'test', img_size=S, batch_size=4, train=True,
                     augment=True)[0]                             # WILLOW boxes = keypoint boxes
  assert ((aug['src_kps'][aug['kp_mask']] <= S - 1).all()
          and (pck_thresholds(aug, ('pfwillow',), S)['pfwillow'] > 0).all())
