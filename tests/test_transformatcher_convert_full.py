"""Whole official TransforMatcher checkpoints: every key accounted for, halves to streams, clear errors."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from conftest import REPO, SHARED, require_file
from jaxmatch.config_utils import load_config
from jaxmatch import convert, models
from jaxmatch.convert.keys import CheckpointMismatchError
from jaxmatch.models.transformatcher.rotary import ROTARY_FREQS


def _recipe(arg=None):
  return load_config(str(REPO / "configs" / "transformatcher_spair.py") + (f":{arg}" if arg else ""))


def official_like_state_dict(seed: int = 0) -> dict:
  """Random tensors with every official key and shape (reference/transformatcher_state_dict.json)."""
  path = require_file(SHARED / "reference" / "transformatcher_state_dict.json")
  listing = json.loads(path.read_text())
  entries = listing.get("tensors", listing) if isinstance(listing, dict) else listing
  rng = np.random.default_rng(seed)
  sd = {}
  for key, meta in _iter_entries(entries):
    shape = tuple(meta["shape"] if isinstance(meta, dict) else meta)
    if key.endswith("num_batches_tracked"):
      sd[key] = np.array(3, np.int64)
    elif key.endswith("pos_emb.freqs"):
      sd[key] = ROTARY_FREQS.copy()
    elif key.endswith("running_var"):
      sd[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      sd[key] = rng.normal(size=shape).astype(np.float32)
  return sd


def _iter_entries(entries):
  if isinstance(entries, dict):
    yield from entries.items()
  else:
    for e in entries:
      yield e["name"] if "name" in e else e["key"], e


@pytest.fixture(scope="module")
def converted():
  config = _recipe()
  sd = official_like_state_dict()
  return config, sd, convert.from_torch(config, sd)


def test_every_official_key_is_mapped_or_ignored(converted):
  config, sd, variables = converted
  assert len(sd) == 727
  model = models.build(config)
  params, model_state = jax.eval_shape(model.init_variables, jax.random.key(0))
  convert.assert_tree_matches({"params": params, **model_state}, variables)


def test_doubled_backbone_halves_become_two_streams(converted):
  _, sd, variables = converted
  w = sd["backbone.layer3.7.conv2.weight"]  # [2*256, 256, 3, 3]
  src = variables["params"]["source_backbone"]["layer3_7"]["conv2"]["kernel"]
  trg = variables["params"]["target_backbone"]["layer3_7"]["conv2"]["kernel"]
  np.testing.assert_array_equal(src, np.transpose(w[:256], (2, 3, 1, 0)))
  np.testing.assert_array_equal(trg, np.transpose(w[256:], (2, 3, 1, 0)))
  mean = sd["backbone.layer4.2.bn3.running_mean"]
  np.testing.assert_array_equal(variables["batch_stats"]["target_backbone"]["layer4_2"]["bn3"]["mean"],
                                mean[2048:])


def test_mismatched_checkpoint_names_every_problem():
  config = _recipe()
  sd = official_like_state_dict()
  del sd["match2match.trans_nc.3.1.fn.0.bias"]
  sd["backbone.layer1.0.conv1.weight"] = sd["backbone.layer1.0.conv1.weight"][:, :32]
  sd["match2match.extra_thing"] = np.zeros(3, np.float32)
  with pytest.raises(CheckpointMismatchError) as err:
    convert.from_torch(config, sd)
  text = str(err.value)
  assert "match2match.trans_nc.3.1.fn.0.bias" in text
  assert "backbone.layer1.0.conv1.weight" in text and "wrong shape" in text
  assert "match2match.extra_thing" in text and "unexpected" in text


def test_dataparallel_prefix_is_stripped(converted):
  config, sd, variables = converted
  wrapped = convert.from_torch(config, {f"module.{k}": v for k, v in sd.items()})
  np.testing.assert_array_equal(wrapped["params"]["match2match"]["to_original"]["kernel"],
                                variables["params"]["match2match"]["to_original"]["kernel"])
