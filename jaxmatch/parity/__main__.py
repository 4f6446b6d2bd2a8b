"""`python -m jaxmatch.parity --config configs/X.py --reference_repo PATH [--torch_checkpoint FILE]`

Builds the official PyTorch model from the user's clone of the authors' repository (PATH) and jaxmatch's
model from the same weights (the checkpoint, or the official random initialisation seeded by --seed), runs
both on the same seeded inputs on CPU in float32 and prints, stage by stage, the max absolute and relative
difference with pass/fail. Random weights are first sharpened by the model's adapter so that every
parameter group matters; then a sensitivity self-check scales each parameter group by 1.01 in the reference
alone and reports a group that moves no stage beyond its tolerance as "not covered" (named in the verdict
line and the JSON; the exit code still follows the stages). Exit code: 0 all stages pass, 1 a stage fails,
2 the comparison could not run (missing repository or entry point, a config the official code cannot
build, weights that do not fit).
"""
from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file, e.g. configs/transformatcher_spair.py.",
                                          lock_config=True)
_REPO = flags.DEFINE_string("reference_repo", None, "Folder of your clone of the official repository.")
_TORCH = flags.DEFINE_string("torch_checkpoint", None, "Official checkpoint (.pth/.pt/.bin, .safetensors, .npz); "
                             "default: the official random initialisation.")
_PICKLE = flags.DEFINE_bool("allow_pickle", False, "Allow legacy .pth files that run pickled code "
                            "(only for files you trust).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random weights and inputs.")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Image pairs per comparison.")
_JSON = flags.DEFINE_string("json_out", None, "Also write the report as JSON to this file.")
_SHARPEN = flags.DEFINE_bool("sharpen", True, "Rescale the random weights so every parameter group moves a "
                             "stage (--nosharpen: the plain official initialisation; ignored with "
                             "--torch_checkpoint, whose weights are used as given).")
_SENSITIVITY = flags.DEFINE_bool("sensitivity", True, "Run the sensitivity self-check: one reference forward "
                                 "per parameter group (--nosensitivity skips it).")


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from jaxmatch.parity.core import cli_run
  return cli_run(_CONFIG.value, _REPO.value, _TORCH.value, _PICKLE.value, _SEED.value, _BATCH.value, _JSON.value,
                 _SHARPEN.value, _SENSITIVITY.value)


def run():
  flags.mark_flags_as_required(["config", "reference_repo"])
  app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
  run()
