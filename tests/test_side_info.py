"""Camera / view ids -> side-information table rows: the training split's ids in order, a clear error for
an id outside the table (JAX would clamp it silently), the documented fixed-row option."""
from __future__ import annotations

import types

import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxmatch.tasks.side_info import SideInfo


def _split(camids, viewids):
  return types.SimpleNamespace(camids=np.asarray(camids), viewids=np.asarray(viewids))


def test_rows_follow_the_training_ids_in_order():
  side = SideInfo.from_split(_split([3, 1, 6, 1, 3], [-1] * 5))
  assert side.ids == {"camera": (1, 3, 6), "view": ()}
  np.testing.assert_array_equal(side.rows("camera", [6, 1, 3], "query"), [2, 0, 1])
  np.testing.assert_array_equal(side.rows("view", [-1, -1], "query"), [0, 0])  # no views: no table


def test_unknown_camera_names_the_id_and_the_table():
  side = SideInfo.from_split(_split([1, 2, 3], [0, 1, 0]))
  with pytest.raises(ValueError, match=r"camera id 9 of the gallery is not in the model's camera table of 3") as e:
    side.rows("camera", [1, 9], "gallery")
  assert "--config.eval.fixed_camera" in str(e.value)
  with pytest.raises(ValueError, match="view id -1"):
    side.apply({"image": None, "view": np.array([-1])}, "loose images")


def test_fixed_rows_embed_unknown_ids_and_are_range_checked():
  side = SideInfo((1, 2, 3), (0, 1), fixed_camera=2)
  np.testing.assert_array_equal(side.rows("camera", [9, 1], "images"), [2, 0])
  with pytest.raises(ValueError, match="fixed_view=5 is outside the view table of 2"):
    SideInfo((1,), (0, 1), fixed_view=5).rows("view", [0], "images")


def test_record_sizes_the_model_tables_and_round_trips_through_the_config():
  config = ConfigDict(dict(model=dict(num_cameras=0, num_views=0), data=dict(camera_ids=(), view_ids=()),
                           eval=dict(fixed_camera=-1, fixed_view=-1)))
  SideInfo.from_split(_split([2, 5, 5], [7, 7, 0])).record(config)
  assert config.model.num_cameras == 2 and config.model.num_views == 2
  again = SideInfo.from_config(config)
  np.testing.assert_array_equal(again.rows("camera", [5, 2], "q"), [1, 0])
  np.testing.assert_array_equal(again.rows("view", [7], "q"), [1])
