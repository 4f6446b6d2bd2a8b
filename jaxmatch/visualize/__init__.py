"""Pictures of results as uint8 RGB arrays (PIL only): correspondences, dense warps, re-ID ranked lists."""
from jaxmatch.visualize.correspondence import (as_rgb_uint8, keypoint_figure, save_png, upsample_map,
                                               warp_figure)
from jaxmatch.visualize.ranked_list import ranked_list_figure

__all__ = ["as_rgb_uint8", "keypoint_figure", "ranked_list_figure", "save_png", "upsample_map", "warp_figure"]
