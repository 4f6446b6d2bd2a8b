"""Running a recipe from Python: `run(config, workdir, mode)` (what `python -m jaxmatch.main` calls)."""
from __future__ import annotations


def user_errors() -> tuple[type[BaseException], ...]:
  """Errors caused by the user's input: reported as one message, without a traceback, by the CLIs."""
  from input_pipeline.errors import CorruptImageError, DatasetLayoutError
  from jaxmatch.convert.keys import CheckpointMismatchError
  from jaxmatch.train.checkpoint import CheckpointError
  from jaxmatch.train.loop import NonFiniteError
  return (DatasetLayoutError, CorruptImageError, CheckpointMismatchError, CheckpointError, NonFiniteError)


def run(config, workdir: str, mode: str = "train"):
  """mode 'train': train with periodic evaluation, resuming from `workdir`; 'eval': evaluate its checkpoint."""
  from jaxmatch import tasks
  from jaxmatch.train import loop
  task = tasks.build(config, workdir)
  if mode == "train":
    return loop.train_and_evaluate(config, workdir, task)
  if mode == "eval":
    return loop.evaluate_checkpoint(config, workdir, task)
  raise ValueError(f"unknown mode {mode!r}: expected train or eval")
