"""Command line: features of a trained re-ID model for a folder of images or a dataset split.

  python -m jaxmatch.extract --workdir runs/baseline_market --images path/to/crops --output feats.npy
  python -m jaxmatch.extract --workdir runs/baseline_market --dataset market1501 --split query \
      --output market_query.npy

Writes the features (.npy, float32 [N, D]) and a .json beside them with each row's file name and, where
the names or the dataset give them, pid / camera / viewpoint. The model, weights and preprocessing are
the workdir's (its config.json and latest checkpoint, or --step).
"""
from __future__ import annotations

import sys

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints).")
_IMAGES = flags.DEFINE_string("images", None, "A folder of images (searched recursively).")
_DATASET = flags.DEFINE_string("dataset", None, "A dataset name (e.g. market1501) read as configured in the "
                               "workdir's config (config.data.folders) ...")
_SPLIT = flags.DEFINE_string("split", "query", "... and its split: train, query or gallery.")
_OUTPUT = flags.DEFINE_string("output", None, "Where the .npy goes (the .json is written beside it).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_BATCH = flags.DEFINE_integer("batch_size", None, "Images per batch (default: config.eval.batch_size).")
_FIXED_CAMERA = flags.DEFINE_integer("fixed_camera", None, "Models with camera side information (TransReID): "
                                     "the camera table row for images whose camera is unknown (file names "
                                     "without _c<cam>, or cameras unseen in training); default: an error.")
_FIXED_VIEW = flags.DEFINE_integer("fixed_view", None, "The same for viewpoint side information.")


def _split():
  from jaxmatch.features import folder_split
  from jaxmatch.tasks.restore import workdir_config
  if bool(_IMAGES.value) == bool(_DATASET.value):
    raise app.UsageError("give exactly one of --images DIR or --dataset NAME [--split]")
  if _IMAGES.value:
    return folder_split(_IMAGES.value)
  from input_pipeline.reid.sources import ReidData
  config = workdir_config(_WORKDIR.value)
  data = ReidData(config.data, _WORKDIR.value, config.data.dataset, (_DATASET.value,))
  data.prepare((_DATASET.value,))
  return data.split(_DATASET.value, _SPLIT.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from jaxmatch.features import extract_to_files
  from jaxmatch.tasks.restore import workdir_config
  from jaxmatch.runner import user_errors
  try:
    workdir_config(_WORKDIR.value)  # a missing or non-re-ID workdir is reported before any data is read
    npy, meta = extract_to_files(_WORKDIR.value, _split(), _OUTPUT.value, step=_STEP.value,
                                 batch_size=_BATCH.value, fixed_camera=_FIXED_CAMERA.value,
                                 fixed_view=_FIXED_VIEW.value)
  except (*user_errors(), FileNotFoundError, ValueError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  print(f"wrote {npy} and {meta}", flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "output"])
  app.run(main)
