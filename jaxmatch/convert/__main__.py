"""`python -m jaxmatch.convert --config configs/X.py --torch_checkpoint FILE --workdir DIR`

Writes a step-0 checkpoint (converted weights + fresh optimizer state) into DIR, which
`python -m jaxmatch.main --config configs/X.py --workdir DIR --mode eval` evaluates and `--mode train`
fine-tunes. `--torchvision_resnet FILE` instead initialises every backbone from a torchvision ResNet file
(ImageNet weights, as the official recipes start) and the rest of the model randomly.
"""
from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file the weights belong to.", lock_config=True)
_TORCH = flags.DEFINE_string("torch_checkpoint", None, "Official checkpoint (.pth/.pt/.bin, .safetensors, .npz).")
_TV = flags.DEFINE_string("torchvision_resnet", None, "torchvision ResNet weights for the backbones.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where to write the checkpoint.")
_PICKLE = flags.DEFINE_bool("allow_pickle", False, "Allow legacy .pth files that run pickled code "
                            "(only for files you trust).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from jaxmatch.convert.keys import CheckpointMismatchError
  from jaxmatch.convert.to_workdir import convert_to_workdir
  from jaxmatch.train.checkpoint import CheckpointError
  try:
    path = convert_to_workdir(_CONFIG.value, _WORKDIR.value, _TORCH.value, _TV.value, _PICKLE.value)
  except (CheckpointMismatchError, CheckpointError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  print(f"wrote {path}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
