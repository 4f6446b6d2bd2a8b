"""Input pipelines, one package per task: `correspondence/` (keypoint pairs) and `reid/` (person and
vehicle re-identification). Each holds TFDS builders for its datasets as distributed, synthetic
generators writing the same layouts, grain samplers and NumPy transforms that turn records into
fixed-shape host batches, and a `sources` module that finds a dataset or writes the embedded one.
What both use stays here: errors, image decoding, the checkpointable iterator and the default
place of hand-downloaded datasets. Nothing here imports jaxmatch."""
from __future__ import annotations
