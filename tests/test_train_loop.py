"""The shared loop: 8 devices = 1 device, exact resume after interruption, non-finite stop, LR groups.

The task here is small on purpose (a BatchNorm MLP regressor on a grain dataset) so these tests measure the
loop itself; the TransforMatcher-specific versions live in test_cli.py and test_transformatcher_parallel.py.
"""
from __future__ import annotations

import json
import os

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxmatch.train import loop
from jaxmatch.train.state import label_by_prefix


class ToyNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    # No bias before BatchNorm: its gradient is analytically zero and Adam would amplify rounding noise.
    x = nn.Dense(16, use_bias=False, name="backbone")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
    return nn.Dense(1, name="head")(nn.relu(x))[..., 0]


class _Records(grain.MapDataset):
  """Deterministic regression records; each batch is drawn from an epoch-dependent permutation."""

  def __init__(self, n: int, batch: int, seed: int, poison_after: int | None):
    super().__init__()
    rng = np.random.default_rng(123)
    self._x = rng.normal(size=(n, 4)).astype(np.float32)
    self._y = (self._x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32)).astype(np.float32)
    self._n, self._batch, self._seed, self._poison = n, batch, seed, poison_after

  def __len__(self):
    return 10 ** 6

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    per_epoch = self._n // self._batch
    epoch, pos = divmod(index, per_epoch)
    order = np.random.default_rng([self._seed, epoch]).permutation(self._n)
    idx = order[pos * self._batch:(pos + 1) * self._batch]
    y = self._y[idx].copy()
    if self._poison is not None and index >= self._poison:
      y[:] = np.nan
    return {"x": self._x[idx], "y": y}


class ToyTask:
  """Implements every member of jaxmatch.train.task.Task itself (no ModelTask base)."""
  unit = "examples"
  steps_per_epoch = None

  def __init__(self, poison_after: int | None = None):
    self.module = ToyNet()
    self.poison_after = poison_after
    self.evaluations = []

  def init_variables(self, rng):
    v = self.module.init(rng, jnp.zeros((2, 4)), train=False)
    return v["params"], {"batch_stats": v["batch_stats"]}

  def load_pretrained(self, params, model_state):
    return params, model_state

  def param_labels(self, params):
    return label_by_prefix(params, {"backbone": "backbone"}, default="head")

  def loss_fn(self, params, model_state, batch, rng):
    pred, updates = self.module.apply({"params": params, **model_state}, batch["x"], train=True,
                                      mutable=["batch_stats"])
    loss = jnp.mean((pred - batch["y"]) ** 2)
    return loss, (dict(updates), {"mae": jnp.mean(jnp.abs(pred - batch["y"]))})

  @staticmethod
  def train_inputs(batch):
    return batch

  def train_iterator(self, batch_size, seed, shard_index=0, shard_count=1):
    return iter(_Records(64, batch_size, seed, self.poison_after).to_iter_dataset())

  def num_train_steps(self, tcfg):
    return tcfg.num_steps

  def evaluate(self, params, model_state, mesh, workdir, step, tag, periodic=False):
    self.evaluations.append((tag, step, periodic))
    return {"step_seen": float(step)}


def toy_config(**train) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict()
  cfg.model = ml_collections.ConfigDict({"name": "toy"})
  cfg.train = ml_collections.ConfigDict(dict(
      batch_size=16, num_steps=6, seed=0, optimizer="adam", b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
      momentum=0.0, grad_clip_norm=0.0, learning_rates=ml_collections.ConfigDict({"head": 1e-2, "backbone": 1e-3}),
      log_every=1, checkpoint_every=2, keep_checkpoints=3, eval_every=0, eval_before_training=True,
      num_devices=0, tensorboard=True))
  cfg.train.update(train)
  return cfg


def params_of(workdir: str, cfg, task) -> dict:
  """Restores the latest checkpoint's state as numpy."""
  from jaxmatch.train import checkpoint as ckpt
  from jaxmatch import parallel
  from jaxmatch.train import loop
  mesh = parallel.make_mesh(1)
  state, _ = loop.init_state(task, cfg.train, mesh, 0)
  manager = ckpt.make_manager(workdir, with_data=False)
  restored, _ = ckpt.restore(manager, ckpt.abstract_like(state, parallel.replicated(mesh)))
  manager.close()
  return jax.tree.map(np.asarray, restored)


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
  assert [e for e in task.evaluations if e[0] == "before"] == []  # a resumed run skips the fresh-model eval
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


def test_periodic_evaluation_is_marked_for_the_validation_split(tmp_path):
  task = ToyTask()
  loop.train_and_evaluate(toy_config(num_steps=4, eval_every=2), str(tmp_path / "v"), task)
  assert task.evaluations == [("before", 0, False), ("step2", 2, True), ("final", 4, False)]


def test_metrics_written(tmp_path):
  workdir = str(tmp_path / "m")
  loop.train_and_evaluate(toy_config(num_steps=2), workdir, ToyTask())
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train = [l for l in lines if "train/loss" in l]
  assert [l["step"] for l in train] == [1, 2] and all(np.isfinite(l["train/loss"]) for l in train)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tensorboard")))
  assert json.load(open(os.path.join(workdir, "config.json")))["train"]["num_steps"] == 2
