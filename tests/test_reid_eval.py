"""Re-ID evaluation: parity with torchreid / TransReID / NFormer / fast-reid (fixtures/reid_eval), the
classic CUHK03 protocol with the recorded random draws, k-reciprocal re-ranking against TransReID (float16),
torchreid (float32), a dense re-derivation and a numpy float32 port of torchreid on near-tied data (the
row-max normalisation bit for bit), blocking and 8-device sharding invariance."""
from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from conftest import load_fixture

from jaxmatch.evaluation import distances, float16, jaccard, reid, rerank, retrieval
from jaxmatch import parallel

CASES = ('caseA', 'caseA_nojunk', 'caseB')
IMPLEMENTATIONS = ('torchreid', 'transreid', 'nformer', 'fastreid')
TOL = 1e-6
AP_TOL = 1e-12   # AP / INP come from integer match ranks in float64, as every reference computes them


@pytest.fixture(scope='module')
def fx():
  return load_fixture('reid_eval')


def _case(fx, case):
  return (fx[f'in/{case}/distmat'], fx[f'in/{case}/q_pids'], fx[f'in/{case}/g_pids'],
          fx[f'in/{case}/q_camids'], fx[f'in/{case}/g_camids'])


def synthetic_reid(num_ids=14, per_id=6, dim=24, seed=0, noise=0.7):
  """Identity clusters with cameras; the first two images of each id are queries, the rest gallery."""
  rs = np.random.RandomState(seed)
  centres = rs.normal(size=(num_ids, dim))
  pids = np.repeat(np.arange(num_ids) * 7 + 3, per_id)
  feats = (np.repeat(centres, per_id, axis=0) + noise * rs.normal(size=(num_ids * per_id, dim)))
  cams = rs.randint(1, 5, size=pids.shape[0])
  is_query = np.tile(np.arange(per_id) < 2, num_ids)
  f32 = feats.astype(np.float32)
  return (f32[is_query], f32[~is_query], pids[is_query], pids[~is_query], cams[is_query], cams[~is_query])


# ---------------------------------------------------------------------------------------------------
# Market protocol parity

@pytest.mark.parametrize('case', CASES)
def test_market_metrics_match_every_implementation(fx, case):
  m = reid.evaluate_distances(*_case(fx, case), max_rank=50, block_size=7)   # 7 divides none of the sizes
  for impl in IMPLEMENTATIONS:
    np.testing.assert_allclose(m['cmc'], fx[f'out/{case}/{impl}/cmc'], rtol=0, atol=TOL, err_msg=impl)
    assert abs(m['mAP'] - float(fx[f'out/{case}/{impl}/mAP'])) < AP_TOL, impl
  valid = fx[f'out/{case}/per_query/valid']
  np.testing.assert_array_equal(m['valid'], valid)
  assert m['num_valid_queries'] == int(fx[f'out/{case}/num_valid_q'])
  np.testing.assert_allclose(m['per_query_ap'][valid], fx[f'out/{case}/fastreid/all_AP'], rtol=0, atol=AP_TOL)
  np.testing.assert_allclose(m['per_query_inp'][valid], fx[f'out/{case}/fastreid/all_INP'], rtol=0, atol=AP_TOL)
  assert abs(m['mINP'] - float(fx[f'out/{case}/fastreid/mINP'])) < AP_TOL
  np.testing.assert_allclose(m['per_query_ap'], fx[f'out/{case}/per_query/AP'], rtol=0, atol=AP_TOL)   # NaN where invalid
  np.testing.assert_array_equal(retrieval.per_query_cmc(m['first_match_rank'], 50),
                                fx[f'out/{case}/per_query/cmc'])


def test_case_b_skips_queries_without_a_valid_match(fx):
  m = reid.evaluate_distances(*_case(fx, 'caseB'))
  assert not m['valid'][:9].any() and m['valid'][9:].all()
  assert np.isnan(m['per_query_ap'][:9]).all() and (m['first_match_rank'][:9] == 0).all()


def test_junk_is_an_ordinary_non_match(fx):
  """caseA_nojunk = caseA without its pid -1 columns; passing junk through lowers mAP, as the references do."""
  with_junk = reid.evaluate_distances(*_case(fx, 'caseA'))
  without = reid.evaluate_distances(*_case(fx, 'caseA_nojunk'))
  assert with_junk['mAP'] < without['mAP'] - 0.3


class RecordedDraws:
  """Replays the values torchreid's np.random.choice returned, checking each call's candidate count.

  caseA query 14 has an exact distance tie (gallery 35 and 77 at 0.7491286, pids 72 and 0; 30 and 67 in
  caseA_nojunk): numpy's unstable argsort ranked 77 first, our stable sort ranks 35 first, so those two
  entries swap kept positions. A recorded value off by one position is then replayed as the candidate
  next to it, and counted.
  """

  def __init__(self, values, num_candidates):
    self.values, self.num_candidates, self.calls, self.tie_swaps = values, num_candidates, 0, 0

  def choice(self, candidates):
    i = self.calls
    assert len(candidates) == self.num_candidates[i], f'draw {i}: {len(candidates)} candidates'
    self.calls += 1
    value = int(self.values[i])
    if value in candidates:
      return value
    nearest = min(candidates, key=lambda c: abs(c - value))
    assert abs(nearest - value) == 1, f'draw {i}: recorded {value} not among {candidates}'
    self.tie_swaps += 1
    return nearest


@pytest.mark.parametrize('case', CASES)
def test_cuhk03_classic_replays_recorded_draws(fx, case):
  draws = RecordedDraws(fx[f'rand/{case}/torchreid_cuhk03/choice'],
                        fx[f'rand/{case}/torchreid_cuhk03/num_candidates'])
  m = reid.evaluate_distances(*_case(fx, case), protocol='cuhk03_classic', rng=draws, block_size=16)
  assert draws.calls == len(draws.values)
  assert draws.tie_swaps <= (0 if case == 'caseB' else 2 * retrieval.CUHK03_REPEATS)
  np.testing.assert_allclose(m['cmc'], fx[f'out/{case}/torchreid_cuhk03/cmc'], rtol=0, atol=TOL)
  assert abs(m['mAP'] - float(fx[f'out/{case}/torchreid_cuhk03/mAP'])) < TOL


def test_cuhk03_classic_random_state_zero_is_torchreid_seed_zero(fx):
  m = reid.evaluate_distances(*_case(fx, 'caseB'), protocol='cuhk03_classic', rng=np.random.RandomState(0))
  np.testing.assert_allclose(m['cmc'], fx['out/caseB/torchreid_cuhk03/cmc'], rtol=0, atol=TOL)


def test_cuhk03_np_and_msmt17_use_the_market_protocol(fx):
  market = reid.evaluate_distances(*_case(fx, 'caseA'))
  for protocol in ('cuhk03_np', 'msmt17'):
    other = reid.evaluate_distances(*_case(fx, 'caseA'), protocol=protocol)
    np.testing.assert_array_equal(other['cmc'], market['cmc'])
    assert other['mAP'] == market['mAP']


def test_max_rank_is_capped_at_the_gallery_size(fx):
  dist, qp, gp, qc, gc = _case(fx, 'caseB')
  m = reid.evaluate_distances(dist[:, :30], qp, gp[:30], qc, gc[:30], max_rank=50)
  assert m['cmc'].shape == (30,)


# ---------------------------------------------------------------------------------------------------
# Distances

def test_squared_euclidean_matches_transreid_and_torchreid(fx):
  qf, gf = fx['in/rerank/qf'], fx['in/rerank/gf']
  np.testing.assert_allclose(distances.distance_matrix(qf, gf, 'sqeuclidean', block_size=3),
                             fx['out/rerank/transreid_euclidean_distance_qg'], atol=TOL)
  np.testing.assert_allclose(distances.distance_matrix(gf, gf, 'sqeuclidean', block_size=7),
                             fx['out/rerank/torchreid_sqdist_gg'], atol=TOL)


def test_metrics_against_numpy():
  qf, gf = synthetic_reid()[:2]
  sq = ((qf[:, None, :].astype(np.float64) - gf[None]) ** 2).sum(-1)
  np.testing.assert_allclose(distances.distance_matrix(qf, gf, 'euclidean', block_size=5), np.sqrt(sq),
                             rtol=1e-5, atol=1e-5)
  qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
  gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
  np.testing.assert_allclose(distances.distance_matrix(qf, gf, 'cosine'), 1 - qn @ gn.T, atol=1e-6)


def test_features_path_equals_distance_matrix_path():
  qf, gf, qp, gp, qc, gc = synthetic_reid()
  for metric in distances.METRICS:
    from_features = reid.evaluate_features(qf, gf, qp, gp, qc, gc, metric=metric, block_size=5)
    from_matrix = reid.evaluate_distances(distances.distance_matrix(qf, gf, metric), qp, gp, qc, gc)
    np.testing.assert_array_equal(from_features['cmc'], from_matrix['cmc'])
    np.testing.assert_array_equal(from_features['per_query_ap'], from_matrix['per_query_ap'])


def test_top_k_gallery_is_the_sorted_prefix():
  qf, gf = synthetic_reid()[:2]
  idx, dist = reid.top_k_gallery(qf, gf, 9, block_size=6)
  full = distances.distance_matrix(qf, gf, 'euclidean')
  np.testing.assert_array_equal(idx, np.argsort(full, axis=1, kind='stable')[:, :9])
  np.testing.assert_allclose(dist, np.take_along_axis(full, idx, axis=1), rtol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Re-ranking

def test_rerank_float16_option_reproduces_transreid(fx):
  qf, gf = fx['in/rerank/qf'], fx['in/rerank/gf']
  for (k1, k2) in ((20, 6), (50, 15)):
    out = rerank.rerank_features(qf, gf, k1=k1, k2=k2, lambda_value=0.3, float16_like_transreid=True,
                                 block_size=16)
    # float32-ulp level: the set decisions and every float16 rounding agree with TransReID.
    np.testing.assert_allclose(out, fx[f'out/rerank/transreid_k1_{k1}_k2_{k2}'], rtol=0, atol=TOL)


def test_rerank_float32_reproduces_torchreid(fx):
  qf, gf = fx['in/rerank/qf'], fx['in/rerank/gf']
  out = rerank.rerank_features(qf, gf, block_size=16)
  np.testing.assert_allclose(out, fx['out/rerank/torchreid_fed_euclid_k1_20_k2_6'], rtol=0, atol=TOL)
  # TransReID's float16 internals differ from float32 by up to 4.1e-3 (the fixture's own measurement).
  assert np.abs(out - fx['out/rerank/transreid_k1_20_k2_6']).max() < 5e-3


def test_rerank_distance_matrices_reproduce_torchreid_both_feedings(fx):
  sq = [fx[f'out/rerank/torchreid_sqdist_{k}'] for k in ('qg', 'qq', 'gg')]
  out = rerank.rerank_distance_matrices(*sq, block_size=24)
  np.testing.assert_allclose(out, fx['out/rerank/torchreid_fed_sqdist_k1_20_k2_6'], rtol=0, atol=TOL)
  euclid = [np.sqrt(np.maximum(x, 0)).astype(np.float32) for x in sq]
  out = rerank.rerank_distance_matrices(*euclid, block_size=24)
  np.testing.assert_allclose(out, fx['out/rerank/torchreid_fed_euclid_k1_20_k2_6'], rtol=0, atol=TOL)


def dense_rerank(qf, gf, k1, k2, lam):
  """The algorithm written densely over the whole (Q+G)^2 matrix, in float64 (an independent check)."""
  feats = np.concatenate([qf, gf]).astype(np.float64)
  n, nq = feats.shape[0], qf.shape[0]
  sq = (feats ** 2).sum(1)
  dist = sq[:, None] + sq[None, :] - 2 * feats @ feats.T
  dist = dist / dist.max(axis=1, keepdims=True)
  rank = np.argsort(dist, axis=1, kind='stable')

  def reciprocal(i, k):
    return [j for j in rank[i, :k] if i in rank[j, :k]]

  half = int(np.around(k1 / 2)) + 1
  v = np.zeros((n, n))
  for i in range(n):
    core = reciprocal(i, k1 + 1)
    members = set(core)
    for c in core:
      cand = reciprocal(c, half)
      if 3 * len(set(cand) & set(core)) > 2 * len(cand):
        members |= set(cand)
    members = sorted(members)
    w = np.exp(-dist[i, members])
    v[i, members] = w / w.sum()
  if k2 > 1:
    v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
  overlap = np.minimum(v[:nq, None, :], v[None, nq:, :]).sum(-1)
  jaccard = 1 - overlap / (2 - overlap)
  return (1 - lam) * jaccard + lam * dist[:nq, nq:]


@pytest.mark.parametrize('k1,k2,lam', [(5, 1, 0.3), (7, 4, 0.5)])   # k1=5: round(2.5) = 2; k2=1: no QE
def test_rerank_matches_dense_rederivation(k1, k2, lam):
  qf, gf = synthetic_reid(seed=3)[:2]
  out = rerank.rerank_features(qf, gf, k1=k1, k2=k2, lambda_value=lam, block_size=9)
  np.testing.assert_allclose(out, dense_rerank(qf, gf, k1, k2, lam), atol=1e-5)


def test_rerank_sparse_width_is_bounded_by_k():
  qf, gf = synthetic_reid(num_ids=20, seed=4)[:2]
  config = rerank.RerankConfig(k1=6, k2=3)
  source = rerank.feature_source(qf, gf)
  reranked = rerank.prepare(source, qf.shape[0], config, block_size=8)
  n = qf.shape[0] + gf.shape[0]
  assert reranked.qe_idx.shape[0] == n
  assert reranked.qe_idx.shape[1] <= config.k2 * (config.k1 + 1) * (config.half_k1 + 2) < n


@pytest.mark.parametrize('k1,k2,lam', [(8, 3, 0.3), (20, 6, 0.3), (5, 1, 0.6)])
def test_sparse_jaccard_equals_dense_path(k1, k2, lam):
  qf, gf = synthetic_reid(seed=8)[:2]
  config = rerank.RerankConfig(k1=k1, k2=k2, lambda_value=lam)
  reranked = rerank.prepare(rerank.feature_source(qf, gf), qf.shape[0], config, block_size=16)

  def run(dist):
    return distances.gather_row_blocks(dist.fn, dist.rows, dist.shared, block_size=7)

  # The same float32 sums in the same (ascending column) order: the CPU applies scatter updates in order.
  np.testing.assert_array_equal(run(reranked.distances(sparse=True)), run(reranked.distances(sparse=False)))
  assert reranked.use_sparse() and reranked.capacity % 128 == 0


def test_sparse_jaccard_is_refused_for_float16_rounding():
  qf, gf = synthetic_reid(seed=8)[:2]
  config = rerank.RerankConfig(k1=5, k2=2, float16_like_transreid=True)
  reranked = rerank.prepare(rerank.feature_source(qf, gf), qf.shape[0], config, block_size=16)
  assert not reranked.use_sparse()
  with pytest.raises(ValueError, match='dense Jaccard'):
    reranked.distances(sparse=True)


def test_column_index_lists_every_gallery_entry_by_column():
  g_idx = np.array([[0, 2, 5], [2, 3, 5], [1, 5, 5]], np.int32)   # 5 = padding (N)
  g_val = np.array([[.1, .2, 0], [.3, .4, 0], [.5, 0, 0]], np.float32)
  index = jaccard.ColumnIndex.build(g_idx, g_val, 5)
  np.testing.assert_array_equal(index.ptr, [0, 1, 2, 4, 5, 5, 5])
  np.testing.assert_array_equal(index.rows, [0, 2, 0, 1, 1])
  np.testing.assert_allclose(index.vals, [.1, .5, .2, .3, .4])
  np.testing.assert_array_equal(index.entries_per_row(np.array([[2, 5], [0, 1]])), [2, 2])


def test_round_to_float16_matches_numpy():
  rs = np.random.RandomState(0)
  x = np.concatenate([rs.uniform(0, 2, 4000), 10.0 ** rs.uniform(-9, 0, 4000), -rs.uniform(0, 1, 100),
                      [0.0, 2.0 ** -14, 2.0 ** -24, 1.5 * 2.0 ** -24, 2.5 * 2.0 ** -24, 1 + 2.0 ** -11,
                       1 + 3 * 2.0 ** -11, 0.7, 65519.0, 70000.0]]).astype(np.float32)
  got = np.asarray(jax.jit(float16.round_to_float16)(x))
  with np.errstate(over='ignore'):
    np.testing.assert_array_equal(got, x.astype(np.float16).astype(np.float32))


def test_evaluate_features_with_rerank_equals_ranking_the_reranked_matrix():
  qf, gf, qp, gp, qc, gc = synthetic_reid(seed=5)
  options = {'k1': 8, 'k2': 3, 'lambda': 0.3}
  fused = reid.evaluate_features(qf, gf, qp, gp, qc, gc, rerank=options, block_size=16)
  matrix = rerank.rerank_features(qf, gf, k1=8, k2=3, lambda_value=0.3, block_size=16)
  separate = reid.evaluate_distances(matrix, qp, gp, qc, gc)
  np.testing.assert_array_equal(fused['cmc'], separate['cmc'])
  np.testing.assert_allclose(fused['per_query_ap'], separate['per_query_ap'], atol=1e-7)


def test_match_ranks_equal_a_stable_sort_with_many_ties():
  rs = np.random.RandomState(12)
  nq, ng = 30, 200
  dist = rs.randint(0, 12, (nq, ng)).astype(np.float32) / 4    # 12 distinct values: ties everywhere
  qp, gp = rs.randint(0, 5, nq), rs.randint(0, 5, ng)
  qc, gc = rs.randint(0, 3, nq), rs.randint(0, 3, ng)
  stats = retrieval.query_statistics(distances.matrix_distances(dist), qp, gp, qc, gc, block_size=7)
  for q in range(nq):
    order = np.argsort(dist[q], kind='stable')
    removed = (gp[order] == qp[q]) & (gc[order] == qc[q])
    match = (gp[order] == qp[q]) & ~removed
    kept_rank = np.cumsum(~removed)
    expected = kept_rank[match]
    assert stats['num_matches'][q] == expected.size and stats['num_kept'][q] == (~removed).sum()
    np.testing.assert_array_equal(stats['match_ranks'][q, :expected.size], expected)
    assert not stats['match_ranks'][q, expected.size:].any()


def test_max_matches_per_query_counts_other_camera_matches():
  q_ids = (np.array([0, 1, 2]), np.array([0, 0, 1]))
  g_ids = (np.array([0, 0, 0, 1, 1, 2]), np.array([0, 1, 1, 0, 1, 1]))
  assert retrieval.max_matches_per_query(q_ids, g_ids) == 2      # query 0: pid 0 on camera 1, twice
  assert retrieval.max_matches_per_query((np.array([2]), np.array([1])), g_ids) == 1   # none: width 1


def _temp_bytes(fn, *args) -> int:
  return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_block_memory_estimates_cover_the_compiled_temporaries():
  """Block sizes come from per-row byte estimates; they must cover what XLA actually allocates."""
  qf, gf, qp, gp, qc, gc = synthetic_reid(num_ids=60, per_id=10, seed=9)
  b, g = 16, gf.shape[0]
  dist = distances.feature_distances(qf, gf, 'euclidean')
  ranking = retrieval._query_kernel(dist.fn, 1, 1, retrieval.rank_statistics_fn(8))
  ids = (np.zeros(b, np.int32),) * 2
  assert _temp_bytes(ranking, qf[:b], *ids, gf, *(np.zeros(g, np.int32),) * 2) <= b * reid.ranking_bytes_per_row(g)
  config = rerank.RerankConfig()
  source = rerank.feature_source(qf, gf)
  reranked = rerank.prepare(source, qf.shape[0], config, block_size=32)
  n = source.num_rows
  nn_kernel = rerank._neighbour_kernel(source.fn, config.k1 + 1)
  prepare_estimate = rerank.rerank_bytes_per_row(n, g, reranked.qe_idx.shape[1])
  assert _temp_bytes(nn_kernel, source.rows[0][:b], *source.shared) <= b * prepare_estimate
  for sparse in (True, False):
    final = reranked.distances(sparse)
    used = _temp_bytes(final.fn, *(r[:b] for r in final.rows), *final.shared)
    assert used <= b * reranked.bytes_per_row(sparse), (sparse, used / b, reranked.bytes_per_row(sparse))


# ---------------------------------------------------------------------------------------------------
# Re-ranking against numpy float32: the row-max normalisation bit for bit, then every list decision

def squared_distances(feats):
  """[N, N] float32 squared euclidean distances (from float64, so >= 0) with an exact zero diagonal."""
  f = feats.astype(np.float64)
  sq = (f ** 2).sum(1)
  full = np.maximum(sq[:, None] + sq[None, :] - 2 * f @ f.T, 0).astype(np.float32)
  np.fill_diagonal(full, 0)
  return full


def plant_near_ties(full, lengths, seed=0):
  """Per row and list length L, the entries at sorted positions L-1 and L become adjacent floats a < b
  whose quotients by the row maximum differ but coincide as a * (1 / max). The larger, b, goes to the
  lower column index, so an equality broken by index would move b into the first L and a out of it."""
  rs = np.random.RandomState(seed)
  full = full.copy()
  for row in full:
    m = row.max()
    for length in sorted(lengths, reverse=True):
      order = np.argsort(row, kind='stable')
      lo, hi = row[order[length - 2]], row[order[length + 1]]
      for a in rs.uniform(lo, hi, 200).astype(np.float32):
        b = np.nextafter(a, np.float32(np.inf))
        if lo < a and b < hi and a / m != b / m and a * (np.float32(1) / m) == b * (np.float32(1) / m):
          first, second = sorted(order[length - 1:length + 1])
          row[first], row[second] = b, a
          break
  return full


def torchreid_rerank(original_dist, num_query, k1, k2, lam):
  """torchreid's re_ranking from its squared [N, N] matrix on, in numpy float32, argsort made stable."""
  original_dist = np.transpose(1. * original_dist / np.max(original_dist, axis=0))
  n = original_dist.shape[0]
  v = np.zeros_like(original_dist)
  rank = np.argsort(original_dist, kind='stable').astype(np.int32)
  half = int(np.around(k1 / 2.)) + 1

  def reciprocal(i, k):
    forward = rank[i, :k]
    return forward[np.where(rank[forward, :k] == i)[0]]

  for i in range(n):
    core = reciprocal(i, k1 + 1)
    expansion = core
    for c in core:
      cand = reciprocal(c, half)
      if len(np.intersect1d(cand, core)) > 2. / 3 * len(cand):
        expansion = np.append(expansion, cand)
    expansion = np.unique(expansion)
    weight = np.exp(-original_dist[i, expansion])
    v[i, expansion] = weight / np.sum(weight)
  if k2 != 1:
    v = np.stack([np.mean(v[rank[i, :k2], :], axis=0) for i in range(n)])
  inv_index = [np.where(v[:, j] != 0)[0] for j in range(n)]
  jaccard_dist = np.zeros((num_query, n), np.float32)
  for i in range(num_query):
    temp_min = np.zeros((1, n), np.float32)
    non_zero = np.where(v[i, :] != 0)[0]
    for j in non_zero:
      rows = inv_index[j]
      temp_min[0, rows] = temp_min[0, rows] + np.minimum(v[i, j], v[rows, j])
    jaccard_dist[i] = 1 - temp_min / (2. - temp_min)
  final = jaccard_dist * (1 - lam) + original_dist[:num_query] * lam
  return final[:, num_query:]


def near_tie_case(k1, k2, seed=3):
  """Rows for matrix_distances (row i = the reference's column i) with near ties at every list boundary."""
  qf, gf = synthetic_reid(seed=seed)[:2]
  half = int(np.around(k1 / 2)) + 1
  return plant_near_ties(squared_distances(np.concatenate([qf, gf])), (k1 + 1, half, k2)), qf.shape[0]


@functools.lru_cache(maxsize=None)
def _normalised_kernel(source_fn):
  def kernel(*args):
    return distances.divide_by_row_max(source_fn(*args))
  return kernel


def _normalised_and_raw(source, block_size):
  run = functools.partial(distances.gather_row_blocks, rows=source.rows, shared=source.shared,
                          block_size=block_size)
  return run(_normalised_kernel(source.fn)), run(source.fn)


def test_rerank_row_max_normalisation_keeps_a_near_tie_apart():
  row = np.array([[0.7555896, 0.75558954, 2.321361]], np.float32)
  got, _ = _normalised_and_raw(distances.matrix_distances(row), 1)
  np.testing.assert_array_equal(got, row / row.max(axis=1, keepdims=True))   # 0.32549423, 0.3254942
  assert got[0, 0] != got[0, 1]


@pytest.mark.parametrize('data', ['features', 'torchreid matrices', 'near ties'])
def test_rerank_normalised_distances_equal_numpy(fx, data):
  """The d every re-ranking step reads (rows divided by their maximum) is numpy's, bit for bit, given the
  same undivided rows (from features those are XLA's matmul, not numpy's)."""
  qf, gf = synthetic_reid(seed=2)[:2]
  sources = {
      'features': lambda: rerank.feature_source(qf, gf),
      'torchreid matrices': lambda: rerank.matrix_source(
          *(fx[f'out/rerank/torchreid_sqdist_{k}'] for k in ('qg', 'qq', 'gg'))),
      'near ties': lambda: distances.matrix_distances(near_tie_case(20, 6)[0]),
  }
  normalised, raw = _normalised_and_raw(sources[data](), block_size=11)
  expected = raw / raw.max(axis=1, keepdims=True)
  np.testing.assert_array_equal(normalised, expected)
  if data == 'near ties':
    reciprocal = raw * (np.float32(1) / raw.max(axis=1, keepdims=True))
    assert (reciprocal != expected).mean() > 0.2


@pytest.mark.parametrize('k1,k2', [(20, 6), (9, 3)])
def test_rerank_neighbour_lists_equal_numpy_on_near_ties(k1, k2):
  full, _ = near_tie_case(k1, k2)
  k = max(k1 + 1, k2)
  nn = rerank.neighbour_lists(distances.matrix_distances(full), k, block_size=16)
  expected = np.argsort(full / full.max(axis=1, keepdims=True), axis=1, kind='stable')[:, :k]
  np.testing.assert_array_equal(nn, expected)


@pytest.mark.parametrize('k1,k2,lam', [(20, 6, 0.3), (9, 3, 0.5)])
def test_rerank_equals_numpy_torchreid_on_near_ties(k1, k2, lam):
  """Near ties at positions k1 + 1, round(k1 / 2) + 1 and k2 of the lists: with quotients an ulp off
  (multiplication by the reciprocal) the sets change and the results move by up to 0.24 here; with
  exact division only exp and the order of sums differ from numpy."""
  full, nq = near_tie_case(k1, k2)
  config = rerank.RerankConfig(k1=k1, k2=k2, lambda_value=lam)
  reranked = rerank.prepare(distances.matrix_distances(full), nq, config, block_size=16)
  expected = torchreid_rerank(full.T, nq, k1, k2, lam)
  for sparse in (True, False):
    dist = reranked.distances(sparse)
    out = distances.gather_row_blocks(dist.fn, dist.rows, dist.shared, block_size=8)
    np.testing.assert_allclose(out, expected, rtol=0, atol=TOL, err_msg=f'sparse={sparse}')


# ---------------------------------------------------------------------------------------------------
# Blocking and sharding invariance

@pytest.mark.parametrize('block_size', [1, 3, 8, 1000])
def test_blocked_equals_unblocked(fx, block_size):
  one = reid.evaluate_distances(*_case(fx, 'caseB'), block_size=1000)
  other = reid.evaluate_distances(*_case(fx, 'caseB'), block_size=block_size)
  for key in ('cmc', 'per_query_ap', 'first_match_rank', 'valid'):
    np.testing.assert_array_equal(other[key], one[key])


def test_rerank_blocked_equals_unblocked():
  qf, gf = synthetic_reid(seed=6)[:2]
  whole = rerank.rerank_features(qf, gf, k1=8, k2=3, block_size=10_000)
  blocked = rerank.rerank_features(qf, gf, k1=8, k2=3, block_size=13)   # divides neither 28 nor 84
  np.testing.assert_array_equal(blocked, whole)


def test_eight_devices_equal_one(fx):
  assert jax.device_count() >= 8
  mesh = parallel.make_mesh(8)
  single = reid.evaluate_distances(*_case(fx, 'caseA'), block_size=16)
  sharded = reid.evaluate_distances(*_case(fx, 'caseA'), block_size=16, mesh=mesh)
  for key in ('cmc', 'per_query_ap', 'per_query_inp', 'first_match_rank'):
    np.testing.assert_array_equal(sharded[key], single[key])
  # From features the matmul's rounding may depend on the rows per device (a 1-row matvec differs from
  # a matmul by an ulp), so distances agree to float32 precision and rankings exactly.
  qf, gf, qp, gp, qc, gc = synthetic_reid(seed=7)
  options = {'k1': 8, 'k2': 3, 'float16_like_transreid': True}
  single = reid.evaluate_features(qf, gf, qp, gp, qc, gc, rerank=options, block_size=16)
  sharded = reid.evaluate_features(qf, gf, qp, gp, qc, gc, rerank=options, block_size=16, mesh=mesh)
  np.testing.assert_array_equal(sharded['cmc'], single['cmc'])
  np.testing.assert_array_equal(sharded['first_match_rank'], single['first_match_rank'])
  np.testing.assert_allclose(sharded['per_query_ap'], single['per_query_ap'], rtol=0, atol=1e-7)
  options = {'k1': 8, 'k2': 3}   # float32: the sparse Jaccard path
  single = reid.evaluate_features(qf, gf, qp, gp, qc, gc, rerank=options, block_size=16)
  sharded = reid.evaluate_features(qf, gf, qp, gp, qc, gc, rerank=options, block_size=16, mesh=mesh)
  np.testing.assert_array_equal(sharded['cmc'], single['cmc'])
  np.testing.assert_allclose(sharded['per_query_ap'], single['per_query_ap'], rtol=0, atol=1e-7)
  idx8, _ = reid.top_k_gallery(qf, gf, 5, mesh=mesh)
  np.testing.assert_array_equal(idx8, reid.top_k_gallery(qf, gf, 5)[0])


# ---------------------------------------------------------------------------------------------------
# Errors

def test_errors_name_what_was_expected(fx):
  qf, gf, qp, gp, qc, gc = synthetic_reid()
  with pytest.raises(ValueError, match='same dim'):
    reid.evaluate_features(qf, gf[:, :5], qp, gp, qc, gc)
  with pytest.raises(ValueError, match='query pids'):
    reid.evaluate_features(qf, gf, qp[:-1], gp, qc[:-1], gc)
  with pytest.raises(ValueError, match='gallery camids'):
    reid.evaluate_features(qf, gf, qp, gp, qc, gc[:-1])
  with pytest.raises(ValueError, match='1-D'):
    reid.evaluate_features(qf, gf, qp[:, None], gp, qc, gc)
  with pytest.raises(ValueError, match='unknown distance metric'):
    reid.evaluate_features(qf, gf, qp, gp, qc, gc, metric='manhattan')
  with pytest.raises(ValueError, match='unknown evaluation protocol'):
    reid.evaluate_features(qf, gf, qp, gp, qc, gc, protocol='duke')
  with pytest.raises(ValueError, match='pass rng'):
    reid.evaluate_features(qf, gf, qp, gp, qc, gc, protocol='cuhk03_classic')
  with pytest.raises(ValueError, match='unknown re-ranking options'):
    reid.evaluate_features(qf, gf, qp, gp, qc, gc, rerank={'k3': 1})
  with pytest.raises(ValueError, match='NaN'):
    reid.evaluate_features(np.full_like(qf, np.nan), gf, qp, gp, qc, gc)
  with pytest.raises(ValueError, match='no query has a gallery match'):
    reid.evaluate_features(qf, gf, qp + 1, gp, qc, gc)
  with pytest.raises(ValueError, match='max_rank'):
    reid.evaluate_features(qf, gf, qp, gp, qc, gc, max_rank=0)
  with pytest.raises(ValueError, match='k must be'):
    reid.top_k_gallery(qf, gf, gf.shape[0] + 1)
  with pytest.raises(ValueError, match='2-D'):
    reid.evaluate_distances(np.zeros(5), qp, gp, qc, gc)
  with pytest.raises(ValueError, match=r'q_g \[Q, G\]'):
    rerank.rerank_distance_matrices(np.zeros((3, 4)), np.zeros((3, 3)), np.zeros((3, 3)))
  with pytest.raises(ValueError, match='multiple of the 8 mesh devices'):
    list(distances.map_row_blocks(lambda x: x, (np.zeros((4, 2)),), (), block_size=4,
                                  mesh=parallel.make_mesh(8)))
