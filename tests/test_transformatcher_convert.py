"""Official TransforMatcher match2match keys -> Match2Match params: every key accounted for, and a
checkpoint that does not fit raises an error naming the offending key."""
from __future__ import annotations

import json

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from conftest import SHARED, require_file
from jaxmatch.convert.keys import CheckpointMismatchError, KeyAccountant
from jaxmatch.convert.transformatcher import (FREQS_REASON, POSENC_REASON, match2match_from_torch,
                                              match2match_params_from_state_dict,
                                              match2match_tensors)
from jaxmatch.models.transformatcher import Match2Match
from jaxmatch.models.transformatcher.rotary import ROTARY_FREQS

PREFIX = "match2match."


@pytest.fixture(scope="module")
def official_shapes():
  path = require_file(SHARED / "reference" / "transformatcher_state_dict.json")
  shapes = json.loads(path.read_text())
  return {k: tuple(v) for k, v in shapes.items() if k.startswith(PREFIX)}


def make_state_dict(shapes, seed=0):
  rng = np.random.default_rng(seed)
  sd = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
  for k in sd:
    if k.endswith("pos_emb.freqs"):
      sd[k] = ROTARY_FREQS.copy()
  return sd


def test_every_official_key_accounted(official_shapes):
  assert len(official_shapes) == 101
  sd = make_state_dict(official_shapes)
  acc = KeyAccountant(sd)
  variables = match2match_from_torch(acc)
  acc.finish()   # nothing missing, unexpected or mis-shaped
  assert acc.ignored[PREFIX + "posenc"] == POSENC_REASON
  freqs = [k for k in official_shapes if k.endswith("pos_emb.freqs")]
  assert len(freqs) == 6 and all(acc.ignored[k] == FREQS_REASON for k in freqs)
  mapped = {t.torch_key for t in match2match_tensors()}
  assert mapped | {PREFIX + "posenc"} | set(freqs) == set(official_shapes)

  # the tree has exactly Match2Match's parameter structure and shapes, values transposed
  model = Match2Match()
  ref = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 3, 3, 3, 3, 26)))
  got_shapes = jax.tree.map(lambda x: x.shape, variables)
  assert got_shapes == jax.tree.map(lambda x: x.shape, ref)
  p = variables["params"]
  np.testing.assert_array_equal(p["block_2"]["attn"]["to_qkv"]["kernel"],
                                sd[PREFIX + "trans_nc.2.0.fn.to_qkv.weight"].T)
  np.testing.assert_array_equal(p["block_5"]["norm_mlp"]["scale"],
                                sd[PREFIX + "trans_nc.5.1.norm.weight"])
  np.testing.assert_array_equal(p["block_0"]["mlp_fc2"]["bias"], sd[PREFIX + "trans_nc.0.1.fn.2.bias"])


@pytest.mark.parametrize("corruption", ["missing", "extra", "misshaped"])
def test_corrupted_state_dict_names_key(official_shapes, corruption):
  sd = make_state_dict(official_shapes)
  key = PREFIX + "trans_nc.3.0.fn.to_r.weight"
  if corruption == "missing":
    del sd[key]
  elif corruption == "extra":
    key = PREFIX + "trans_nc.6.0.fn.to_r.weight"
    sd[key] = np.zeros((4, 2), np.float32)
  else:
    sd[key] = np.zeros((2, 4), np.float32)
  with pytest.raises(CheckpointMismatchError, match=key.replace(".", r"\.")):
    match2match_params_from_state_dict(sd)


def test_wrong_rotary_freqs_raise(official_shapes):
  sd = make_state_dict(official_shapes)
  key = PREFIX + "trans_nc.4.0.fn.pos_emb.freqs"
  sd[key] = np.array([np.pi, 5 * np.pi], np.float32)   # float32(5*pi): one ulp below the code's
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    match2match_params_from_state_dict(sd)
