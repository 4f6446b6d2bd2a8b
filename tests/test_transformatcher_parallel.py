"""TransforMatcher train steps on 8 simulated devices give the numbers of 1 device."""
from __future__ import annotations

import jax
import numpy as np

from jaxmatch import models
from jaxmatch import parallel
from jaxmatch.tasks.base import ModelOnlyTask
from jaxmatch.train import loop
from test_convert_cli import tiny_config


def _batch(cfg, n=8, seed=0):
  rng = np.random.default_rng(seed)
  s = cfg.data.img_size
  mask = np.arange(12)[None] < rng.integers(3, 13, size=(n, 1))
  return {"src_img": rng.normal(size=(n, s, s, 3)).astype(np.float32),
          "trg_img": rng.normal(size=(n, s, s, 3)).astype(np.float32),
          "src_kps": rng.uniform(0, s - 1, (n, 12, 2)).astype(np.float32),
          "trg_kps": rng.uniform(0, s - 1, (n, 12, 2)).astype(np.float32), "kp_mask": mask}


def _train(cfg, num_devices, batches):
  model = models.build(cfg)
  mesh = parallel.make_mesh(num_devices)
  state, tx = loop.init_state(ModelOnlyTask(cfg, model), cfg.train, mesh, seed=0)
  repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
  step = jax.jit(loop.make_train_step(model.loss_fn, tx), in_shardings=(repl, data, repl),
                 out_shardings=(repl, repl))
  losses = []
  for b in batches:
    state, metrics = step(state, parallel.to_global(b, mesh), jax.random.key(0))
    losses.append(float(metrics["loss"]))
  return jax.tree.map(np.asarray, state), losses


def test_eight_devices_match_one_device():
  cfg = tiny_config()
  # Exercise the whole model: trainable backbones with train-mode (global-batch) BatchNorm.
  cfg.model.freeze_backbone = False
  cfg.model.backbone_bn_train = True
  cfg.model.tap_stages = (2,)  # stem..layer2 keeps compilation short; the mechanics are the same
  cfg.train.learning_rates.backbone = 1e-2
  cfg.train.schedule = "constant"
  cfg.train.warmup_steps = 0
  # SGD, not Adam: Adam's first update is lr * sign(g), so gradient components at float-rounding level
  # (which the order of cross-device sums changes) would flip whole learning-rate steps. SGD's update is
  # linear in the gradient, so the comparison measures the sharding, not Adam's amplification.
  cfg.train.optimizer = "sgd"
  cfg.train.momentum = 0.9
  batches = [_batch(cfg, seed=i) for i in range(3)]
  one, loss1 = _train(cfg, 1, batches)
  eight, loss8 = _train(cfg, 8, batches)
  np.testing.assert_allclose(loss1, loss8, rtol=1e-5)
  # Cross-device reductions add in another order: float32 rounding, amplified where Adam divides a
  # near-zero gradient by its own magnitude; compare relative to each tensor's scale.
  for path, a in jax.tree_util.tree_leaves_with_path(one.params):
    b = eight.params
    for k in path:
      b = b[k.key]
    scale = max(np.abs(a).max(), 1e-6)
    assert np.abs(a - b).max() <= 1e-5 * scale + 2e-6, jax.tree_util.keystr(path)
  for a, b in zip(jax.tree.leaves(one.model_state), jax.tree.leaves(eight.model_state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
