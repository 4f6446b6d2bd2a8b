"""TransforMatcher multi-layer correlation vs the OFFICIAL `Geometry.cosine_similarity` and the
official Match2Match forward from features (fixture transformatcher_corr).

Tolerances: the manifest's `verification.suggested_tolerances_float32_port` (quoted at each check).
"""
from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from conftest import load_fixture
from jaxmatch.convert.transformatcher import match2match_params_from_state_dict
from jaxmatch.models.transformatcher import (Match2Match, l2_normalize, multilayer_correlation,
                                             resize_bilinear_align_corners)

N_TAPS = 26
SIZE = 15
ATOL_FEAT = 5e-7    # "resized features: atol 5e-7"
ATOL_COS = 2e-6     # "corr_stacked_relu_tok, cos_prerelu: atol 2e-6"
ATOL_CORR = 1e-4    # "refined / corr_up_rows: atol 1e-4"


def close(got, ref, atol, name):
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  assert got.shape == ref.shape, f"{name}: shape {got.shape} vs {ref.shape}"
  err = np.abs(got - ref).max()
  assert err <= atol, f"{name}: max abs diff {err:.3g} > {atol}"


def nhwc(x):
  return jnp.asarray(np.transpose(x.astype(np.float32), (0, 2, 3, 1)))


@pytest.fixture(scope="module")
def fx():
  return load_fixture("transformatcher_corr")


@pytest.fixture(scope="module")
def feats(fx):
  src = [nhwc(fx[f"in/src_feat_{i:02d}"]) for i in range(N_TAPS)]
  trg = [nhwc(fx[f"in/trg_feat_{i:02d}"]) for i in range(N_TAPS)]
  return src, trg


@pytest.fixture(scope="module")
def corr(feats):
  src, trg = feats
  return np.asarray(jax.jit(lambda s, t: multilayer_correlation(s, t, SIZE))(src, trg))


def test_resized_normalized_features(fx, feats):
  src, trg = feats
  for tap in (0, 23, 24, 25):
    for side, maps in (("src", src), ("trg", trg)):
      got = resize_bilinear_align_corners(l2_normalize(maps[tap]), (SIZE, SIZE))
      close(np.transpose(np.asarray(got), (0, 3, 1, 2)), fx[f"out/{side}_feat_l2n_resized_{tap:02d}"],
            ATOL_FEAT, f"{side} tap {tap}")


def test_resize_identity_is_exact(feats):
  x = l2_normalize(feats[0][0])
  assert np.array_equal(np.asarray(resize_bilinear_align_corners(x, (SIZE, SIZE))), np.asarray(x))


def test_per_tap_cosine_prerelu(fx, corr):
  assert corr.shape == (2, SIZE, SIZE, SIZE, SIZE, N_TAPS)
  for tap in (0, 5, 23, 24):
    close(corr[..., tap], fx[f"out/cos_prerelu_{tap:02d}"], ATOL_COS, f"cos tap {tap}")


def test_stacked_relu(fx, corr):
  tokens = np.maximum(corr, 0).reshape(2, SIZE ** 4, N_TAPS)[:, fx["out/token_idx"]]
  close(np.transpose(tokens, (0, 2, 1)), fx["out/corr_stacked_relu_tok"], ATOL_COS,
        "corr_stacked_relu_tok")


def test_match2match_from_features(fx, feats):
  """Features -> correlation -> Match2Match end to end (official weights, same as the head fixture)."""
  sd = {k[len("sd/"):]: v for k, v in fx.items() if k.startswith("sd/")}
  variables = match2match_params_from_state_dict(sd)
  model = Match2Match()

  @jax.jit
  def run(variables, src, trg):
    return model.apply(variables, multilayer_correlation(src, trg, SIZE))

  refined, corr_up = run(variables, *feats)
  close(refined, fx["out/refined"], ATOL_CORR, "refined")
  close(np.asarray(corr_up)[:, fx["out/rows_idx"]], fx["out/corr_up_rows"], ATOL_CORR,
        "corr_up_rows")
