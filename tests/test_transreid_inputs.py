"""TransReID bad inputs: a timm file of another architecture, a checkpoint made for another dataset or
model than the config says, an image size or stride the patch embedding cannot use."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxmatch import convert
from jaxmatch.convert.keys import CheckpointMismatchError
from jaxmatch.convert.transreid import transreid_to_torch
from jaxmatch.models.transreid import TransReIDModel

from conftest import optional_import
from test_transreid import IMG, tiny_cfg


def _config(**model):
  return ConfigDict(dict(model=tiny_cfg(**model), data=dict(img_size=IMG), train=dict(seed=0)))


def _official_state_dict(config) -> dict:
  """An official-layout checkpoint: the live tensors plus the ones the JPM model never reads (the original
  last block and final norm, copies of b1's, as a trained official file holds them)."""
  model = TransReIDModel(config.model, img_size=IMG)
  params, state = model.init_variables(jax.random.key(0))
  sd = transreid_to_torch({"params": params, **state}, config.model, IMG)
  last = int(config.model.depth) - 1
  sd.update({k.replace("b1.0.", f"base.blocks.{last}."): v for k, v in sd.items() if k.startswith("b1.0.")})
  sd.update({k.replace("b1.1.", "base.norm."): v for k, v in sd.items() if k.startswith("b1.1.")})
  return sd


def test_a_timm_file_of_another_architecture_names_the_keys():
  timm = optional_import("timm")
  sd = {k: v.numpy() for k, v in timm.create_model("deit_tiny_patch16_224").state_dict().items()}
  config = _config()  # 32-wide, 2 blocks: the file is 192-wide with 12 blocks
  model = TransReIDModel(config.model, img_size=IMG)
  params, state = model.init_variables(jax.random.key(0))
  with pytest.raises(CheckpointMismatchError) as e:
    convert.imagenet_start(config, sd, {"params": params, **state})
  assert "cls_token" in str(e.value) and "blocks.11" in str(e.value)


def test_a_checkpoint_for_another_dataset_names_what_differs():
  sd = _official_state_dict(_config())             # 4 identities, 3 cameras
  other = _config(num_classes=7, num_cameras=5)    # the config's dataset has 7 identities, 5 cameras
  with pytest.raises(ValueError, match="another architecture / dataset") as e:
    convert.from_torch(other, sd)
  assert "num_classes: checkpoint 4, config 7" in str(e.value) and "sie_rows: checkpoint 3, config 5" in str(e.value)
  wider = _config(embed_dim=48, num_heads=2)
  with pytest.raises(ValueError, match="embed_dim: checkpoint 32, config 48"):
    convert.from_torch(wider, sd)


def test_sizes_the_checkpoint_decides_complete_the_config():
  sd = _official_state_dict(_config())
  config = _config(num_classes=0, num_cameras=0)
  convert.complete_config(config, sd)
  assert config.model.num_classes == 4 and config.model.num_cameras == 3
  variables = convert.from_torch(config, sd)
  np.testing.assert_array_equal(variables["params"]["base"]["cls_token"], sd["base.cls_token"])


@pytest.mark.parametrize("kw,size,match", [
    (dict(stride=17), IMG, "stride must be in 1..16"),
    (dict(stride=0), IMG, "stride must be in 1..16"),
    (dict(), (12, 64), "at least 16 px"),
])
def test_patch_embedding_refuses_what_it_cannot_tile(kw, size, match):
  with pytest.raises(ValueError, match=match):
    TransReIDModel(tiny_cfg(**kw), img_size=size).init_variables(jax.random.key(0))
