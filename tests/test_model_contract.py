"""Adding a model is its own package plus one registration: a test-only model (tests/toy_model) is
registered here and then built, converted from its 'official' state_dict, and trained and evaluated
through the shared loop and the re-ID task on tiny embedded data, with no other module changed. It
consumes the camera id, so this also shows that a model's declared batch fields reach it."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from jaxmatch import convert, models
from jaxmatch.config_utils import load_common
from jaxmatch.convert.keys import CheckpointMismatchError, assert_tree_matches

from conftest import REPO, optional_import

import toy_model


@pytest.fixture
def toy_registered():
  models.register(toy_model.CONTRACT)
  yield toy_model.CONTRACT
  models.unregister(toy_model.CONTRACT.name)


def toy_config(workdir_data_ids: int = 12):
  common = load_common(str(REPO / "configs" / "baseline_market.py"), "common_reid")
  config = common.baseline_config("market1501")
  config.model = dict(name="toy_reid", dim=16, num_cameras=8, num_classes=0, pretrained="")
  config.data.num_workers = 0
  config.data.embedded.update(dict(num_train_ids=workdir_data_ids, num_test_ids=6, images_per_id=4))
  config.embedded_schedule.data.img_size = (64, 32)
  config.embedded_schedule.train.update(dict(batch_size=8, log_every=1, num_epochs=1))
  config.embedded_schedule.eval.batch_size = 8
  config.train.update(dict(num_steps=3, checkpoint_every=3))
  config.eval.update(dict(rerank=False, num_ranked_figures=0))
  return config


def official_state_dict(config, seed: int = 0) -> dict:
  c, rng = config.model, np.random.default_rng(seed)
  return {"embed.weight": rng.normal(size=(c.dim, 6)).astype(np.float32),
          "embed.bias": rng.normal(size=(c.dim,)).astype(np.float32),
          "camera.weight": rng.normal(size=(c.num_cameras, c.dim)).astype(np.float32),
          "classifier.weight": rng.normal(size=(c.num_classes, c.dim)).astype(np.float32)}


def test_registry_names_the_model_only_after_registration(toy_registered):
  assert "toy_reid" in models.names()
  models.unregister("toy_reid")
  with pytest.raises(ValueError, match="unknown config.model.name 'toy_reid'"):
    models.get_contract("toy_reid")
  models.register(toy_registered)


def test_build_and_convert_through_the_registry(toy_registered):
  config = toy_config()
  config.model.num_classes = 5
  config.data.img_size = (16, 8)
  model = models.build(config)
  params, _ = model.init_variables(jax.random.key(0))
  sd = official_state_dict(config)
  variables = convert.from_torch(config, sd)
  assert_tree_matches({"params": params}, variables)
  np.testing.assert_array_equal(variables["params"]["embed"]["kernel"], sd["embed.weight"].T)
  bad = dict(sd, **{"camera.weight": np.zeros((3, 16), np.float32)})
  with pytest.raises(CheckpointMismatchError, match="camera.weight"):
    convert.from_torch(config, bad)


def test_a_model_for_another_task_is_refused(toy_registered):
  config = toy_config()
  config.task = "correspondence"
  with pytest.raises(ValueError, match="runs under config.task='reid'"):
    models.build(config)


def test_trains_and_evaluates_through_the_shared_loop(toy_registered, tmp_path, monkeypatch):
  from jaxmatch.runner import run
  monkeypatch.setenv("JAXMATCH_DATA", str(tmp_path / "no_data_here"))
  config = toy_config()
  result = run(config, str(tmp_path / "run"), "train")
  assert result.step == 3
  final = json.load(open(tmp_path / "run" / "eval" / "final_market1501.json"))
  assert final["plain"]["num_valid_queries"] > 0 and 0 <= final["plain"]["mAP"] <= 100
  losses = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl") if "train/loss" in line]
  assert [m["step"] for m in losses] == [1, 2, 3] and all(np.isfinite(m["train/loss"]) for m in losses)
  assert os.path.isdir(tmp_path / "run" / "checkpoints" / "3")


def _parity_config():
  config = toy_config()
  config.model.num_classes = 5
  config.data.img_size = (16, 8)
  return config


def test_parity_tool_finds_the_adapter_through_the_contract(toy_registered):
  from jaxmatch.parity import run_parity
  optional_import("torch")
  report = run_parity(_parity_config(), str(REPO / "tests" / "toy_model" / "reference"), batch_size=4)
  assert report.passed, report.render()
  assert report.sensitivity is not None and report.sensitivity.complete, report.render()


def test_parity_tool_catches_a_one_percent_change_in_the_reference(toy_registered, tmp_path):
  from jaxmatch.parity import run_parity
  optional_import("torch")
  source = (REPO / "tests" / "toy_model" / "reference" / "toy_official.py").read_text()
  (tmp_path / "toy_official.py").write_text(source.replace("CAMERA_SCALE = 1.0", "CAMERA_SCALE = 1.01"))
  report = run_parity(_parity_config(), str(tmp_path), batch_size=4)
  assert not report.passed and "feature" in report.summary()


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_registered_contract_resolves(name):
  """Each dotted path a shipped contract names imports and is callable (a typo fails here, not in a run)."""
  import importlib
  contract = models.get_contract(name)
  assert contract.name == name and contract.task in ("correspondence", "reid")
  for member in ("build", "from_torch", "complete_config", "imagenet_start"):
    fn = contract.resolve(member)
    assert fn is None or callable(fn), member
  assert contract.train_fields and contract.eval_fields
  if contract.parity_adapter:
    assert importlib.import_module(contract.parity_adapter).ADAPTER.name == name
