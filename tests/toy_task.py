"""A small task for testing the shared training loop: a BatchNorm MLP regressor on a grain dataset."""
from __future__ import annotations

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

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
  unit = "examples"

  def __init__(self, poison_after: int | None = None):
    self.module = ToyNet()
    self.poison_after = poison_after
    self.evaluations = []

  def init_variables(self, rng):
    v = self.module.init(rng, jnp.zeros((2, 4)), train=False)
    return v["params"], {"batch_stats": v["batch_stats"]}

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

  def evaluate(self, params, model_state, mesh, workdir, step, tag):
    self.evaluations.append((tag, step))
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
  from jaxmatch.train import loop, parallel
  mesh = parallel.make_mesh(1)
  state, _ = loop.init_state(task, cfg.train, mesh, 0)
  manager = ckpt.make_manager(workdir, with_data=False)
  restored, _ = ckpt.restore(manager, ckpt.abstract_like(state, parallel.replicated(mesh)))
  manager.close()
  return jax.tree.map(np.asarray, restored)
