"""Re-ID grain pipeline: PK epochs, pairs, plan hook, sharding, resume, workers, transforms."""
from __future__ import annotations

import collections
import dataclasses
import io
import math

import grain
import ml_collections
import numpy as np
import pytest
from etils import epath
from PIL import Image, ImageEnhance

from input_pipeline.reid import transforms as T
from input_pipeline.reid.pipeline import (PlanIterator, TrainRecords, label_map, make_iterator,
                                          plan_iterator, reid_eval_dataset, reid_pair_dataset,
                                          reid_train_dataset)
from input_pipeline.reid.sampling import (BatchPlan, EpochBatches, PKPlanner, identity_chunk_epoch,
                                          multi_gallery_epoch, nominal_pk_batches, probe_pair_epoch)

SIZE = (32, 16)
AUG = {'pad': 2}          # BoT recipe at a small frame: flip, pad + crop, erasing, ImageNet stats


@dataclasses.dataclass
class Split:
  """In-memory stand-in with the attributes of input_pipeline.reid.splits.ReidSplit."""
  source: list
  pids: np.ndarray
  camids: np.ndarray
  viewids: np.ndarray
  names: list


def _jpeg(rng, shape=(40, 20)) -> bytes:
  img = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format='JPEG', quality=90)
  return buf.getvalue()


def make_split(counts: dict[int, int], seed: int = 0, cams: int = 3) -> Split:
  rng = np.random.default_rng(seed)
  pids = np.array([p for p, n in counts.items() for _ in range(n)], np.int64)
  camids = np.array([i % cams + 1 for p, n in counts.items() for i in range(n)], np.int64)
  names = [f'{p:04d}_c{c}_{i}.jpg' for i, (p, c) in enumerate(zip(pids, camids))]
  source = [{'image': _jpeg(rng), 'pid': int(p), 'camid': int(c), 'viewid': -1, 'name': n}
            for p, c, n in zip(pids, camids, names)]
  return Split(source, pids, camids, np.full(len(pids), -1, np.int64), names)


# 12 identities: two with fewer than K=4 images, the rest with 4..9 (remainders to drop).
COUNTS = {3: 2, 7: 5, 11: 9, 12: 4, 20: 6, 21: 3, 30: 7, 31: 8, 40: 4, 41: 5, 50: 6, 51: 4}


@pytest.fixture(scope='module')
def train_split():
  return make_split(COUNTS)


def _train(split, **kw):
  args = dict(img_size=SIZE, batch_size=12, num_instances=4, augment=AUG, seed=0)
  return reid_train_dataset(split, **{**args, **kw})


def _equal(a: dict, b: dict):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ----------------------------------------------------------------------------- PK sampling

def _chunks_per_identity(pids, k):
  """Per identity: how many chunks the rule gives it (max(1, n // K))."""
  n = collections.Counter(pids.tolist())
  return {p: max(1, c // k) for p, c in n.items()}


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_identity_chunk_epoch_follows_the_documented_rule(train_split, seed):
  pids, p, k = train_split.pids, 3, 4
  for epoch in range(4):
    batches = identity_chunk_epoch(pids, p, k, seed, epoch)
    assert batches.shape[1] == p * k and 1 <= len(batches) <= nominal_pk_batches(pids, p, k)
    chunks = _chunks_per_identity(pids, k)
    used = collections.Counter()
    seen = collections.defaultdict(list)
    for batch in batches:
      groups = batch.reshape(p, k)
      ids = [np.unique(pids[g]) for g in groups]
      assert all(len(i) == 1 for i in ids)                      # K contiguous images of one id
      assert len({int(i[0]) for i in ids}) == p                 # P distinct identities
      for g, i in zip(groups, ids):
        used[int(i[0])] += 1
        seen[int(i[0])].extend(g.tolist())
    for pid, images in seen.items():
      assert used[pid] <= chunks[pid]
      if COUNTS[pid] >= k:      # one shuffle cut into chunks: no image twice in an epoch
        assert len(set(images)) == len(images)
      else:                     # fewer than K: one chunk drawn with replacement from its images
        assert len(images) == k and set(images) <= set(np.flatnonzero(pids == pid).tolist())
    left = sum(1 for pid, c in chunks.items() if c > used[pid])
    assert left < p                                             # stopped when < P ids remain


def test_small_identities_are_drawn_with_replacement(train_split):
  pids = train_split.pids
  repeated = 0
  for epoch in range(30):
    for batch in identity_chunk_epoch(pids, 3, 4, 0, epoch):
      for g in batch.reshape(3, 4):
        if COUNTS[int(pids[g[0]])] < 4:
          repeated += len(set(g.tolist())) < 4
  assert repeated > 10


def test_pk_epochs_are_reproducible_and_differ(train_split):
  a = identity_chunk_epoch(train_split.pids, 3, 4, 0, 0)
  np.testing.assert_array_equal(a, identity_chunk_epoch(train_split.pids, 3, 4, 0, 0))
  assert not np.array_equal(a, identity_chunk_epoch(train_split.pids, 3, 4, 0, 1)[:len(a)])
  with pytest.raises(ValueError, match='at least P=13 identities'):
    identity_chunk_epoch(train_split.pids, 13, 4, 0, 0)


def test_stream_crosses_epochs_with_variable_lengths(train_split):
  planner = PKPlanner(train_split.pids, 3, 4, 0)
  lengths = [len(planner(e)['record']) for e in range(3)]
  stream = EpochBatches(planner, 12, num_epochs=3)
  assert len(stream) == sum(lengths)
  first_of_epoch2 = stream[lengths[0] + lengths[1]]
  assert first_of_epoch2['epoch'] == 2
  np.testing.assert_array_equal(first_of_epoch2['record'], planner(2)['record'][0])
  np.testing.assert_array_equal(stream[lengths[0] - 1]['position'],
                                np.arange(12) + 12 * (lengths[0] - 1))
  with pytest.raises(IndexError):
    stream[len(stream)]


def test_train_batch_contents(train_split):
  ds = _train(train_split)
  batch = ds[0]
  shapes = {'image': ((12, 32, 16, 3), np.float32), **{k: ((12,), np.int32) for k in
            ('label', 'pid', 'camid', 'viewid', 'index')}}
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == shapes
  np.testing.assert_array_equal(batch['pid'], train_split.pids[batch['index']])
  np.testing.assert_array_equal(batch['camid'], train_split.camids[batch['index']])
  labels = label_map(train_split.pids)
  assert list(labels.values()) == list(range(12)) and sorted(labels) == list(labels)
  np.testing.assert_array_equal(batch['label'], [labels[int(p)] for p in batch['pid']])
  assert np.isfinite(batch['image']).all() and batch['image'].std() > 0.3


def test_merged_datasets_keep_identities_apart(train_split):
  other = make_split({3: 4, 99: 5}, seed=1)
  shared = TrainRecords.from_splits([train_split, other])
  separate = TrainRecords.from_splits([train_split, other], separate_ids=True)
  assert shared.num_classes == 13 and separate.num_classes == 14
  assert shared.labels[len(train_split.pids)] == shared.labels[0]          # pid 3 in both
  assert separate.labels[len(train_split.pids)] != separate.labels[0]
  np.testing.assert_array_equal(separate.image(len(train_split.pids) + 1),
                                np.asarray(Image.open(io.BytesIO(other.source[1]['image']))))


def test_multi_gallery_groups_follow_the_kpm_rule(train_split):
  pids, cams = train_split.pids, train_split.camids
  lonely = make_split({1: 1, 2: 3, 5: 2}, seed=2)         # pid 1 has a single image: never a probe
  all_pids = np.r_[pids, lonely.pids]
  all_cams = np.r_[cams, lonely.camids]
  batches = multi_gallery_epoch(all_pids, all_cams, 2, 4, seed=0, epoch=0)
  groups = batches.reshape(-1, 4)
  assert len(batches) == (len(all_pids) - 1) // 2
  assert len(set(groups[:, 0].tolist())) == len(groups) and len(pids) not in groups
  for probe, *gallery in groups.tolist():
    same = np.flatnonzero(all_pids == all_pids[probe])
    others = same[same != probe]
    other_cams = others[all_cams[others] != all_cams[probe]]
    pool = set((other_cams if len(other_cams) else others).tolist())
    assert set(gallery) <= pool
    if len(pool) >= 4:
      assert len(set(gallery)) == 3                        # without replacement
  ds = _train(train_split, sampler='multi_gallery', batch_size=12)
  np.testing.assert_array_equal(ds[0]['index'], multi_gallery_epoch(pids, cams, 3, 4, 0, 0)[0])
  with pytest.raises(ValueError, match="sampler must be"):
    _train(train_split, sampler='graph')


# ----------------------------------------------------------------------------- pairs

@pytest.mark.parametrize('ratio', [(1, 3), (1, 4)])
def test_pair_batches_have_the_exact_ratio(train_split, ratio):
  pids, cams = train_split.pids, train_split.camids
  bsz = 4 * sum(ratio)
  plan = probe_pair_epoch(pids, cams, bsz, ratio, seed=0, epoch=0)
  a, b, same = plan['record_a'], plan['record_b'], plan['same']
  assert a.shape == b.shape == same.shape and a.shape[1] == bsz
  assert (same.sum(axis=1) == bsz * ratio[0] // sum(ratio)).all()
  np.testing.assert_array_equal(same, pids[a] == pids[b])
  assert (a[same] != b[same]).all()
  has_other_cam = np.array([(cams[pids == pids[i]] != cams[i]).any() for i in range(len(pids))])
  assert (cams[a[same]] != cams[b[same]])[has_other_cam[a[same]]].all()   # other camera preferred
  assert not same[:, :bsz * ratio[0] // sum(ratio)].all()                  # rows are shuffled
  with pytest.raises(ValueError, match='multiple of 4'):
    probe_pair_epoch(pids, cams, 10, (1, 3), 0, 0)


def test_negative_partners_are_uniform_over_other_identities(train_split):
  pids = train_split.pids
  counts = collections.Counter()
  for epoch in range(40):
    plan = probe_pair_epoch(pids, train_split.camids, 8, (0, 1), 0, epoch)
    a, b = plan['record_a'].ravel(), plan['record_b'].ravel()
    assert (pids[a] != pids[b]).all()
    counts.update(b[pids[a] != 3].tolist())
  hits = np.array([counts[i] for i in range(len(pids))])
  assert (hits > 0).sum() == len(pids)                      # every image can be drawn
  assert hits.max() < 4 * hits.mean()


def test_pair_dataset_batches_and_shards(train_split):
  kw = dict(img_size=SIZE, batch_size=8, ratio=(1, 3), augment=AUG, seed=3)
  whole = reid_pair_dataset(train_split, **kw)[1]
  assert whole['same'].sum() == 2 and whole['image_a'].shape == (8, 32, 16, 3)
  np.testing.assert_array_equal(whole['same'], whole['pid_a'] == whole['pid_b'])
  shards = [reid_pair_dataset(train_split, **{**kw, 'batch_size': 4}, shard_index=i, shard_count=2)[1]
            for i in range(2)]
  _equal(whole, {k: np.concatenate([s[k] for s in shards]) for k in whole})


# ----------------------------------------------------------------------------- sharding, resume

@pytest.mark.parametrize('count', [2, 4])
def test_shards_union_is_the_single_process_batch(train_split, count):
  whole = _train(train_split)
  shards = [_train(train_split, batch_size=12 // count, shard_index=i, shard_count=count)
            for i in range(count)]
  for step in (0, 3):
    parts = [s[step] for s in shards]
    assert all(len(p['pid']) == 12 // count for p in parts)
    _equal(whole[step], {k: np.concatenate([p[k] for p in parts]) for k in whole[step]})
  with pytest.raises(ValueError, match='cannot hold P groups'):
    _train(train_split, batch_size=12 // 5, shard_count=5)
  with pytest.raises(ValueError, match='split evenly'):
    EpochBatches(PKPlanner(train_split.pids, 3, 4, 0), 12, shard_count=5)


def test_seed_and_determinism(train_split):
  _equal(_train(train_split)[2], _train(train_split)[2])
  other_seed = _train(train_split, seed=1)[2]['image']
  assert not np.array_equal(_train(train_split)[2]['image'], other_seed)


def test_iterator_state_resumes_mid_epoch_and_across_epochs(train_split):
  ds = _train(train_split)
  first_epoch = len(identity_chunk_epoch(train_split.pids, 3, 4, 0, 0))
  it = make_iterator(ds)
  for _ in range(first_epoch - 1):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]                  # last of epoch 0, first of epoch 1
  assert not np.array_equal(expected[0]['index'], expected[1]['index'])
  fresh = make_iterator(_train(train_split))
  fresh.set_state(state)
  for want in expected:
    _equal(want, next(fresh))


# ----------------------------------------------------------------------------- plan hook

class ScrambledPlans:
  """Stands in for a model-dependent sampler: every call gives a different plan (a model that
  changed), so only a stored plan can make a resumed epoch repeat its batches."""

  def __init__(self, n: int, global_batch: int, batches: int = 3, salt: int = 0):
    self.n, self.g, self.b, self.salt, self.calls = n, global_batch, batches, salt, []

  def __call__(self, epoch: int) -> BatchPlan:
    self.calls.append(epoch)
    rng = np.random.default_rng([epoch, len(self.calls), self.salt])
    return BatchPlan(epoch, rng.integers(0, self.n, size=(self.b, self.g)))


def _plan_iter(split, planner, workers=0):
  return plan_iterator(lambda plan: _train(split, plan=plan), planner, num_workers=workers)


def test_plan_dataset_serves_exactly_the_plan(train_split):
  plan = BatchPlan(5, np.arange(36).reshape(3, 12) % len(train_split.pids))
  ds = _train(train_split, plan=plan)
  assert len(ds) == 3
  np.testing.assert_array_equal(ds[1]['index'], plan.batches[1])
  _equal(ds[1], _train(train_split, plan=plan)[1])
  with pytest.raises(ValueError, match='outside'):
    _train(train_split, plan=BatchPlan(0, np.full((1, 12), 999)))
  with pytest.raises(ValueError, match='global batch is 12'):
    _train(train_split, plan=BatchPlan(0, np.zeros((1, 8), int)))


def test_plan_hook_resumes_exactly(train_split, tmp_path):
  n = len(train_split.pids)
  it = _plan_iter(train_split, ScrambledPlans(n, 12))
  batches = [next(it) for _ in range(4)]                   # epoch 0: 3 batches, then epoch 1 starts
  assert it.plan.epoch == 1
  state = it.get_state()
  # Through grain's orbax handler, as jaxmatch.train.checkpoint saves the data iterator.
  handler = grain.checkpoint.CheckpointHandler()
  handler.save(epath.Path(tmp_path), args=grain.checkpoint.CheckpointSave(it))
  want = [next(it) for _ in range(4)]                      # rest of epoch 1, start of epoch 2
  other_model = ScrambledPlans(n, 12, salt=7)
  resumed = _plan_iter(train_split, other_model)
  handler.restore(epath.Path(tmp_path), args=grain.checkpoint.CheckpointRestore(resumed))
  got = [next(resumed) for _ in range(2)]
  assert other_model.calls == []                          # epoch 1 came from the stored plan
  for w, g in zip(want[:2], got):
    _equal(w, g)
  next(resumed)
  assert other_model.calls == [2] and resumed.plan.epoch == 2
  assert state['epoch'] == 1 and len(state['plan']['batches']) == 3
  np.testing.assert_array_equal(batches[3]['index'], state['plan']['batches'][0])


def test_plan_hook_rejects_a_plan_for_the_wrong_epoch(train_split):
  it = PlanIterator(lambda plan: _train(train_split, plan=plan),
                    lambda epoch: BatchPlan(epoch + 1, np.zeros((1, 12), int)))
  with pytest.raises(ValueError, match='BatchPlan of epoch 0'):
    next(it)


def test_worker_processes_keep_pk_batches_and_resume_across_epochs(train_split):
  ds = _train(train_split)
  first_epoch = len(identity_chunk_epoch(train_split.pids, 3, 4, 0, 0))
  it = make_iterator(ds, num_workers=2)
  for i in range(first_epoch - 1):
    batch = next(it)
    _equal(ds[i], batch)
    assert all(len(set(g.tolist())) == 1 for g in batch['pid'].reshape(3, 4))
  state = it.get_state()
  it.close()
  resumed = make_iterator(_train(train_split), num_workers=2)
  resumed.set_state(state)
  for i in range(first_epoch - 1, first_epoch + 1):        # crosses into epoch 1
    _equal(ds[i], next(resumed))
  resumed.close()


@pytest.mark.slow
def test_plan_hook_with_worker_processes(train_split):
  n = len(train_split.pids)
  it = _plan_iter(train_split, ScrambledPlans(n, 12), workers=2)
  next(it)
  state = it.get_state()
  want = [next(it) for _ in range(3)]
  it.close()
  resumed = _plan_iter(train_split, ScrambledPlans(n, 12, salt=3), workers=2)
  resumed.set_state(state)
  for w in want[:2]:
    _equal(w, next(resumed))
  resumed.close()


# ----------------------------------------------------------------------------- evaluation

def test_eval_is_ordered_and_padded(train_split):
  n = len(train_split.pids)                                  # 63 records
  ds = reid_eval_dataset(train_split, SIZE, batch_size=16, flip=True)
  assert len(ds) == 4
  last = ds[3]
  valid = np.arange(48, 64) < n
  np.testing.assert_array_equal(last['valid'], valid)
  np.testing.assert_array_equal(last['index'], np.where(valid, np.arange(48, 64), -1))
  np.testing.assert_array_equal(last['pid'][valid], train_split.pids[48:])
  assert (last['pid'][~valid] == -1).all() and not last['image'][~valid].any()
  np.testing.assert_array_equal(last['image_flip'], last['image'][:, :, ::-1])
  first = ds[0]['image'][5]
  raw = Image.open(io.BytesIO(train_split.source[5]['image'])).convert('RGB')
  expected = np.asarray(raw.resize((16, 32), Image.BILINEAR), np.float32) / 255
  np.testing.assert_allclose(first, (expected - T.IMAGENET_MEAN) / np.float32(T.IMAGENET_STD),
                             atol=1e-5)
  shards = [reid_eval_dataset(train_split, SIZE, 8, shard_index=i, shard_count=2) for i in range(2)]
  assert len(shards[0]) == len(shards[1]) == len(ds)
  joined = np.concatenate([s[3]['index'] for s in shards])
  np.testing.assert_array_equal(joined, last['index'])


# ----------------------------------------------------------------------------- transforms

@pytest.fixture(scope='module')
def image():
  return np.random.default_rng(0).integers(0, 256, size=(48, 24, 3), dtype=np.uint8)


def test_resize_flip_normalize(image):
  for mode, pil in (('bilinear', Image.BILINEAR), ('bicubic', Image.BICUBIC)):
    expected = np.asarray(Image.fromarray(image).resize((10, 30), pil))
    np.testing.assert_array_equal(T.resize(image, (30, 10), mode), expected)
  flipped = T.hflip(image)
  for x in range(24):
    np.testing.assert_array_equal(flipped[:, x], image[:, 23 - x])
  out = T.normalize(image, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out[3, 4], [(v / 255 - 0.5) / 0.5 for v in image[3, 4]], atol=1e-6)
  with pytest.raises(ValueError, match='interpolation'):
    T.resize(image, (30, 10), 'lanczos3')


def test_pad_and_crop_reach_every_offset(image):
  seen = set()
  for seed in range(400):
    out = T.pad_and_random_crop(np.random.default_rng(seed), image, 3)
    assert out.shape == image.shape
    padded = T.pad(image, 3)
    match = [(t, l) for t in range(7) for l in range(7)
             if np.array_equal(padded[t:t + 48, l:l + 24], out)]
    assert match
    seen.update(match)
  assert seen == {(t, l) for t in range(7) for l in range(7)}         # inclusive [0, 2 * pad]
  assert (T.pad(image, 3)[:3] == 0).all()


def _bot_erasing_reference(rng, h, w):
  """The official BoT loop, written out plainly with the same draws."""
  if rng.uniform() >= 0.5:
    return None
  for _ in range(100):
    area = rng.uniform(0.02, 0.4) * h * w
    ratio = rng.uniform(0.3, 1 / 0.3)
    eh, ew = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
    if ew < w and eh < h:
      return int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1)), eh, ew
  return None


def test_bot_erasing_placement_area_and_fill():
  h, w = 64, 32
  erasing = T.make_erasing('bot')
  img = np.full((h, w, 3), 7.0, np.float32)                  # no normalised value equals the fill
  erased = 0
  for seed in range(300):
    out = erasing(np.random.default_rng(seed), img)
    box = _bot_erasing_reference(np.random.default_rng(seed), h, w)
    mask = (out != 7.0).any(axis=2)
    if box is None:
      assert not mask.any()
      continue
    erased += 1
    top, left, eh, ew = box
    expected = np.zeros((h, w), bool)
    expected[top:top + eh, left:left + ew] = True
    np.testing.assert_array_equal(mask, expected)          # the box lies inside the image
    fill = np.broadcast_to(np.float32(T.IMAGENET_MEAN), (mask.sum(), 3))
    np.testing.assert_array_equal(out[mask], fill)
    frac = eh * ew / (h * w)
    assert 0.02 * 0.8 <= frac <= 0.4 * 1.25                # rounding of h and w only
    assert 0.3 * 0.7 <= eh / ew <= (1 / 0.3) / 0.7
  assert 120 < erased < 180                                 # p = 0.5


def test_timm_pixel_erasing_fills_with_noise():
  erasing = T.make_erasing('timm_pixel')
  assert erasing.log_aspect and erasing.attempts == 10 and erasing.area[1] == pytest.approx(1 / 3)
  img = np.full((64, 32, 3), 7.0, np.float32)
  outs = [erasing(np.random.default_rng(s), img) for s in range(20)]
  values = np.concatenate([o[o != 7.0] for o in outs])
  assert len(values) > 1000 and abs(values.mean()) < 0.1 and abs(values.std() - 1) < 0.1


def test_color_jitter_matches_torchvision(image):
  F = pytest.importorskip('torchvision.transforms.functional')
  pil = Image.fromarray(image)
  tv = {0: F.adjust_brightness, 1: F.adjust_contrast, 2: F.adjust_saturation, 3: F.adjust_hue}
  jitter = T.ColorJitter(brightness=(0.5, 2.0), contrast=(0.5, 2.0), saturation=(0.5, 2.0), hue=0.1)
  for seed in range(6):
    order, factors = jitter.draw(np.random.default_rng(seed))
    ref = pil
    for i in order:
      ref = tv[i](ref, factors[i])
    np.testing.assert_array_equal(jitter(np.random.default_rng(seed), image), np.asarray(ref))
  np.testing.assert_array_equal(T.adjust_hue(image, -0.2), np.asarray(F.adjust_hue(pil, -0.2)))
  assert T.ColorJitter(brightness=0.2).ranges()[0] == pytest.approx((0.8, 1.2))
  with pytest.raises(ValueError, match='hue'):
    T.ColorJitter(hue=0.7).ranges()
  np.testing.assert_array_equal(T.adjust_brightness(image, 1.0), image)
  np.testing.assert_array_equal(np.asarray(ImageEnhance.Color(pil).enhance(0.0))[..., 0],
                                T.adjust_saturation(image, 0.0)[..., 1])          # greyscale


def test_occlusion_and_rotation(image):
  for seed in range(20):
    out = T.random_occlusion(np.random.default_rng(seed), image.copy() // 2, 0.0, 0.8)
    white = (out == 255).all(axis=2)
    ys, xs = np.nonzero(white)
    side = ys.max() - ys.min() + 1
    assert side == xs.max() - xs.min() + 1 and white.sum() == side * side and side <= 19
  rotated = T.random_rotation(np.random.default_rng(0), image, 5.0)
  assert rotated.shape == image.shape and not np.array_equal(rotated, image)


def test_augment_config_composition_and_errors(image):
  aug = T.ReidAugment((32, 16), {'erasing': None, 'flip_prob': 0.0, 'pad': 0,
                                 'interpolation': 'bicubic', 'mean': (0, 0, 0), 'std': (1, 1, 1)})
  out = aug.train(np.random.default_rng(0), image)
  np.testing.assert_allclose(out, T.resize(image, (32, 16), 'bicubic') / np.float32(255), atol=1e-7)
  full = T.ReidAugment((32, 16), {'color_jitter': {'brightness': 0.2, 'hue': 0.1}, 'rotation': 5,
                                  'occlusion': (0.0, 0.5), 'erasing': 'timm_pixel'})
  a, b = (full.train(np.random.default_rng(4), image) for _ in range(2))
  np.testing.assert_array_equal(a, b)
  assert a.shape == (32, 16, 3) and a.dtype == np.float32
  from_config = T.ReidAugment((32, 16), ml_collections.ConfigDict(
      {'color_jitter': {'brightness': 0.2, 'hue': 0.1}, 'rotation': 5, 'occlusion': (0.0, 0.5),
       'erasing': 'timm_pixel'}))
  np.testing.assert_array_equal(from_config.train(np.random.default_rng(4), image), a)
  with pytest.raises(ValueError, match='unknown augment keys'):
    T.ReidAugment((32, 16), {'flipp': 0.5})
  with pytest.raises(ValueError, match='unknown erasing recipe'):
    T.ReidAugment((32, 16), {'erasing': 'cutout'})
  with pytest.raises(ValueError, match='height, width'):
    T.ReidAugment((32,), None)
  custom = T.make_erasing({'recipe': 'bot', 'prob': 1.0, 'area': [0.1, 0.1]})
  assert custom.prob == 1.0 and custom.area == (0.1, 0.1) and custom.fill == 'mean'
  for off in (None, False, '', 'none', 'None'):   # command-line overrides can only say 'none'
    assert T.make_erasing(off) is None


def test_bad_inputs_have_clear_errors(train_split):
  with pytest.raises(TypeError, match='missing attributes'):
    reid_train_dataset(object(), batch_size=4, num_instances=2)
  with pytest.raises(ValueError, match='batch_size >= 1'):
    reid_train_dataset(train_split, batch_size=0, num_instances=2)
  with pytest.raises(ValueError, match='cannot hold P groups of K = 2'):
    reid_train_dataset(train_split, batch_size=3, num_instances=2)
  with pytest.raises(ValueError, match='num_batches >= 1'):
    BatchPlan(0, np.zeros((0, 12), int))


def test_prepared_market_split_feeds_the_pipeline(tmp_path):
  """The real TFDS path: synthetic Market-1501 -> prepare_reid -> reid_split -> batches."""
  import tensorflow_datasets as tfds
  from input_pipeline.reid.splits import prepare_reid, reid_split
  from input_pipeline.reid.synthetic_market import write_synthetic_market
  tfds.disable_progress_bar()
  root = write_synthetic_market(tmp_path / 'manual', num_train_ids=8, num_test_ids=3, seed=0)
  data = prepare_reid('market1501', root, tmp_path / 'tfds')
  train, query = reid_split('market1501', 'train', data), reid_split('market1501', 'query', data)
  batch = reid_train_dataset(train, img_size=SIZE, batch_size=8, num_instances=2, augment=AUG)[0]
  np.testing.assert_array_equal(batch['pid'], train.pids[batch['index']])
  assert all(len(set(g.tolist())) == 1 for g in batch['pid'].reshape(4, 2))
  ds = reid_eval_dataset(query, SIZE, batch_size=4, flip=True)
  seen = np.concatenate([ds[i]['index'][ds[i]['valid']] for i in range(len(ds))])
  np.testing.assert_array_equal(seen, np.arange(len(query)))
