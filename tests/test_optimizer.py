"""Optimizer pieces the re-ID recipes need: the baseline's epoch-stepped warmup schedule, torch-style
coupled L2 weight decay, and per-group overrides (the centre-loss centres' own SGD)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from ml_collections import ConfigDict

from jaxmatch.train.state import make_optimizer, warmup_multistep_by_epoch


def _train_cfg(**kw) -> ConfigDict:
  base = dict(optimizer="adam", b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, momentum=0.0,
              grad_clip_norm=0.0, schedule="constant", warmup_steps=0, milestones=(), gamma=0.1,
              learning_rates=dict(head=1e-3), group_overrides={})
  base.update(kw)
  return ConfigDict(base)


def test_warmup_multistep_matches_the_measured_baseline_learning_rates():
  # Values measured from the official scheduler (reference/nformer.md, section 7.1), per 1-based epoch.
  sched = warmup_multistep_by_epoch(3.5e-4, steps_per_epoch=7, milestones=(40, 70), gamma=0.1,
                                    warmup_epochs=10, warmup_factor=0.01)
  measured = {1: 3.815e-5, 5: 1.7675e-4, 9: 3.1535e-4, 10: 3.5e-4, 39: 3.5e-4, 40: 3.5e-5, 69: 3.5e-5,
              70: 3.5e-6, 120: 3.5e-6}
  for epoch, lr in measured.items():
    for step in ((epoch - 1) * 7, epoch * 7 - 1):   # constant within an epoch
      np.testing.assert_allclose(float(sched(step)), lr, rtol=1e-5)


def test_schedule_by_epoch_needs_steps_per_epoch():
  cfg = _train_cfg(schedule="warmup_multistep_epochs", milestones=(2,), warmup_epochs=1, warmup_factor=0.1)
  with pytest.raises(ValueError, match="steps per epoch"):
    make_optimizer(cfg, {"w": "head"}, total_steps=10)


def test_adam_weight_decay_is_coupled_l2_like_torch():
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(5, 3)).astype(np.float32)
  grads = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(4)]
  tx = make_optimizer(_train_cfg(weight_decay=5e-4, learning_rates=dict(head=3.5e-4)), {"w": "head"})
  params = {"w": jnp.asarray(w0)}
  state = tx.init(params)
  tw = torch.nn.Parameter(torch.from_numpy(w0.copy()))
  topt = torch.optim.Adam([tw], lr=3.5e-4, weight_decay=5e-4)
  for g in grads:
    updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
    tw.grad = torch.from_numpy(g.copy())
    topt.step()
  np.testing.assert_allclose(np.asarray(params["w"]), tw.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_group_override_gives_the_centres_their_own_rescaled_sgd():
  cfg = _train_cfg(weight_decay=5e-4, learning_rates=dict(head=1e-3, centers=0.5),
                   group_overrides=dict(centers=dict(optimizer="sgd", weight_decay=0.0, grad_scale=2000.0)))
  labels = {"w": "head", "c": "centers"}
  params = {"w": jnp.ones(3), "c": jnp.ones(2)}
  tx = make_optimizer(cfg, labels)
  g = {"w": jnp.zeros(3), "c": jnp.full(2, 1e-4)}
  updates, _ = tx.update(g, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["c"]), -0.5 * 2000.0 * 1e-4, rtol=1e-6)
  assert np.all(np.asarray(updates["w"]) < 0)  # Adam on the L2 term alone moves the head weights


def test_unknown_override_field_is_named():
  cfg = _train_cfg(learning_rates=dict(head=1e-3), group_overrides=dict(head=dict(momentun=0.9)))
  with pytest.raises(ValueError, match="momentun"):
    make_optimizer(cfg, {"w": "head"})


def test_frozen_leaves_get_no_update_and_need_no_learning_rate():
  cfg = _train_cfg(weight_decay=5e-4, learning_rates=dict(head=1e-3))
  params = {"w": jnp.ones(3), "shift": jnp.full(2, 0.7)}   # a non-zero frozen value: decay must not act
  tx = make_optimizer(cfg, {"w": "head", "shift": "frozen"})
  updates, _ = tx.update({"w": jnp.ones(3), "shift": jnp.ones(2)}, tx.init(params), params)
  np.testing.assert_array_equal(np.asarray(updates["shift"]), 0.0)
  assert np.all(np.asarray(updates["w"]) < 0)
