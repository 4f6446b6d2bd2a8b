"""PCK parity with the official TransforMatcher evaluator (fixture pck_eval) and the report tables."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import load_fixture

from input_pipeline.correspondence.geometry import scale_bbox, scale_points
from jaxmatch.evaluation.pck import PCKAccumulator, pck_per_pair, pck_threshold

BENCHMARKS = ('spair', 'pfpascal', 'pfwillow')


@pytest.fixture(scope='module')
def fx():
  return load_fixture('pck_eval')


def _official_inputs(fx, bench):
  """Original-pixel target keypoints as [N, 10 or 40, 2] with n_pts, as each loader reads them."""
  if bench == 'pfwillow':   # CSV: 10 x then 10 y, cast to float32 by the loader
    pts = fx['in/pfwillow/trg_csv_xy'].reshape(-1, 2, 10).astype(np.float32).transpose(0, 2, 1)
    return pts, np.full(len(pts), 10)
  return fx[f'in/{bench}/trg_kps_orig'].transpose(0, 2, 1), fx[f'in/{bench}/n_pts']


def _rescaled(fx, bench):
  """Our rescaling of the original inputs into the 240 frame, as [N, 40, 2] + mask [N, 40]."""
  pts, n_pts = _official_inputs(fx, bench)
  out = np.zeros((len(pts), 40, 2), np.float32)
  for i, (wh, n) in enumerate(zip(fx[f'in/{bench}/trg_imsize_wh'], n_pts)):
    out[i, :n] = scale_points(pts[i, :n], wh, 240)
  return out, np.arange(40)[None] < n_pts[:, None]


def _thresholds(fx, bench):
  kps, mask = _rescaled(fx, bench)
  bbox = None
  if bench == 'spair':
    bbox = np.stack([scale_bbox(b, wh, 240) for b, wh in
                     zip(fx['in/spair/trg_bbox_orig'], fx['in/spair/trg_imsize_wh'])])
  return pck_threshold(bench, kps, mask, bbox, img_size=240)


@pytest.mark.parametrize('bench', BENCHMARKS)
def test_rescaled_keypoints_match_loader_bit_for_bit(fx, bench):
  kps, mask = _rescaled(fx, bench)
  official = fx[f'out/{bench}/trg_kps'].transpose(0, 2, 1)
  np.testing.assert_array_equal(kps[mask], official[mask])
  assert np.all(official[~mask] == -2)


def test_spair_bbox_rescale_matches_loader_bit_for_bit(fx):
  ours = np.stack([scale_bbox(b, wh, 240) for b, wh in
                   zip(fx['in/spair/trg_bbox_orig'], fx['in/spair/trg_imsize_wh'])])
  np.testing.assert_array_equal(ours, fx['out/spair/trg_bbox'])


@pytest.mark.parametrize('bench', BENCHMARKS)
def test_thresholds_match_official_bit_for_bit(fx, bench):
  np.testing.assert_array_equal(_thresholds(fx, bench), fx[f'out/{bench}/pckthres'])


@pytest.mark.parametrize('bench', BENCHMARKS)
def test_per_pair_fractions_match_official(fx, bench):
  kps, mask = _rescaled(fx, bench)
  pred = fx[f'in/{bench}/prd_kps'].transpose(0, 2, 1)
  ours = pck_per_pair(pred, kps, mask, _thresholds(fx, bench))
  # Same float32 comparisons and count / n_pts division as torch: bit-identical fractions.
  np.testing.assert_array_equal(ours, fx[f'out/{bench}/pck_per_pair'])
  # The train/val path (alpha 0.1 only) reports len(correct) / n_pts * 100 in float64.
  n = mask.sum(1)
  counts = np.rint(ours[:, 1] * n).astype(int)
  np.testing.assert_array_equal(counts / n * 100, fx[f'out/{bench}/pck_alpha0.1_per_pair'])


@pytest.mark.parametrize('bench', BENCHMARKS)
def test_aggregates_match_official_through_accumulator(fx, bench):
  kps, mask = _rescaled(fx, bench)
  pred = fx[f'in/{bench}/prd_kps'].transpose(0, 2, 1)
  thr = _thresholds(fx, bench)
  acc = PCKAccumulator()
  step = int(fx['in/batch_size'])
  for s in range(0, len(kps), step):
    sl = slice(s, s + step)
    acc.add(pred[sl], {'trg_kps': kps[sl], 'kp_mask': mask[sl], 'pck_thr': thr[sl]})
  res = acc.result()
  ours = [res['pck@0.05'], res['pck@0.1'], res['pck@0.15']]
  # The official mean is a float32 torch mean; ours is float64: they differ by < 5e-6 (manifest).
  np.testing.assert_allclose(ours, fx[f'out/{bench}/pck_aggregate'], rtol=0, atol=1e-5)
  # ... and the float64 train/val path up to summation order.
  np.testing.assert_allclose(res['pck@0.1'], fx[f'out/{bench}/pck_alpha0.1_aggregate'],
                             rtol=1e-13)
  assert res['num_pairs'] == len(kps)


def test_boundary_cases_are_inclusive_in_float32(fx):
  """PF-PASCAL pair 0 (manifest): +12 px, +24 px, +36 px, +12.01 px against thr = 240."""
  kps, mask = _rescaled(fx, 'pfpascal')
  pred = fx['in/pfpascal/prd_kps'].transpose(0, 2, 1)
  one = np.ones((1, 1), bool)
  got = np.stack([pck_per_pair(pred[:1, k:k + 1], kps[:1, k:k + 1], one, np.float32([240]))[0]
                  for k in range(4)])
  np.testing.assert_array_equal(got, [[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 1, 1]])


def test_documented_threshold_examples():
  """SPair: 200x160 box in 400x200 -> 120x192 -> 192. PF-WILLOW x in [40,100], y in [80,170]."""
  box = scale_bbox([100, 20, 300, 180], (400, 200), 240)
  thr = pck_threshold('spair', np.zeros((1, 1, 2)), np.ones((1, 1), bool), box[None])[0]
  assert thr == pytest.approx(192, rel=2e-7)     # float32(240/200) = 1.2000000477 as in torch
  kps = np.zeros((1, 40, 2), np.float32)
  kps[0, :3] = [[40, 80], [100, 170], [70, 120]]
  mask = np.arange(40)[None] < 3
  assert pck_threshold('pfwillow', kps, mask)[0] == 172          # max(x_max, y_max) + 2
  assert pck_threshold('pfwillow_bbox_kp', kps, mask)[0] == 90   # the true keypoint box
  full = np.ones((1, 40), bool)
  kps_full = np.tile(kps[:, :1], (1, 40, 1))
  kps_full[0, 1] = [100, 170]
  assert pck_threshold('pfwillow', kps_full, full)[0] == 90       # no pad columns, no +2
  assert pck_threshold('pfpascal', kps, mask, img_size=240)[0] == 240
  with pytest.raises(ValueError, match='unknown PCK benchmark'):
    pck_threshold('caltech', kps, mask)


def _hand_batch():
  """4 pairs, thr 100 (alpha 0.1 -> 10 px): per-pair fractions at alpha 0.1 = 1, 0.5, 0, 1/3."""
  gt = np.zeros((5, 3, 2), np.float32)
  pred = gt.copy()
  mask = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]], bool)
  pred[0, 0] = [6, 0]                             # 6 px: ok at 0.1, not at 0.05
  pred[1, 0], pred[1, 1] = [3, 4], [0, 11]        # 5 px (ok at 0.05, inclusive), 11 px
  pred[2, 0] = [0, 20]                            # 20 px: wrong everywhere
  pred[3] = [[0, 0], [0, 12], [30, 0]]            # 0, 12 (ok at 0.15), 30
  pred[4] = 999                                   # padding row, must be ignored
  return pred, {'trg_kps': gt, 'kp_mask': mask, 'pck_thr': np.full(5, 100, np.float32),
                'valid': np.array([1, 1, 1, 1, 0], bool), 'category': np.array([0, 0, 7, 7, 3]),
                'vpvar': np.array([0, 1, 1, 2, 0]), 'scvar': np.array([0, 0, 0, 0, 0]),
                'trncn': np.array([0, 0, 1, 1, 0]), 'occln': np.array([1, 1, 1, 1, 0])}


def test_accumulator_tables_on_hand_made_example():
  pred, batch = _hand_batch()
  names = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat')
  acc = PCKAccumulator(category_names=names)
  acc.add(pred[:2], {k: v[:2] for k, v in batch.items()})
  acc.add(pred[2:], {k: v[2:] for k, v in batch.items()})
  res = acc.result()
  assert res['num_pairs'] == 4
  np.testing.assert_allclose([res['pck@0.05'], res['pck@0.1'], res['pck@0.15']],
                             [100 * (0 + .5 + 0 + 1 / 3) / 4, 100 * (1 + .5 + 0 + 1 / 3) / 4,
                              100 * (1 + 1 + 0 + 2 / 3) / 4], rtol=1e-6)
  assert set(res['per_category']) == {'aeroplane', 'cat'}          # category 3 was padding
  np.testing.assert_allclose(res['per_category']['aeroplane']['pck@0.1'], 75.0, rtol=1e-6)
  np.testing.assert_allclose(res['per_category']['cat']['pck@0.1'], 100 / 6, rtol=1e-6)
  vp = res['per_difficulty']['vpvar']
  assert {k: v['num_pairs'] for k, v in vp.items()} == {0: 1, 1: 2, 2: 1}
  np.testing.assert_allclose(vp[1]['pck@0.1'], 25.0, rtol=1e-6)
  np.testing.assert_allclose(res['per_difficulty']['trncn'][1]['pck@0.15'], 100 / 3, rtol=1e-6)
  assert list(res['per_difficulty']['occln']) == [1]
  table = acc.format_table()
  assert 'aeroplane' in table and 'cat' in table and 'by vpvar' in table
  assert f"{res['pck@0.1']:.2f}" in table.splitlines()[4]          # the 'all' row


def test_accumulator_without_valid_pairs_raises():
  with pytest.raises(ValueError, match='before any valid pair'):
    PCKAccumulator().result()
