"""Input pipelines: TFDS builders for datasets as distributed, synthetic generators writing the same
layouts, and grain samplers and NumPy transforms that turn records into fixed-shape host batches."""
from __future__ import annotations
