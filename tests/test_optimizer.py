"""Optimizer pieces the re-ID recipes need: the baseline's epoch-stepped warmup schedule, TransReID's
epoch-stepped cosine, torch-style coupled L2 weight decay, and per-group overrides (the centre-loss
centres' own SGD, TransReID's bias group)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from ml_collections import ConfigDict

from conftest import optional_import
from jaxmatch.train.state import (cosine_warmup_by_epoch, label_by_prefix, make_optimizer,
                                    relabel_by_name, warmup_multistep_by_epoch)


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


# TransReID (reference/transreid.md, section 7): BASE_LR 0.008, bias groups 2x, 120 epochs, 5 warmup.
TRANSREID = dict(num_epochs=120, warmup_epochs=5, warmup_lr=8e-5, min_lr=1.6e-5)


def _timm_cosine_lrs(base_lrs, epochs):
  """Per-group lr of timm's own CosineLRScheduler after step(e), for e in `epochs`."""
  scheduler = optional_import("timm.scheduler")
  params = [torch.nn.Parameter(torch.zeros(1)) for _ in base_lrs]
  opt = torch.optim.SGD([dict(params=[p], lr=lr) for p, lr in zip(params, base_lrs)], lr=base_lrs[0])
  # TransReID's arguments; timm 1.0's defaults for the rest (warmup_prefix=False: t is not shifted by the
  # warmup; cycle_limit=1: lr_min from t_initial on; no noise, k_decay 1) are what timm 0.3 did with them.
  sched = scheduler.CosineLRScheduler(opt, t_initial=120, lr_min=1.6e-5, warmup_t=5, warmup_lr_init=8e-5,
                                      t_in_epochs=True, warmup_prefix=False, cycle_limit=1, cycle_mul=1.0)
  assert all(g["lr"] == 8e-5 for g in opt.param_groups)   # before the first step
  out = {}
  for e in epochs:
    sched.step(e)
    out[e] = [g["lr"] for g in opt.param_groups]
  return out


def test_cosine_warmup_matches_transreid_measured_lrs_and_timm():
  steps = 3
  weights = cosine_warmup_by_epoch(0.008, steps, **TRANSREID)
  biases = cosine_warmup_by_epoch(0.016, steps, **TRANSREID)
  measured = {1: (1.664e-3, 3.264e-3), 2: (3.248e-3, 6.448e-3), 4: (6.416e-3, 1.2816e-2),
              5: (7.9659e-3, 1.59316e-2), 30: (6.8308e-3, None), 60: (4.008e-3, None),
              90: (1.1852e-3, None), 119: (1.7368e-5, None), 120: (1.6e-5, None)}
  timm_lrs = _timm_cosine_lrs([0.008, 0.016], range(1, 121))
  for epoch in range(1, 121):
    for step in ((epoch - 1) * steps, epoch * steps - 1):      # epoch e (1-based) trains at index e
      got = float(weights(step)), float(biases(step))
      np.testing.assert_allclose(got, timm_lrs[epoch], rtol=1e-6, err_msg=f"epoch {epoch}")
      if epoch in measured:
        w, b = measured[epoch]
        np.testing.assert_allclose(got[0], w, rtol=1e-4)
        if b is not None:
          np.testing.assert_allclose(got[1], b, rtol=1e-4)
  assert float(weights(10**6)) == pytest.approx(1.6e-5)       # held at lr_min past the last epoch


def _transreid_cfg(**kw) -> ConfigDict:
  return _train_cfg(optimizer="sgd", momentum=0.9, weight_decay=1e-4,
                    learning_rates=dict(weights=0.008, bias=0.016),
                    group_overrides=dict(bias=dict(weight_decay=1e-4)), **kw)   # WEIGHT_DECAY_BIAS


def test_bias_group_by_name_leaves_frozen_alone():
  params = {"stem": {"kernel": 1, "bias": 2}, "norm": {"scale": 3, "bias": 4}, "frozen_bn": {"bias": 5}}
  labels = label_by_prefix(params, {"frozen_bn": "frozen"}, "weights")
  assert relabel_by_name(labels, "bias", "bias") == {
      "stem": {"kernel": "weights", "bias": "bias"}, "norm": {"scale": "weights", "bias": "bias"},
      "frozen_bn": {"bias": "frozen"}}


@pytest.mark.parametrize("schedule", ["constant", "cosine_warmup_epochs"])
def test_transreid_sgd_groups_match_torch(schedule):
  """SGD momentum 0.9, coupled wd 1e-4 on every tensor, 2x lr for biases; with the cosine, the torch side
  steps timm's scheduler at the start of each epoch as TransReID's loop does."""
  rng = np.random.default_rng(1)
  shapes = {"conv": {"kernel": (3, 4), "bias": (4,)}, "norm": {"scale": (4,), "bias": (4,)}}
  init = {m: {k: rng.normal(size=s).astype(np.float32) for k, s in d.items()} for m, d in shapes.items()}
  steps_per_epoch, epochs = 2, 3
  grads = [{m: {k: rng.normal(size=s).astype(np.float32) for k, s in d.items()} for m, d in shapes.items()}
           for _ in range(steps_per_epoch * epochs)]
  labels = relabel_by_name(label_by_prefix(init, {}, "weights"), "bias", "bias")
  cfg = _transreid_cfg(schedule=schedule, **TRANSREID)
  tx = make_optimizer(cfg, labels, total_steps=len(grads), steps_per_epoch=steps_per_epoch)
  params = jax.tree.map(jnp.asarray, init)
  state = tx.init(params)

  tparams = {(m, k): torch.nn.Parameter(torch.from_numpy(v.copy())) for m, d in init.items() for k, v in d.items()}
  groups = [dict(params=[p], lr=0.016 if k == "bias" else 0.008, weight_decay=1e-4)
            for (m, k), p in tparams.items()]
  topt = torch.optim.SGD(groups, lr=0.008, momentum=0.9, weight_decay=1e-4, nesterov=False)
  sched = None
  if schedule != "constant":
    sched = optional_import("timm.scheduler").CosineLRScheduler(
        topt, t_initial=120, lr_min=1.6e-5, warmup_t=5, warmup_lr_init=8e-5, t_in_epochs=True)
  for i, g in enumerate(grads):
    if sched is not None and i % steps_per_epoch == 0:
      sched.step(i // steps_per_epoch + 1)
    updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, params)
    params = optax.apply_updates(params, updates)
    for (m, k), p in tparams.items():
      p.grad = torch.from_numpy(g[m][k].copy())
    topt.step()
  for (m, k), p in tparams.items():
    ours, theirs = np.asarray(params[m][k]), p.detach().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6, err_msg=f"{m}.{k}")
    # The moves themselves agree to float32 rounding, far below the decay's share (~1e-5) of them.
    np.testing.assert_allclose(ours - init[m][k], theirs - init[m][k], rtol=0, atol=3e-7, err_msg=f"{m}.{k}")
