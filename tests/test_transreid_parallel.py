"""A TransReID train step (SIE, JPM, BNNeck BatchNorm over the global batch, batch-hard triplet mining,
SGD with the bias group) on 8 simulated devices gives the numbers of 1 device.

One step is compared: at a random start the features of different images are nearly equal, so batch-hard
mining picks its hardest negative among distances that differ by float32 rounding; the cross-device sum
order can flip that pick on a later step, which changes the gradient discontinuously (a property of
batch-hard mining on any hardware, not of the sharding)."""
from __future__ import annotations

import jax
import numpy as np
from ml_collections import ConfigDict

from jaxmatch import parallel
from jaxmatch.models.transreid import TransReIDModel
from jaxmatch.tasks.base import ModelOnlyTask
from jaxmatch.train import loop

from test_transreid import IMG, tiny_cfg


def _train_cfg() -> ConfigDict:
  return ConfigDict(dict(optimizer="sgd", momentum=0.9, weight_decay=1e-4, b1=0.9, b2=0.999, eps=1e-8,
                         grad_clip_norm=0.0, schedule="constant", warmup_steps=0, milestones=(), gamma=0.1,
                         learning_rates=dict(base=0.005, bias=0.01), group_overrides=dict(bias=dict())))


def _batches(n=8, steps=1):
  rng = np.random.default_rng(0)
  for _ in range(steps):
    yield {"image": rng.uniform(-1, 1, (n,) + IMG + (3,)).astype(np.float32),
           "label": np.repeat(np.arange(n // 2), 2).astype(np.int32),
           "camera": rng.integers(0, 3, n).astype(np.int32), "view": np.zeros(n, np.int32)}


def _train(num_devices: int):
  cfg = ConfigDict(dict(model=tiny_cfg(drop_path=0.0), train=_train_cfg()))
  model = TransReIDModel(cfg.model, img_size=IMG)
  mesh = parallel.make_mesh(num_devices)
  state, tx = loop.init_state(ModelOnlyTask(cfg, model), cfg.train, mesh, seed=0)
  repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
  step = jax.jit(loop.make_train_step(model.loss_fn, tx), in_shardings=(repl, data, repl),
                 out_shardings=(repl, repl))
  losses = []
  for b in _batches():
    state, metrics = step(state, parallel.to_global(b, mesh), jax.random.key(0))
    losses.append((float(metrics["loss"]), float(metrics["grad_norm"])))
  return jax.tree.map(np.asarray, state), losses


def test_eight_devices_match_one_device():
  one, loss1 = _train(1)
  eight, loss8 = _train(8)
  np.testing.assert_allclose(loss1, loss8, rtol=1e-5)  # loss and gradient norm
  # Cross-device sums add in another order: float32 rounding, compared relative to each tensor's scale.
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(one.params), jax.tree.leaves(eight.params)):
    assert np.abs(a - b).max() <= 1e-6 * max(np.abs(a).max(), 1e-6) + 1e-7, jax.tree_util.keystr(path)
  for a, b in zip(jax.tree.leaves(one.model_state), jax.tree.leaves(eight.model_state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
