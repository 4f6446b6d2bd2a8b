"""Train state and optimizer: Adam/AdamW/SGD per parameter group (optax.multi_transform)."""
from __future__ import annotations

import math
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from jaxmatch.param_groups import FROZEN


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. `model_state` holds non-trainable collections (e.g. batch_stats)."""
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any


def warmup_multistep_by_epoch(base_lr: float, steps_per_epoch: int, milestones, gamma: float,
                              warmup_epochs: int, warmup_factor: float) -> optax.Schedule:
  """The re-ID strong baseline's WarmupMultiStepLR, stepped once per epoch.

  The official loop calls scheduler.step() at the start of every epoch, so the first epoch already runs at
  epoch index e = 1: lr(e) = base * w(e) * gamma ** #(milestones <= e), with the linear warmup
  w(e) = factor + (1 - factor) * e / warmup_epochs for e < warmup_epochs, else 1.
  """
  milestones = jnp.asarray(sorted(int(m) for m in milestones) or [2**30], jnp.int32)

  def schedule(step):
    epoch = step // max(1, steps_per_epoch) + 1
    warm = jnp.where(epoch < warmup_epochs,
                     warmup_factor + (1.0 - warmup_factor) * epoch / max(1, warmup_epochs), 1.0)
    decays = jnp.sum(milestones <= epoch)
    return base_lr * warm * jnp.power(gamma, decays)

  return schedule


def cosine_warmup_epoch_lr(epoch: int, base_lr: float, num_epochs: int, warmup_epochs: int,
                           warmup_lr: float, min_lr: float) -> float:
  """timm's CosineLRScheduler (one cycle, no warmup prefix, no noise) at epoch index `epoch`.

  Linear warmup from the absolute warmup_lr for epoch < warmup_epochs; then the cosine over the whole run
  (t is not shifted by the warmup) down to the absolute min_lr, held from num_epochs on. warmup_lr and
  min_lr are the same for every group, whatever its base lr (TransReID's bias group included).
  """
  if epoch < warmup_epochs:
    return warmup_lr + epoch * (base_lr - warmup_lr) / warmup_epochs
  if epoch >= num_epochs:
    return min_lr
  # 0.5 (1 + cos x) written as cos^2(x / 2): exact near the end of the run, where 1 + cos x cancels.
  return min_lr + (base_lr - min_lr) * math.cos(math.pi * epoch / (2 * num_epochs)) ** 2


def cosine_warmup_by_epoch(base_lr: float, steps_per_epoch: int, num_epochs: int, warmup_epochs: int,
                           warmup_lr: float, min_lr: float) -> optax.Schedule:
  """TransReID's schedule, stepped once per epoch: as in the baseline, scheduler.step(epoch) runs at the start
  of every epoch, so the first epoch already trains at epoch index 1 (the warmup_lr the groups hold before
  that first step never drives an update)."""
  if num_epochs < 1:
    raise ValueError(f"schedule 'cosine_warmup_epochs' needs num_epochs >= 1, got {num_epochs}")
  table = jnp.asarray([cosine_warmup_epoch_lr(e, base_lr, num_epochs, warmup_epochs, warmup_lr, min_lr)
                       for e in range(num_epochs + 1)], jnp.float32)   # float64 values, rounded once

  def schedule(step):
    epoch = step // max(1, steps_per_epoch) + 1
    return table[jnp.minimum(epoch, num_epochs)]

  return schedule


def learning_rate_schedule(cfg: ConfigDict, base_lr: float, total_steps: int,
                           steps_per_epoch: int | None = None) -> optax.Schedule:
  """config.train.schedule: 'constant' (the TransforMatcher code), 'cosine' or 'multistep', with optional
  linear warmup (config.train.warmup_steps) from 0; or, counted in epochs of `steps_per_epoch` steps,
  'warmup_multistep_epochs' (the re-ID baseline: milestones, warmup_epochs, warmup_factor) or
  'cosine_warmup_epochs' (TransReID: num_epochs, warmup_epochs, and the absolute warmup_lr and min_lr)."""
  kind = cfg.get("schedule", "constant")
  if kind.endswith("_epochs") and not steps_per_epoch:
    raise ValueError(f"schedule {kind!r} needs the task's steps per epoch")
  if kind == "cosine_warmup_epochs":
    num_epochs = int(cfg.get("num_epochs", 0)) or total_steps // steps_per_epoch
    return cosine_warmup_by_epoch(base_lr, steps_per_epoch, num_epochs, int(cfg.get("warmup_epochs", 0)),
                                  float(cfg.get("warmup_lr", 0.0)), float(cfg.get("min_lr", 0.0)))
  if kind == "warmup_multistep_epochs":
    return warmup_multistep_by_epoch(base_lr, steps_per_epoch, cfg.milestones, float(cfg.get("gamma", 0.1)),
                                     int(cfg.get("warmup_epochs", 0)), float(cfg.get("warmup_factor", 0.01)))
  warmup = int(cfg.get("warmup_steps", 0))
  if kind == "constant":
    main = optax.constant_schedule(base_lr)
  elif kind == "cosine":
    main = optax.cosine_decay_schedule(base_lr, max(1, total_steps - warmup))
  elif kind == "multistep":
    main = optax.piecewise_constant_schedule(
        base_lr, {int(m) - warmup: float(cfg.get("gamma", 0.1)) for m in cfg.milestones})
  else:
    raise ValueError(f"unknown config.train.schedule {kind!r}: expected constant, cosine, multistep, "
                     "warmup_multistep_epochs or cosine_warmup_epochs")
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, base_lr, warmup), main], [warmup])


GROUP_ONLY_FIELDS = ("grad_scale",)  # meaningful per group only


def _group_config(cfg: ConfigDict, group: str) -> ConfigDict:
  """config.train with config.train.group_overrides[group] applied (e.g. the center-loss centres' own SGD)."""
  overrides = cfg.get("group_overrides") or {}
  if group not in overrides:
    return cfg
  merged = ConfigDict(cfg.to_dict())
  for key, value in dict(overrides[group]).items():
    if key not in merged and key not in GROUP_ONLY_FIELDS:
      raise ValueError(f"config.train.group_overrides.{group}.{key}: not a config.train field")
    merged[key] = value
  return merged


def _group_optimizer(cfg: ConfigDict, lr: float, total_steps: int,
                     steps_per_epoch: int | None = None) -> optax.GradientTransformation:
  """weight_decay is decoupled for adamw and coupled L2 (added to the gradient, as torch's Adam/SGD do)
  otherwise; grad_scale multiplies the group's gradient first (the centres' 1 / loss-weight rescaling)."""
  if lr == 0.0:
    return optax.set_to_zero()  # frozen group: no moments kept, no update
  lr = learning_rate_schedule(cfg, lr, total_steps, steps_per_epoch)
  name, wd = cfg.optimizer, float(cfg.get("weight_decay", 0.0))
  if name == "adam":
    core = optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  elif name == "adamw":
    core, wd = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=wd), 0.0
  elif name == "sgd":
    core = optax.sgd(lr, momentum=cfg.momentum or None, nesterov=False)
  else:
    raise ValueError(f"unknown optimizer {name!r} (config.train.optimizer): expected adam, adamw or sgd")
  chain = []
  if float(cfg.get("grad_scale", 1.0)) != 1.0:
    chain.append(optax.scale(float(cfg.grad_scale)))
  if wd:
    chain.append(optax.add_decayed_weights(wd))
  return optax.chain(*chain, core) if chain else core


def make_optimizer(cfg: ConfigDict, labels: Any, total_steps: int = 1,
                   steps_per_epoch: int | None = None) -> optax.GradientTransformation:
  """One optimizer per parameter group; `labels` maps every param leaf to a key of cfg.learning_rates,
  or to FROZEN: those leaves get no update at all (not even weight decay) and need no learning rate."""
  lrs = {FROZEN: 0.0, **dict(cfg.learning_rates)}
  used = set(jax.tree.leaves(labels))
  missing = used - set(lrs)
  if missing:
    raise ValueError(f"config.train.learning_rates lacks groups {sorted(missing)}; it has {sorted(lrs)}")
  transforms = {g: _group_optimizer(_group_config(cfg, g), float(lrs[g]), total_steps, steps_per_epoch)
                for g in used}
  tx = optax.multi_transform(transforms, labels)
  if cfg.get("grad_clip_norm"):
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
  return tx


def create_state(params: Any, model_state: Any, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                    opt_state=tx.init(params))


def label_by_prefix(params: Any, groups: dict[str, str], default: str) -> Any:
  """Labels each leaf with the group of the first top-level-name prefix it matches."""
  def label(path, _):
    top = str(getattr(path[0], "key", path[0]))
    for prefix, group in groups.items():
      if top.startswith(prefix):
        return group
    return default
  return jax.tree_util.tree_map_with_path(label, params)


def relabel_by_name(labels: Any, substring: str, group: str) -> Any:
  """Moves every non-frozen leaf whose dotted path contains `substring` to `group`: TransReID gives any
  parameter whose name contains 'bias' its own learning rate (2x) and weight decay."""
  def relabel(path, label):
    name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    return group if label != FROZEN and substring in name else label
  return jax.tree_util.tree_map_with_path(relabel, labels)


LossFn = Callable[..., Any]
