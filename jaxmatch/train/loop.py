"""The training loop shared by every model: a pure jitted train step over a device mesh.

A task (the `jaxmatch.train.task.Task` protocol) supplies the model's init, loss, parameter groups, data
and evaluation; this module owns sharding, the step, finite checks, checkpoints, metrics and the
evaluation cadence.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from jaxmatch.train import checkpoint as ckpt
from jaxmatch import parallel
from jaxmatch.train.metrics import MetricWriter, ProgressBar
from jaxmatch.train.state import TrainState, create_state, make_optimizer
from jaxmatch.train.task import Task


class NonFiniteError(FloatingPointError):
  """A non-finite loss or gradient; the run stops and the last good checkpoint is kept."""


@dataclasses.dataclass
class RunResult:
  step: int
  eval_before: dict | None
  eval_after: dict | None


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation) -> Callable:
  """step(state, batch, base_rng) -> (state, metrics). A non-finite step leaves the state untouched."""

  def step(state: TrainState, batch: dict, base_rng: jax.Array):
    rng = jax.random.fold_in(base_rng, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (model_state, metrics)), grads = grad_fn(state.params, state.model_state, batch, rng)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                     model_state=model_state, opt_state=opt_state)
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    return new, {**metrics, "loss": loss, "grad_norm": grad_norm, "finite": finite}

  return step


def init_state(task: Task, tx_config: ConfigDict, mesh, seed: int, total_steps: int = 1):
  """Params are born replicated on the mesh: init runs under jit with a replicated out_sharding; file-based
  weights (the ImageNet start) are read on the host afterwards, so they never become jit constants."""
  repl = parallel.replicated(mesh)
  params, model_state = jax.jit(task.init_variables, out_shardings=repl)(jax.random.key(seed))
  params, model_state = jax.device_put(task.load_pretrained(params, model_state), repl)
  tx = make_optimizer(tx_config, task.param_labels(params), total_steps, task.steps_per_epoch)
  state = jax.jit(lambda p, m: create_state(p, m, tx), out_shardings=repl)(params, model_state)
  return state, tx


def _close(data_iter) -> None:
  """Stops the iterator's worker processes (grain iterators gained `close` in later releases)."""
  close = getattr(data_iter, "close", None)
  if close is not None:
    close()


def _save_config(workdir: str, config: ConfigDict) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))


def _check_finite(metrics: dict, step: int, workdir: str) -> None:
  if not bool(np.asarray(jax.device_get(metrics["finite"]))):
    loss = float(np.asarray(jax.device_get(metrics["loss"])))
    gnorm = float(np.asarray(jax.device_get(metrics["grad_norm"])))
    raise NonFiniteError(
        f"non-finite training step {step} (loss {loss}, gradient norm {gnorm}); the update was not applied "
        f"and the run stopped. The last good checkpoint in {ckpt.checkpoint_dir(workdir)} is kept; lower the "
        "learning rate or inspect the data before resuming.")


def train_and_evaluate(config: ConfigDict, workdir: str, task: Task,
                       after_step: Callable[[int], None] | None = None) -> RunResult:
  """Trains `task` per `config.train`, resuming from `workdir` automatically; evaluates periodically."""
  tcfg = config.train
  mesh = parallel.make_mesh(tcfg.get("num_devices") or None)
  parallel.check_batch_divisible(tcfg.batch_size, mesh)
  ckpt.check_config_compatible(workdir, config.to_json_best_effort())
  _save_config(workdir, config)

  total_steps = task.num_train_steps(tcfg)
  state, tx = init_state(task, tcfg, mesh, tcfg.seed, total_steps)
  local_batch = parallel.per_process_batch(tcfg.batch_size)
  data_iter = task.train_iterator(local_batch, seed=tcfg.seed, shard_index=jax.process_index(),
                                  shard_count=jax.process_count())

  manager = ckpt.make_manager(workdir, tcfg.keep_checkpoints)
  resumed = manager.latest_step() is not None
  if resumed:
    state, meta = ckpt.restore(manager, ckpt.abstract_like(state, parallel.replicated(mesh)), data_iter)
    logging.info("resumed from %s at step %d", ckpt.checkpoint_dir(workdir), meta["step"])
  start = int(jax.device_get(state.step))

  writer = MetricWriter(workdir, tcfg.get("tensorboard", True))
  eval_before = None
  if not resumed and tcfg.eval_before_training:
    eval_before = task.evaluate(state.params, state.model_state, mesh, workdir, step=0, tag="before")
    writer.write(0, eval_before, prefix="eval/")

  repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
  train_step = jax.jit(make_train_step(task.loss_fn, tx), donate_argnums=(0,),
                       in_shardings=(repl, data, repl), out_shardings=(repl, repl))
  base_rng = jax.random.key(tcfg.seed + 1)  # folded with the step inside the jitted step
  bar = ProgressBar(total_steps, start, unit=task.unit)
  step, metrics, t_log = start, None, time.perf_counter()
  try:
    while step < total_steps:
      batch = parallel.to_global(task.train_inputs(next(data_iter)), mesh)
      state, metrics = train_step(state, batch, base_rng)
      step += 1
      last = step == total_steps
      if step % tcfg.log_every == 0 or last:
        _check_finite(metrics, step, workdir)
        host = parallel.fetch(metrics)
        elapsed, t_log = time.perf_counter() - t_log, time.perf_counter()
        host["steps_per_s"] = tcfg.log_every / max(elapsed, 1e-9)
        writer.write(step, host, prefix="train/")
        bar.update(step, float(host["loss"]), tcfg.batch_size)
      if step % tcfg.checkpoint_every == 0 or last:
        _check_finite(metrics, step, workdir)
        ckpt.save(manager, step, state, {"step": step}, data_iter)
      if tcfg.eval_every and step % tcfg.eval_every == 0 and not last:
        writer.write(step, task.evaluate(state.params, state.model_state, mesh, workdir, step=step,
                                         tag=f"step{step}", periodic=True), prefix="val/")
      if after_step is not None:
        after_step(step)
  finally:
    bar.close()
    manager.close()
    _close(data_iter)

  eval_after = task.evaluate(state.params, state.model_state, mesh, workdir, step=step, tag="final")
  writer.write(step, eval_after, prefix="eval/")
  writer.close()
  return RunResult(step=step, eval_before=eval_before, eval_after=eval_after)


def evaluate_checkpoint(config: ConfigDict, workdir: str, task: Task, step: int | None = None) -> dict:
  """Restores the workdir's (latest) checkpoint onto the current mesh and evaluates it."""
  mesh = parallel.make_mesh(config.train.get("num_devices") or None)
  state, _ = init_state(task, config.train, mesh, config.train.seed)
  manager = ckpt.make_manager(workdir, config.train.keep_checkpoints, with_data=False)
  if manager.latest_step() is None:
    raise ckpt.CheckpointError(
        f"no checkpoint in {ckpt.checkpoint_dir(workdir)}: train first (--mode train) or convert official "
        "weights with `python -m jaxmatch.convert`")
  state, meta = ckpt.restore(manager, ckpt.abstract_like(state, parallel.replicated(mesh)), step=step)
  manager.close()
  result = task.evaluate(state.params, state.model_state, mesh, workdir, step=int(meta["step"]), tag="eval")
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "eval_result.json"), "w", encoding="utf-8") as f:
      json.dump({"step": int(meta["step"]), **{k: v for k, v in result.items()}}, f, indent=2, default=float)
  return result
