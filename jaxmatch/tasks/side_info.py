"""Camera and view ids as datasets name them -> rows of a model's side-information tables (TransReID's SIE).

The tables cover the training split: its distinct camera (view) ids in sorted order are rows 0, 1, ...
(a dataset without view ids has an empty view table, and every image gets row 0, which no model reads)
(for Market-1501, MSMT17 and VeRi-776, whose cameras are numbered from 1, this is the official code's
`camid - 1`). An id that is not in the table (a camera unseen in training, a folder of loose images
without camera ids) is an error naming the id and the table size, unless the recipe fixes the row such
images use (`config.eval.fixed_camera` / `fixed_view` >= 0, documented in configs/common_reid.py): JAX
would otherwise clamp the gather to the last row without a word.
"""
from __future__ import annotations

import numpy as np
from ml_collections import ConfigDict

SIDE_FIELDS = {"camera": ("camera_ids", "fixed_camera"), "view": ("view_ids", "fixed_view")}


class SideInfo:
  """Maps the pipeline's camid / viewid to table rows for the fields a model consumes."""

  def __init__(self, camera_ids=(), view_ids=(), fixed_camera: int = -1, fixed_view: int = -1):
    self.ids = {"camera": tuple(int(c) for c in camera_ids), "view": tuple(int(v) for v in view_ids)}
    self.fixed = {"camera": int(fixed_camera), "view": int(fixed_view)}

  @classmethod
  def from_split(cls, split) -> "SideInfo":
    """The training split's distinct camera and view ids (negative ids mean 'unknown' and are skipped)."""
    def distinct(values):
      values = np.asarray(values)
      return sorted(int(v) for v in np.unique(values[values >= 0]))
    return cls(distinct(split.camids), distinct(split.viewids))

  @classmethod
  def from_config(cls, config: ConfigDict) -> "SideInfo":
    d, e = config.data, config.eval
    return cls(d.get("camera_ids", ()), d.get("view_ids", ()), e.get("fixed_camera", -1),
               e.get("fixed_view", -1))

  def record(self, config: ConfigDict) -> None:
    """Writes the tables into the config (saved with the run, so extraction rebuilds them) and sizes the
    model's tables where its config has them (num_cameras / num_views)."""
    config.data.camera_ids = self.ids["camera"]
    config.data.view_ids = self.ids["view"]
    for field, key in (("camera", "num_cameras"), ("view", "num_views")):
      if key in config.model:
        config.model[key] = len(self.ids[field])

  def rows(self, field: str, ids, what: str) -> np.ndarray:
    """Table rows [B] (int32) for the dataset ids `ids` of `field` ('camera' or 'view')."""
    table, fixed = self.ids[field], self.fixed[field]
    ids = np.asarray(ids)
    if not table:  # the training data has no such ids, so no model has a table for them
      return np.zeros(ids.shape, np.int32)
    lookup = {v: i for i, v in enumerate(table)}
    unknown = sorted({int(v) for v in ids.ravel() if int(v) not in lookup})
    if unknown and fixed < 0:
      option = SIDE_FIELDS[field][1]
      raise ValueError(
          f"{field} id {unknown[0]} of the {what} is not in the model's {field} table of {len(table)} "
          f"training {field}s {list(table)}: a {field} unseen in training (or an image without a {field} "
          f"id) has no side-information row. Set --config.eval.{option}=ROW (0 <= ROW < {len(table)}) to "
          f"embed such images as that {field}, or train without {field} side information.")
    if fixed >= len(table):
      raise ValueError(f"config.eval.{SIDE_FIELDS[field][1]}={fixed} is outside the {field} table of "
                       f"{len(table)} rows")
    return np.asarray([lookup.get(int(v), fixed) for v in ids.ravel()], np.int32).reshape(ids.shape)

  def apply(self, inputs: dict, what: str) -> dict:
    """The model's inputs with camera / view ids replaced by table rows (other fields untouched)."""
    return {k: (self.rows(k, v, what) if k in SIDE_FIELDS else v) for k, v in inputs.items()}
