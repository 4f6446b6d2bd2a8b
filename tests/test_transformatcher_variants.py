"""TransforMatcher variants (paper Tables 2, 3, A2) against brute-force references on small inputs.

Attention: additive (with / without rotary), vanilla softmax (and its refusal at the paper size before
allocating), Linformer, Performer (FAVOR+: exact against the explicit kernel with the same features,
unbiased estimator, convergence to softmax attention with many features, explicit PRNG keys).
Position: absolute learnable table vs rotary. Correlation: single-channel concat / mean. Dense
target -> source positions (`predict_dense`). Each variant end to end through the model's loss.
"""
from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from jaxmatch import models
from jaxmatch.convert.transformatcher import transformatcher_from_torch, transformatcher_to_torch
from jaxmatch.models.transformatcher import geometry
from jaxmatch.models.transformatcher.attention import AdditiveAttention
from jaxmatch.models.transformatcher.correlation import (concat_correlation, correlation_by_mode,
                                                         mean_correlation, multilayer_correlation)
from jaxmatch.models.transformatcher.linformer import LinformerAttention
from jaxmatch.models.transformatcher.match2match import Match2Match
from jaxmatch.models.transformatcher.performer import (PerformerAttention, favor_attention,
                                                       orthogonal_random_features,
                                                       positive_random_features)
from jaxmatch.models.transformatcher.rotary import rotary_table
from jaxmatch.models.transformatcher.vanilla import SoftmaxAttention, attention_matrix_bytes
from test_convert_cli import tiny_config

from conftest import optional_import

B, T, DIM, HEADS, HD = 2, 81, 16, 8, 4


@pytest.fixture(scope="module")
def tokens():
  return np.random.default_rng(0).normal(size=(B, T, DIM)).astype(np.float32)


def _params(variables, name):
  p = variables["params"][name]
  return {k: np.asarray(v, np.float64) for k, v in p.items()}


def np_qkv(x, variables, rotary):
  """float64 [B, T, H, D] q, k, v from to_qkv, rotated with the official table when asked."""
  w = np.asarray(variables["params"]["to_qkv"]["kernel"], np.float64)
  qkv = x.astype(np.float64) @ w
  q, k, v = (z.reshape(B, -1, HEADS, HD) for z in np.split(qkv, 3, axis=-1))
  if rotary:
    cos, sin = (np.asarray(a, np.float64)[:, None, :] for a in rotary_table(x.shape[1]))
    q, k = np_rotate(q, cos, sin), np_rotate(k, cos, sin)
  return q, k, v


def np_rotate(x, cos, sin):
  half = np.empty_like(x)
  half[..., 0::2], half[..., 1::2] = -x[..., 1::2], x[..., 0::2]
  return x * cos + half * sin


def np_out(heads_out, variables):
  p = _params(variables, "to_out")
  return heads_out.reshape(heads_out.shape[0], heads_out.shape[1], -1) @ p["kernel"] + p["bias"]


def np_softmax(z, axis):
  z = z - z.max(axis=axis, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=axis, keepdims=True)


def close(got, ref, atol, rtol=0.0):
  np.testing.assert_allclose(np.asarray(got, np.float64), ref, atol=atol, rtol=rtol)


# ----------------------------------------------------------------------------- additive
def np_additive(x, variables, rotary):
  """Reference section 2.4, step by step, per batch element and head."""
  q, k, v = np_qkv(x, variables, rotary=False)
  qr, kr = np_qkv(x, variables, rotary=rotary)[:2]
  wq = _params(variables, "to_q_attn_logits")["kernel"][:, 0]
  wk = _params(variables, "to_k_attn_logits")["kernel"][:, 0]
  r = _params(variables, "to_r")
  scale = HD ** -0.5
  out = np.zeros_like(q)
  for b in range(B):
    for h in range(HEADS):
      alpha = np_softmax(scale * (q[b, :, h] @ wq), 0)
      g_q = alpha @ qr[b, :, h]                               # global query over all tokens
      p = (k[b, :, h] * g_q).reshape(-1, HD // 2, 2).sum(-1)
      beta = np_softmax(scale * (p @ wk), 0)
      g_k = beta @ kr[b, :, h]
      u = (v[b, :, h] * g_k).reshape(-1, HD // 2, 2).sum(-1)
      out[b, :, h] = u @ r["kernel"] + r["bias"] + q[b, :, h]
  return np_out(out, variables)


@pytest.mark.parametrize("rotary", [True, False])
def test_additive_matches_bruteforce(tokens, rotary):
  layer = AdditiveAttention(DIM, HEADS, HD, rotary=rotary)
  variables = layer.init(jax.random.key(0), tokens)
  close(layer.apply(variables, tokens), np_additive(tokens, variables, rotary), atol=2e-5)


# ----------------------------------------------------------------------------- vanilla softmax
@pytest.mark.parametrize("rotary", [True, False])
def test_softmax_attention_matches_bruteforce(tokens, rotary):
  layer = SoftmaxAttention(DIM, HEADS, HD, rotary=rotary)
  variables = layer.init(jax.random.key(1), tokens)
  q, k, v = np_qkv(tokens, variables, rotary)
  out = np.zeros_like(q)
  for b in range(B):
    for h in range(HEADS):
      for i in range(T):
        w = np_softmax(np.array([q[b, i, h] @ k[b, j, h] for j in range(T)]) / np.sqrt(HD), 0)
        out[b, i, h] = w @ v[b, :, h]
  close(layer.apply(variables, tokens), np_out(out, variables), atol=2e-5)


def test_softmax_attention_refuses_paper_size_before_allocating():
  assert attention_matrix_bytes(1, 8, 15 ** 4) == 8 * 50625 ** 2 * 4 == 82_012_500_000
  model = Match2Match(attention="softmax")
  corr = jax.ShapeDtypeStruct((1, 15, 15, 15, 15, 26), jnp.float32)
  # eval_shape traces without allocating: the refusal comes from the shapes alone.
  with pytest.raises(MemoryError, match=r"76\.4 GiB .*82,012,500,000 bytes.*max_attention_bytes = 8\.0 GiB"):
    jax.eval_shape(lambda c: model.init(jax.random.key(0), c), corr)
  small = Match2Match(attention="softmax", depth=1, max_attention_bytes=B * HEADS * T * T * 4 - 1)
  with pytest.raises(MemoryError, match="would need"):
    small.init(jax.random.key(0), jnp.zeros((B, 3, 3, 3, 3, 5)))


# ----------------------------------------------------------------------------- Linformer
def test_linformer_matches_bruteforce(tokens):
  layer = LinformerAttention(DIM, HEADS, HD, rotary=False, projected_length=7)
  variables = layer.init(jax.random.key(2), tokens)
  e = np.asarray(variables["params"]["proj_k"], np.float64)
  f = np.asarray(variables["params"]["proj_v"], np.float64)
  assert e.shape == f.shape == (T, 7)
  q, k, v = np_qkv(tokens, variables, rotary=False)
  out = np.zeros_like(q)
  for b in range(B):
    for h in range(HEADS):
      k_low, v_low = e.T @ k[b, :, h], f.T @ v[b, :, h]          # [7, D]: the token axis projected
      for i in range(T):
        out[b, i, h] = np_softmax(k_low @ q[b, i, h] / np.sqrt(HD), 0) @ v_low
  close(layer.apply(variables, tokens), np_out(out, variables), atol=2e-5)
  with pytest.raises(ValueError, match="built for 81 tokens.*got 16 tokens"):
    layer.apply(variables, tokens[:, :16])


# ----------------------------------------------------------------------------- Performer
def test_orthogonal_features_are_orthogonal_blocks():
  omega = np.asarray(orthogonal_random_features(jax.random.key(3), 10, 4), np.float64)
  assert omega.shape == (10, 4)
  for block in (omega[0:4], omega[4:8]):
    gram = block @ block.T
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0.0, atol=1e-5)
  assert len({tuple(r) for r in np.round(omega, 5)}) == 10


def test_favor_estimator_is_unbiased():
  """Mean over PRNG keys of phi(q).phi(k) converges to exp(q.k) (FAVOR+ Lemma 1)."""
  rng = np.random.default_rng(4)
  q, k = (jnp.asarray(rng.normal(scale=0.5, size=(3, 4)).astype(np.float32)) for _ in range(2))
  exact = np.exp(np.sum(np.asarray(q, np.float64) * np.asarray(k, np.float64), -1))

  def estimate(key):
    omega = orthogonal_random_features(key, 4, 4)
    return jnp.sum(positive_random_features(q, omega) * positive_random_features(k, omega), -1)

  draw = jax.jit(jax.vmap(estimate))

  def mean_and_error(n, seed):
    draws = np.asarray(draw(jax.random.split(jax.random.key(seed), n)), np.float64)
    return draws.mean(0), draws.std(0) / np.sqrt(n)

  many, many_se = mean_and_error(8192, 6)
  assert np.all(np.abs(many - exact) <= 4 * many_se), (many, exact, many_se)
  assert np.all(np.abs(many - exact) / exact < 0.03)


def test_performer_matches_explicit_kernel_with_same_features(tokens):
  layer = PerformerAttention(DIM, HEADS, HD, rotary=True, num_features=12)
  variables = layer.init({"params": jax.random.key(7), "performer": jax.random.key(8)}, tokens)
  out, state = layer.apply(variables, tokens, rngs={"performer": jax.random.key(9)},
                           mutable=["intermediates"])
  omega = np.asarray(state["intermediates"]["features"][0], np.float64)
  q, k, v = np_qkv(tokens, variables, rotary=True)

  def phi(x):  # unshifted FAVOR+ features, explicit
    x = x * HD ** -0.25
    return np.exp(x @ omega.T - 0.5 * np.sum(x * x, -1, keepdims=True)) / np.sqrt(len(omega))

  ref = np.zeros_like(q)
  for b in range(B):
    for h in range(HEADS):
      kernel = phi(q[b, :, h]) @ phi(k[b, :, h]).T          # [T, T] explicit linear-attention matrix
      ref[b, :, h] = (kernel / kernel.sum(1, keepdims=True)) @ v[b, :, h]
  close(out, np_out(ref, variables), atol=1e-4)


def test_performer_with_many_features_approximates_softmax():
  rng = np.random.default_rng(10)
  # Moderate norms: the positive features' variance grows like exp(|q + k|^2) (FAVOR+ Lemma 2).
  q, k, v = (jnp.asarray(rng.normal(scale=0.35, size=(1, 64, 2, 4)).astype(np.float32)) for _ in range(3))
  qd, kd, vd = (np.asarray(a, np.float64) for a in (q, k, v))
  exact = np.einsum("bqhk,bkhd->bqhd", np_softmax(np.einsum("bqhd,bkhd->bqhk", qd, kd) / 2.0, -1), vd)

  def error(m, seed):
    approx = favor_attention(q, k, v, orthogonal_random_features(jax.random.key(seed), m, 4))
    return np.abs(np.asarray(approx, np.float64) - exact).max() / np.abs(exact).max()

  many = error(4096, 11)
  assert many < 0.03
  assert many < error(8, 12) / 10


def test_performer_features_come_from_the_explicit_key(tokens):
  layer = PerformerAttention(DIM, HEADS, HD, num_features=8)
  with pytest.raises(ValueError, match="rngs=.*performer"):
    layer.init(jax.random.key(0), tokens)
  variables = layer.init({"params": jax.random.key(0), "performer": jax.random.key(1)}, tokens)
  run = lambda seed: np.asarray(layer.apply(variables, tokens, rngs={"performer": jax.random.key(seed)}))
  np.testing.assert_array_equal(run(5), run(5))
  assert np.abs(run(5) - run(6)).max() > 1e-4


# ----------------------------------------------------------------------------- position
def test_absolute_position_embedding_is_added_per_4d_position():
  rng = np.random.default_rng(13)
  corr = jnp.asarray(rng.normal(size=(B, 2, 3, 3, 2, 5)).astype(np.float32))
  model = Match2Match(depth=1, position="absolute")
  variables = model.init(jax.random.key(0), corr)
  table = np.asarray(variables["params"]["position"]["posenc"], np.float64)
  assert table.shape == (2, 3, 3, 2, DIM)
  assert 0.8 < table.std() < 1.2                       # N(0, 1), as the official `posenc`
  _, state = jax.jit(lambda v, c: model.apply(v, c, mutable=["intermediates"]))(variables, corr)
  embed = np.asarray(state["intermediates"]["embed"][0], np.float64)
  emb = _params(variables, "to_embedding")
  relu = np.maximum(np.asarray(corr, np.float64), 0.0)
  n = 0
  for h1 in range(2):
    for w1 in range(3):
      for h2 in range(3):
        for w2 in range(2):    # token order (h1, w1, h2, w2) row-major
          want = relu[:, h1, w1, h2, w2] @ emb["kernel"] + emb["bias"] + table[h1, w1, h2, w2]
          np.testing.assert_allclose(embed[:, n], want, atol=1e-5)
          n += 1
  grad = jax.jit(jax.grad(lambda p: model.apply({"params": p}, corr)[0].sum()))(variables["params"])
  assert np.abs(np.asarray(grad["position"]["posenc"])).max() > 0


def test_absolute_position_turns_rotary_off_and_rotary_has_no_table(tokens):
  corr = jnp.asarray(np.random.default_rng(14).normal(size=(B, 3, 3, 3, 3, 5)).astype(np.float32))
  rotary = Match2Match(depth=1)
  absolute = Match2Match(depth=1, position="absolute")
  v_rot = rotary.init(jax.random.key(0), corr)
  v_abs = absolute.init(jax.random.key(0), corr)
  assert "position" not in v_rot["params"]
  # With the table zeroed, the absolute model is the additive model without rotation.
  params = dict(v_abs["params"], position={"posenc": jnp.zeros_like(v_abs["params"]["position"]["posenc"])})
  no_rot = Match2Match(depth=1, position="none")
  run = lambda m, v: np.asarray(jax.jit(m.apply)(v, corr)[0])
  np.testing.assert_allclose(run(absolute, {"params": params}), run(no_rot, v_rot), atol=1e-6)
  assert np.abs(run(rotary, v_rot) - run(no_rot, v_rot)).max() > 1e-4


# ----------------------------------------------------------------------------- correlation
def _taps(seed):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=(2, 3, 3, 6)).astype(np.float32)),
          jnp.asarray((3.0 * rng.normal(size=(2, 2, 2, 4))).astype(np.float32))]


def torch_resize(x, size):
  torch = optional_import("torch")
  t = torch.from_numpy(np.array(x, np.float32)).permute(0, 3, 1, 2)
  out = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=True)
  return out.permute(0, 2, 3, 1).double().numpy()


def test_single_channel_concat_matches_bruteforce():
  src, trg = _taps(15), _taps(16)
  got = np.asarray(concat_correlation(src, trg, 3), np.float64)
  assert got.shape == (2, 3, 3, 3, 3, 1)
  fs = np.concatenate([torch_resize(f, 3) for f in src], -1)   # 10 channels, each tap its own scale
  ft = np.concatenate([torch_resize(f, 3) for f in trg], -1)
  for b in range(2):
    for (i, j, k, l) in np.ndindex(3, 3, 3, 3):
      a, c = fs[b, i, j], ft[b, k, l]
      want = a @ c / (np.linalg.norm(a) * np.linalg.norm(c))
      assert abs(got[b, i, j, k, l, 0] - want) < 1e-5


def test_single_channel_mean_is_mean_of_rectified_maps():
  src, trg = _taps(17), _taps(18)
  multi = np.asarray(multilayer_correlation(src, trg, 3), np.float64)
  got = np.asarray(mean_correlation(src, trg, 3), np.float64)
  assert got.shape == (2, 3, 3, 3, 3, 1) and got.min() >= 0
  np.testing.assert_allclose(got[..., 0], np.maximum(multi, 0).mean(-1), atol=1e-6)
  # rectify-then-average differs from averaging the raw cosines (negative entries exist here)
  assert np.abs(got[..., 0] - np.maximum(multi.mean(-1), 0)).max() > 1e-3
  np.testing.assert_array_equal(correlation_by_mode("multi", src, trg, 3), multi.astype(np.float32))
  with pytest.raises(ValueError, match="must be one of"):
    correlation_by_mode("sum", src, trg, 3)


# ----------------------------------------------------------------------------- dense positions
def test_dense_source_positions_find_a_known_peak():
  g, img = 8, 128
  rng = np.random.default_rng(19)
  source_of = rng.integers(0, g * g, size=(2, g * g))          # target cell t <- source cell source_of[t]
  corr = np.zeros((2, g * g, g * g), np.float32)
  for b in range(2):
    corr[b, source_of[b], np.arange(g * g)] = 40.0
  got = np.asarray(geometry.dense_source_positions(jnp.asarray(corr), img, sigma=5.0))
  assert got.shape == (2, g, g, 2)
  cells = np.linspace(-1, 1, g)
  want_x = cells[source_of % g] * 64 + 64                      # (x, y) pixels of the source cell
  want_y = cells[source_of // g] * 64 + 64
  np.testing.assert_allclose(got[..., 0].reshape(2, -1), want_x, atol=1e-3)
  np.testing.assert_allclose(got[..., 1].reshape(2, -1), want_y, atol=1e-3)
  # symmetric to the official source -> target transfer: the same flow on the transposed scores
  soft = rng.normal(size=(2, g * g, g * g)).astype(np.float32)
  fx, fy = geometry.kernel_soft_argmax_flow(jnp.asarray(soft.transpose(0, 2, 1)), g, 5.0)
  dense = np.asarray(geometry.dense_source_positions(jnp.asarray(soft), img, sigma=5.0))
  np.testing.assert_allclose(dense[..., 0].reshape(2, -1), np.asarray(fx) * 64 + 64, atol=1e-4)
  np.testing.assert_allclose(dense[..., 1].reshape(2, -1), np.asarray(fy) * 64 + 64, atol=1e-4)


# ----------------------------------------------------------------------------- through the model
def _small_config(**variant):
  cfg = tiny_config()
  cfg.data.img_size = 16
  cfg.model.tap_stages = (1,)          # ResNet-50 stem + layer1: 3 taps, 4x4 grid, 256 tokens
  cfg.model.depth = 1
  cfg.model.linformer_k = 16
  cfg.model.performer_features = 16
  cfg.model.update(variant)
  return cfg


def _batch(n=2, s=16):
  rng = np.random.default_rng(20)
  return {"src_img": jnp.asarray(rng.normal(size=(n, s, s, 3)).astype(np.float32)),
          "trg_img": jnp.asarray(rng.normal(size=(n, s, s, 3)).astype(np.float32)),
          "src_kps": jnp.asarray(rng.uniform(0, s - 1, (n, 5, 2)).astype(np.float32)),
          "trg_kps": jnp.asarray(rng.uniform(0, s - 1, (n, 5, 2)).astype(np.float32)),
          "kp_mask": jnp.asarray(np.arange(5)[None] < np.array([[3], [5]]))}


# Every variant once, combined so that few models compile: (attention, position, correlation).
@pytest.mark.parametrize("variant", [
    dict(attention="performer", position="absolute", correlation="concat"),
    dict(attention="linformer", correlation="mean"),
    dict(attention="softmax", position="none")])
def test_variant_trains_and_predicts_through_the_model(variant):
  model = models.build(_small_config(**variant))
  params, state = model.init_variables(jax.random.key(0))
  batch = _batch()
  loss_and_grad = jax.jit(jax.value_and_grad(lambda p, r: model.loss_fn(p, state, batch, r)[0]))
  loss, grads = loss_and_grad(params, jax.random.key(1))
  assert np.isfinite(float(loss))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  assert np.abs(np.asarray(grads["match2match"]["to_embedding"]["kernel"])).max() > 0
  again, _ = loss_and_grad(params, jax.random.key(1))
  other, _ = loss_and_grad(params, jax.random.key(2))
  assert float(again) == float(loss)
  # only Performer's features depend on the loss rng
  assert (float(other) != float(loss)) == (variant["attention"] == "performer")
  predict = jax.jit(model.predict)
  np.testing.assert_array_equal(predict(params, state, batch), predict(params, state, batch))  # fixed eval key
  corr = jax.jit(lambda p, s, b: model.module.apply({"params": p, **s}, b["src_img"], b["trg_img"],
                                                    method=model.module.correlation))(params, state, batch)
  assert corr.shape == (2, 4, 4, 4, 4, 1 if "correlation" in variant else 3)


def test_predict_dense_is_the_soft_argmax_of_the_model_scores():
  model = models.build(_small_config())
  params, state = model.init_variables(jax.random.key(0))
  batch = _batch()
  dense = np.asarray(jax.jit(model.predict_dense)(params, state, batch))
  assert dense.shape == (2, model.grid, model.grid, 2) == (2, 8, 8, 2)
  corr_up = jax.jit(model.module.apply)({"params": params, **state}, batch["src_img"], batch["trg_img"])
  np.testing.assert_allclose(dense, geometry.dense_source_positions(corr_up, 16, 8, model.cfg.kernel_sigma),
                             atol=1e-5)
  assert dense.min() >= -1e-3 and dense.max() <= 16 + 1e-3


def test_configs_default_to_the_official_variant_and_reject_unknown_names():
  cfg = tiny_config()
  assert (cfg.model.attention, cfg.model.position, cfg.model.correlation) == ("additive", "rotary", "multi")
  legacy = tiny_config()
  for key in ("attention", "position", "correlation", "performer_features", "linformer_k",
              "max_attention_bytes", "performer_eval_seed"):
    del legacy.model[key]
  module = models.build(legacy).module
  assert (module.attention, module.position, module.correlation_mode) == ("additive", "rotary", "multi")
  for key, bad in (("attention", "flash"), ("position", "learned"), ("correlation", "sum")):
    cfg = tiny_config()
    cfg.model[key] = bad
    with pytest.raises(ValueError, match=f"config.model.{key} must be one of"):
      models.build(cfg)


def test_official_converter_refuses_other_variants():
  cfg = tiny_config()
  cfg.model.attention = "performer"
  with pytest.raises(ValueError, match="only the official variant.*performer"):
    transformatcher_from_torch({}, cfg.model)
  with pytest.raises(ValueError, match="only the official variant"):
    transformatcher_to_torch({}, cfg.model)
