"""The checkpointable iterator over a grain MapDataset, shared by the correspondence and re-ID
pipelines (each re-exports it next to its dataset constructors)."""
from __future__ import annotations

import grain


def make_iterator(dataset: grain.MapDataset, num_workers: int = 0, prefetch: int = 2):
  """Checkpointable iterator (get_state / set_state); worker processes when num_workers > 0."""
  read = grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=prefetch)
  stream = dataset.to_iter_dataset(read)
  if num_workers > 0:
    stream = stream.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=max(1, prefetch)))
  return iter(stream)
