"""The shared loop: 8 devices = 1 device, exact resume after interruption, non-finite stop, LR groups."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from jaxmatch.train import loop
from toy_task import ToyTask, params_of, toy_config


def _leaves_close(a, b, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


def test_eight_devices_equal_one(tmp_path):
  assert jax.device_count() == 8
  one = loop.train_and_evaluate(toy_config(num_devices=1), str(tmp_path / "one"), ToyTask())
  eight = loop.train_and_evaluate(toy_config(num_devices=8), str(tmp_path / "eight"), ToyTask())
  assert one.step == eight.step == 6
  a = params_of(str(tmp_path / "one"), toy_config(), ToyTask())
  b = params_of(str(tmp_path / "eight"), toy_config(), ToyTask())
  # Same maths; only the order of the cross-device reductions differs (float32 rounding).
  _leaves_close(a.params, b.params, atol=1e-6)
  _leaves_close(a.model_state, b.model_state, atol=1e-6)  # BatchNorm saw the global batch on 8 devices


class _Interrupt(Exception):
  pass


def test_interrupted_run_resumes_exactly(tmp_path):
  full = str(tmp_path / "full")
  loop.train_and_evaluate(toy_config(), full, ToyTask())

  cut = str(tmp_path / "cut")

  def die_after_5(step):  # checkpoint at 4 exists; step 5 is lost and must be redone identically
    if step == 5:
      raise _Interrupt()

  with pytest.raises(_Interrupt):
    loop.train_and_evaluate(toy_config(), cut, ToyTask(), after_step=die_after_5)
  task = ToyTask()
  result = loop.train_and_evaluate(toy_config(), cut, task)
  assert result.step == 6
  assert ("before", 0) not in task.evaluations  # a resumed run does not re-evaluate the fresh model
  a, b = params_of(full, toy_config(), ToyTask()), params_of(cut, toy_config(), ToyTask())
  assert int(a.step) == int(b.step) == 6
  _leaves_close(a.params, b.params, atol=0)
  _leaves_close(a.opt_state, b.opt_state, atol=0)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / "nan")
  task = ToyTask(poison_after=3)  # the 4th batch has NaN targets
  with pytest.raises(loop.NonFiniteError, match="non-finite training step 4"):
    loop.train_and_evaluate(toy_config(), workdir, task)
  restored = params_of(workdir, toy_config(), ToyTask())
  assert int(restored.step) == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored.params))


def test_learning_rate_groups_and_frozen_group(tmp_path):
  cfg = toy_config(num_steps=2)
  cfg.train.learning_rates.backbone = 0.0
  workdir = str(tmp_path / "frozen")
  loop.train_and_evaluate(cfg, workdir, ToyTask())
  state = params_of(workdir, cfg, ToyTask())
  init_params, _ = ToyTask().init_variables(jax.random.key(0))
  _leaves_close(state.params["backbone"], init_params["backbone"], atol=0)
  assert not np.allclose(state.params["head"]["kernel"], np.asarray(init_params["head"]["kernel"]))


def test_metrics_written(tmp_path):
  workdir = str(tmp_path / "m")
  loop.train_and_evaluate(toy_config(num_steps=2), workdir, ToyTask())
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train = [l for l in lines if "train/loss" in l]
  assert [l["step"] for l in train] == [1, 2] and all(np.isfinite(l["train/loss"]) for l in train)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tensorboard")))
  assert json.load(open(os.path.join(workdir, "config.json")))["train"]["num_steps"] == 2
