"""Command line: `python -m jaxmatch.main --config configs/<recipe>.py[:arg] [--workdir DIR] [--mode eval]`.

Overrides use `--config.a.b=value`; the config is locked, so an unknown key or a value of the wrong type
stops with a message naming the key. Rerunning the same command resumes from the workdir's checkpoint.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file, e.g. configs/transformatcher_spair.py[:smoke].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and evaluation results go here "
                               "(default: runs/<recipe>[-<arg>]).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"],
                          "train: train with periodic evaluation (resumes automatically); "
                          "eval: evaluate the workdir's latest checkpoint.")


def default_workdir(config_arg: str) -> str:
  path, _, arg = config_arg.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("runs", f"{name}-{arg}" if arg else name)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from jaxmatch.parallel import maybe_initialize_distributed
  maybe_initialize_distributed()
  workdir = _WORKDIR.value or default_workdir(config_flags.get_config_filename(flags.FLAGS["config"]))
  logging.info("workdir: %s", workdir)
  from jaxmatch.runner import run, user_errors
  try:
    run(_CONFIG.value, workdir, _MODE.value)
  except user_errors() as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
