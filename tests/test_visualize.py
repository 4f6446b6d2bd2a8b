"""jaxmatch.visualize: keypoint and warp figures for correspondence, ranked lists for re-ID, PNG output."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jaxmatch.visualize import keypoint_figure, ranked_list_figure, save_png, upsample_map, warp_figure
from jaxmatch.visualize.correspondence import CORRECT, GROUND_TRUTH, UNJUDGED, WRONG
from jaxmatch.visualize.ranked_list import GAP, QUERY


def pattern(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- keypoints
def test_keypoint_figure_colours_predictions_by_threshold():
  src = np.zeros((60, 80, 3), np.uint8)
  trg = np.zeros((50, 100, 3), np.uint8)
  src_kps = np.array([[10, 10], [40, 30], [-2, -2]], np.float32)      # last row is padding
  trg_kps = np.array([[20, 20], [70, 25], [-2, -2]], np.float32)
  pred = np.array([[21, 20], [30, 40], [5, 5]], np.float32)            # 1 px off (correct), 42.7 px off
  fig = keypoint_figure(src, trg, src_kps, trg_kps, pred, threshold=5.0)
  assert fig.shape == (60, 180, 3) and fig.dtype == np.uint8
  assert tuple(fig[20, 80 + 21]) == CORRECT      # prediction dot, target half offset by the source width
  assert tuple(fig[10, 10]) == CORRECT           # its source keypoint in the same colour
  assert tuple(fig[40, 80 + 30]) == WRONG
  assert tuple(fig[30, 40]) == WRONG
  mid = ((30 + 70) // 2 + 80, (40 + 25) // 2)
  assert tuple(fig[mid[1], mid[0]]) == WRONG     # the error line from prediction to ground truth
  r = 2 + 1                                      # ring radius for a 50 px image: marker 2, ring 1 px wider
  assert tuple(fig[25, 80 + 70 - r]) == GROUND_TRUTH or tuple(fig[25, 80 + 70 + r]) == GROUND_TRUTH
  assert tuple(fig[5, 80 + 5]) == (0, 0, 0)      # padded row not drawn
  assert tuple(fig[55, 150]) == (0, 0, 0)        # shorter target padded with black


def test_keypoint_figure_without_threshold_and_off_image_predictions():
  img = np.full((40, 40, 3), 0.5, np.float32)    # float images in [0, 1]
  fig = keypoint_figure(img, img, [[5, 5]], [[20, 20]], [[500, 20]])
  assert tuple(fig[0, 0]) == (128, 128, 128)
  assert tuple(fig[20, 40 + 39]) == UNJUDGED     # clipped to the target's right border
  assert tuple(fig[20, 40 + 30]) == UNJUDGED     # error line towards the ground truth at x = 20
  assert tuple(fig[5, 5]) == UNJUDGED            # source keypoint
  assert tuple(fig[20, 39]) == (128, 128, 128)   # nothing spills into the source half


def test_keypoint_figure_rejects_bad_input():
  img = np.zeros((8, 8, 3), np.uint8)
  with pytest.raises(ValueError, match=r"trg_kps must be \[2, 2\]"):
    keypoint_figure(img, img, np.zeros((2, 2)), np.zeros((3, 2)), np.zeros((2, 2)))
  with pytest.raises(ValueError, match=r"src_img must be \[H, W, 3\]"):
    keypoint_figure(np.zeros((8, 8, 4)), img, np.zeros((1, 2)), np.zeros((1, 2)), np.zeros((1, 2)))
  with pytest.raises(ValueError, match="threshold must be a positive"):
    keypoint_figure(img, img, np.zeros((1, 2)), np.zeros((1, 2)), np.zeros((1, 2)), threshold=0)


# ----------------------------------------------------------------------------- warp
def test_identity_map_at_image_size_reproduces_the_source():
  src, trg = pattern(24, 32, 0), pattern(24, 32, 1)
  ys, xs = np.mgrid[0:24, 0:32]
  fig = warp_figure(src, trg, np.stack([xs, ys], -1).astype(np.float32))
  assert fig.shape == (24, 96, 3)
  np.testing.assert_array_equal(fig[:, :32], src)
  np.testing.assert_array_equal(fig[:, 32:64], trg)
  np.testing.assert_array_equal(fig[:, 64:], src)


def test_shift_map_on_a_coarse_grid_reproduces_the_shifted_source():
  """A coarse affine map (grid corners on image corners) upsamples exactly; shifting by 3 px moves the image."""
  src, trg = pattern(33, 41, 2), pattern(33, 41, 3)
  gy, gx = np.meshgrid(np.linspace(0, 32, 5), np.linspace(0, 40, 6), indexing="ij")   # 5 x 6 grid
  coarse = np.stack([gx + 3.0, gy], -1)
  np.testing.assert_allclose(upsample_map(coarse, 33, 41)[..., 0], np.broadcast_to(np.arange(41) + 3.0, (33, 41)),
                             atol=1e-9)
  warped = warp_figure(src, trg, coarse)[:, 82:]
  np.testing.assert_array_equal(warped[:, :38], src[:, 3:])
  assert not warped[:, 38:].any()                # sampled outside the source: black


def test_half_pixel_positions_are_interpolated_and_bad_maps_rejected():
  src = np.zeros((2, 2, 3), np.uint8)
  src[:, 1] = 200
  flow = np.full((1, 1, 2), 0.5)                 # one cell: every target pixel samples x = y = 0.5
  warped = warp_figure(src, np.zeros((3, 3, 3), np.uint8), flow)[:, 5:]
  assert warped.shape == (3, 3, 3) and np.all(warped == 100)
  with pytest.raises(ValueError, match=r"trg_to_src must be \[h, w, 2\]"):
    warp_figure(src, src, np.zeros((4, 4)))
  with pytest.raises(ValueError, match="non-finite"):
    warp_figure(src, src, np.full((2, 2, 2), np.nan))


# ----------------------------------------------------------------------------- ranked list
def test_ranked_list_borders_and_layout():
  query = pattern(80, 40, 4)
  gallery = [pattern(80, 40, 5), pattern(160, 80, 6), pattern(80, 40, 7)]   # one of another size
  fig = ranked_list_figure(query, gallery, correct=[True, False, True])
  b = max(2, 80 // 40)
  tile_w = 40 + 2 * b
  assert fig.shape == (80 + 2 * b, 4 * tile_w + 3 * GAP, 3)
  assert tuple(fig[0, 0]) == QUERY
  for i, colour in enumerate([(0, 200, 0), (230, 0, 0), (0, 200, 0)], start=1):
    x = i * (tile_w + GAP)
    assert tuple(fig[0, x]) == colour and tuple(fig[-1, x + tile_w - 1]) == colour
    assert tuple(fig[0, x - 1]) == (255, 255, 255)  # gap between tiles
  np.testing.assert_array_equal(fig[b:b + 80, b:b + 40], query)


def test_ranked_list_captions_and_errors():
  query, gallery = pattern(64, 32), [pattern(64, 32, 1), pattern(64, 32, 2)]
  plain = ranked_list_figure(query, gallery, [False, True])
  with_text = ranked_list_figure(query, gallery, [False, True], distances=[0.12, 0.5],
                                 labels=["pid 3 cam 1", "pid 7 cam 2"])
  assert with_text.shape[0] == plain.shape[0] + 24 and with_text.shape[1] == plain.shape[1]
  caption = with_text[plain.shape[0]:]
  assert (caption < 128).any() and (caption == 255).mean() > 0.5   # dark text on white
  with pytest.raises(ValueError, match="distances has 1 entries for 2 gallery images"):
    ranked_list_figure(query, gallery, [True, True], distances=[0.1])
  with pytest.raises(ValueError, match="at least one gallery image"):
    ranked_list_figure(query, [], [])


# ----------------------------------------------------------------------------- png
def test_save_png_round_trip(tmp_path):
  fig = warp_figure(pattern(16, 16), pattern(16, 16, 1), np.zeros((2, 2, 2)))
  path = save_png(str(tmp_path / "sub" / "warp.png"), fig)
  with Image.open(path) as im:
    assert im.format == "PNG"
    np.testing.assert_array_equal(np.asarray(im), fig)
  with pytest.raises(ValueError, match="save_png expects uint8"):
    save_png(str(tmp_path / "x.png"), fig.astype(np.float32))
