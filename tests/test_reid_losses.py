"""Re-ID losses against brute-force loop references (float64 numpy) and the official NFormer/BoT
outputs of the `nformer_encoder_small` fixture: label-smoothed cross-entropy, batch-hard triplet
(hard/soft margin, squared or not, normalised, singleton ids, padding rows), center loss and the
centre gradient rescaling."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_fixture

from jaxmatch.losses import center_loss, cross_entropy, pairwise_distances, triplet_loss


# ---------------------------------------------------------------- brute-force references

def ref_cross_entropy(logits, labels, eps):
  logits = np.asarray(logits, np.float64)
  total = 0.0
  for row, y in zip(logits, labels):
    log_probs = row - row.max() - np.log(np.sum(np.exp(row - row.max())))
    for c, lp in enumerate(log_probs):
      target = (1 - eps) * (c == y) + eps / len(row)
      total -= target * lp
  return total / len(labels)


def ref_distance(a, b, squared):
  d2 = max(float(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)), 1e-12)
  return d2 if squared else np.sqrt(d2)


def ref_triplet(x, labels, margin, squared=False, normalize=False, valid=None):
  """Loops over every (anchor, positive, negative) triple; returns (loss, dist_ap, dist_an)."""
  x = np.asarray(x, np.float64)
  if normalize:
    x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
  n = len(labels)
  valid = np.ones(n, bool) if valid is None else np.asarray(valid)
  terms, dap_all, dan_all = [], [], []
  for i in range(n):
    pos = [ref_distance(x[i], x[j], squared) for j in range(n) if valid[j] and labels[j] == labels[i]]
    neg = [ref_distance(x[i], x[j], squared) for j in range(n) if valid[j] and labels[j] != labels[i]]
    dap = max(pos) if pos else 0.0
    dan = min(neg) if neg else np.inf
    dap_all.append(dap)
    dan_all.append(dan)
    if not valid[i]:
      continue
    if not neg:
      terms.append(0.0)
    elif margin is not None and margin > 0:
      terms.append(max(0.0, dap - dan + margin))
    else:
      terms.append(np.log1p(np.exp(dap - dan)))
  return np.mean(terms), np.array(dap_all), np.array(dan_all)


def ref_center(x, labels, centers):
  x, centers = np.asarray(x, np.float64), np.asarray(centers, np.float64)
  total = 0.0
  for i, y in enumerate(labels):
    for c in range(len(centers)):
      d = np.sum((x[i] - centers[c]) ** 2) if c == y else 0.0
      total += min(max(d, 1e-12), 1e12)
  return total / len(labels)


def random_batch(seed, num_ids=4, per_id=3, dim=8, extra_singletons=0):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(num_ids), per_id)
  labels = np.concatenate([labels, num_ids + np.arange(extra_singletons)])
  rng.shuffle(labels)
  x = rng.normal(size=(len(labels), dim)).astype(np.float32)
  return x, labels


# ---------------------------------------------------------------- cross-entropy

@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_cross_entropy_matches_loop_reference(eps):
  rng = np.random.default_rng(0)
  logits = (rng.normal(size=(6, 5)) * 3).astype(np.float32)
  labels = rng.integers(0, 5, size=6)
  got = cross_entropy(jnp.asarray(logits), jnp.asarray(labels), eps)
  np.testing.assert_allclose(float(got), ref_cross_entropy(logits, labels, eps), rtol=1e-5)


def test_cross_entropy_without_smoothing_is_plain_cross_entropy():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(7, 4)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 4, size=7))
  plain = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
  np.testing.assert_allclose(float(cross_entropy(logits, labels, 0.0)), float(plain), rtol=1e-6)


def test_cross_entropy_bfloat16_logits_computed_in_float32():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(4, 3)).astype(np.float32)
  labels = np.array([0, 2, 1, 1])
  got = cross_entropy(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(labels), 0.1)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(float(got), ref_cross_entropy(logits, labels, 0.1), rtol=1e-2)


def test_cross_entropy_gradient_is_softmax_minus_target():
  logits = jnp.asarray([[2.0, -1.0, 0.5], [0.0, 0.0, 3.0]])
  labels = jnp.asarray([0, 1])
  grad = jax.grad(cross_entropy)(logits, labels, 0.1)
  target = 0.9 * jax.nn.one_hot(labels, 3) + 0.1 / 3
  np.testing.assert_allclose(grad, (jax.nn.softmax(logits) - target) / 2, atol=1e-7)


@pytest.mark.parametrize("logits,labels,eps,match", [
    (np.zeros((3,)), np.zeros((3,), int), 0.1, "logits must be"),
    (np.zeros((3, 4)), np.zeros((2,), int), 0.1, "labels must be"),
    (np.zeros((3, 4)), np.zeros((3,), int), 1.0, "epsilon"),
    (np.zeros((3, 4)), np.array([0, 4, 1]), 0.1, r"labels must lie in \[0, 4\)"),
])
def test_cross_entropy_bad_input(logits, labels, eps, match):
  with pytest.raises(ValueError, match=match):
    cross_entropy(logits, labels, eps)


# ---------------------------------------------------------------- triplet

@pytest.mark.parametrize("margin,squared,normalize", list(itertools.product([0.3, 0.0], [False, True],
                                                                              [False, True])))
def test_triplet_matches_brute_force(margin, squared, normalize):
  x, labels = random_batch(3, num_ids=4, per_id=3)
  out = triplet_loss(jnp.asarray(x), jnp.asarray(labels), margin=margin, squared=squared,
                     normalize=normalize)
  loss, dap, dan = ref_triplet(x, labels, margin, squared, normalize)
  np.testing.assert_allclose(float(out.loss), loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.dist_ap, dap, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out.dist_an, dan, rtol=1e-5, atol=1e-5)


def test_triplet_soft_margin_for_none_and_negative_margin():
  x, labels = random_batch(4)
  soft = float(triplet_loss(x, labels, margin=None).loss)
  np.testing.assert_allclose(soft, ref_triplet(x, labels, None)[0], rtol=1e-5)
  assert float(triplet_loss(x, labels, margin=-1.0).loss) == pytest.approx(soft)


def test_triplet_singleton_ids_use_self_as_positive():
  """Ids seen once: d_ap is the self distance, sqrt(1e-12) exactly but float32 cancellation of the
  expanded form (official too) leaves up to ~1e-3; the term is relu(m - d_an + d_ap)."""
  x, labels = random_batch(5, num_ids=2, per_id=2, extra_singletons=3)
  out = triplet_loss(jnp.asarray(x), jnp.asarray(labels), margin=5.0)
  loss, dap, dan = ref_triplet(x, labels, 5.0)
  singles = np.array([np.sum(labels == y) == 1 for y in labels])
  assert np.all(np.asarray(out.dist_ap)[singles] < 3e-3)
  np.testing.assert_allclose(float(out.loss), loss, atol=1e-3)
  np.testing.assert_allclose(out.dist_an, dan, rtol=1e-5)
  assert np.all(np.isfinite(jax.grad(lambda f: triplet_loss(f, labels, 5.0).loss)(jnp.asarray(x))))


def test_triplet_single_identity_batch_has_zero_loss_and_finite_gradients():
  x, _ = random_batch(6)
  labels = np.zeros(len(x), int)
  out = triplet_loss(jnp.asarray(x), jnp.asarray(labels), margin=0.3)
  assert float(out.loss) == 0.0
  assert np.all(np.isinf(out.dist_an))
  for margin in (0.3, 0.0):
    g = jax.grad(lambda f, m=margin: triplet_loss(f, labels, m).loss)(jnp.asarray(x))
    assert np.all(np.isfinite(g)) and np.all(g == 0)


def test_triplet_padding_rows_are_ignored():
  x, labels = random_batch(7, num_ids=3, per_id=2)
  pad = np.random.default_rng(8).normal(size=(3, x.shape[1])).astype(np.float32) * 0.01
  xs = np.concatenate([x, pad])
  ls = np.concatenate([labels, [labels[0], labels[1], 99]])  # padding that would be hardest examples
  valid = np.arange(len(ls)) < len(labels)
  out = triplet_loss(jnp.asarray(xs), jnp.asarray(ls), 0.3, valid=jnp.asarray(valid))
  ref = triplet_loss(jnp.asarray(x), jnp.asarray(labels), 0.3)
  np.testing.assert_allclose(float(out.loss), float(ref.loss), rtol=1e-6)
  np.testing.assert_allclose(out.dist_ap[:len(labels)], ref.dist_ap, rtol=1e-6)
  np.testing.assert_allclose(float(out.loss), ref_triplet(xs, ls, 0.3, valid=valid)[0], rtol=1e-5)


@pytest.mark.parametrize("margin,squared", [(0.3, False), (0.0, False), (0.3, True)])
def test_triplet_gradients_match_finite_differences(margin, squared):
  x, labels = random_batch(9, num_ids=3, per_id=2, dim=4)
  x64 = x.astype(np.float64)
  grad = np.asarray(jax.grad(lambda f: triplet_loss(f, labels, margin, squared).loss)(jnp.asarray(x)))
  h = 1e-4
  for i, j in [(0, 0), (2, 3), (5, 1)]:
    up, dn = x64.copy(), x64.copy()
    up[i, j] += h
    dn[i, j] -= h
    fd = (ref_triplet(up, labels, margin, squared)[0] - ref_triplet(dn, labels, margin, squared)[0]) / (2 * h)
    np.testing.assert_allclose(grad[i, j], fd, rtol=2e-2, atol=2e-3)


def test_pairwise_distances_clamp():
  x = jnp.asarray([[1.0, 2.0], [1.0, 2.0], [4.0, 6.0]])
  d = np.asarray(pairwise_distances(x, x))
  np.testing.assert_allclose(np.diag(d), 1e-6, rtol=1e-3)  # sqrt(1e-12)
  assert d[0, 2] == pytest.approx(5.0)
  assert float(pairwise_distances(x, x, squared=True)[0, 1]) == pytest.approx(1e-12)


def test_triplet_bad_input():
  with pytest.raises(ValueError, match=r"\[batch, dim\]"):
    triplet_loss(jnp.zeros((4,)), jnp.zeros((4,), int))
  with pytest.raises(ValueError, match="labels must be"):
    triplet_loss(jnp.zeros((4, 2)), jnp.zeros((3,), int))
  with pytest.raises(ValueError, match="valid must be"):
    triplet_loss(jnp.zeros((4, 2)), jnp.zeros((4,), int), valid=jnp.ones((5,), bool))


# ---------------------------------------------------------------- center loss

def test_center_loss_matches_loop_reference():
  x, labels = random_batch(10, num_ids=5, per_id=2, dim=6)
  centers = np.random.default_rng(11).normal(size=(7, 6)).astype(np.float32)
  got = center_loss(jnp.asarray(x), jnp.asarray(labels), jnp.asarray(centers))
  np.testing.assert_allclose(float(got), ref_center(x, labels, centers), rtol=1e-5)


def test_center_loss_on_own_centre_is_the_clamp_floor():
  centers = jnp.asarray(np.random.default_rng(12).normal(size=(4, 3)), jnp.float32)
  labels = jnp.asarray([1, 3])
  got = float(center_loss(centers[labels], labels, centers))
  assert got < 1e-5  # every entry clamps to 1e-12 up to float32 rounding of the expanded form


def test_center_loss_bad_input():
  with pytest.raises(ValueError, match="feature dim"):
    center_loss(jnp.zeros((2, 3)), jnp.zeros((2,), int), jnp.zeros((4, 5)))
  with pytest.raises(ValueError, match="labels must be"):
    center_loss(jnp.zeros((2, 3)), jnp.zeros((3,), int), jnp.zeros((4, 3)))


# ---------------------------------------------------------------- official outputs

def test_losses_match_official_fixture():
  """Official BoT/NFormer losses on the fixture's train-mode logits and pre-BN features."""
  fx = load_fixture("nformer_encoder_small")
  feat, logits = fx["train/global_feat"], fx["train/cls_score"]
  labels, centers = fx["in/labels"], fx["in/center_criterion.centers"].astype(np.float32)
  xent = cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 0.1)
  tri = triplet_loss(jnp.asarray(feat), jnp.asarray(labels), margin=0.3)
  cen = center_loss(jnp.asarray(feat), jnp.asarray(labels), jnp.asarray(centers))
  np.testing.assert_allclose(float(xent), fx["train/loss_xent_labelsmooth"], rtol=1e-6)
  np.testing.assert_allclose(float(tri.loss), fx["train/loss_triplet"], rtol=1e-5)
  np.testing.assert_allclose(tri.dist_ap, fx["train/dist_ap"], rtol=1e-5)
  np.testing.assert_allclose(tri.dist_an, fx["train/dist_an"], rtol=1e-5)
  np.testing.assert_allclose(float(cen), fx["train/loss_center"], rtol=1e-5)
  total = float(xent) + float(tri.loss) + 5e-4 * float(cen)
  np.testing.assert_allclose(total, fx["train/loss_total"], rtol=1e-5)
  # d loss_total / d centers: the weighted loss differentiated w.r.t. the centres.
  gc = jax.grad(lambda c: 5e-4 * center_loss(jnp.asarray(feat), jnp.asarray(labels), c))(jnp.asarray(centers))
  np.testing.assert_allclose(gc, fx["train/center_grad"], rtol=1e-5, atol=1e-10)
