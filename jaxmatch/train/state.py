"""Train state and optimizer: Adam/AdamW/SGD per parameter group (optax.multi_transform)."""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. `model_state` holds non-trainable collections (e.g. batch_stats)."""
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any


def learning_rate_schedule(cfg: ConfigDict, base_lr: float, total_steps: int) -> optax.Schedule:
  """config.train.schedule: 'constant' (the TransforMatcher code), 'cosine' or 'multistep', with optional
  linear warmup (config.train.warmup_steps) from 0."""
  kind = cfg.get("schedule", "constant")
  warmup = int(cfg.get("warmup_steps", 0))
  if kind == "constant":
    main = optax.constant_schedule(base_lr)
  elif kind == "cosine":
    main = optax.cosine_decay_schedule(base_lr, max(1, total_steps - warmup))
  elif kind == "multistep":
    main = optax.piecewise_constant_schedule(
        base_lr, {int(m) - warmup: float(cfg.get("gamma", 0.1)) for m in cfg.milestones})
  else:
    raise ValueError(f"unknown config.train.schedule {kind!r}: expected constant, cosine or multistep")
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, base_lr, warmup), main], [warmup])


def _group_optimizer(cfg: ConfigDict, lr: float, total_steps: int) -> optax.GradientTransformation:
  if lr == 0.0:
    return optax.set_to_zero()  # frozen group: no moments kept, no update
  lr = learning_rate_schedule(cfg, lr, total_steps)
  name = cfg.optimizer
  if name == "adam":
    return optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  if name == "adamw":
    return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  if name == "sgd":
    return optax.sgd(lr, momentum=cfg.momentum or None, nesterov=False)
  raise ValueError(f"unknown optimizer {name!r} (config.train.optimizer): expected adam, adamw or sgd")


def make_optimizer(cfg: ConfigDict, labels: Any, total_steps: int = 1) -> optax.GradientTransformation:
  """One optimizer per parameter group; `labels` maps every param leaf to a key of cfg.learning_rates."""
  lrs = dict(cfg.learning_rates)
  used = set(jax.tree.leaves(labels))
  missing = used - set(lrs)
  if missing:
    raise ValueError(f"config.train.learning_rates lacks groups {sorted(missing)}; it has {sorted(lrs)}")
  transforms = {g: _group_optimizer(cfg, float(lrs[g]), total_steps) for g in used}
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


LossFn = Callable[..., Any]
