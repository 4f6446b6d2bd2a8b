"""TransforMatcher (Kim, Min, Cho, CVPR 2022): correlation, match-to-match head, keypoint transfer."""
from jaxmatch.models.transformatcher.attention import AdditiveAttention
from jaxmatch.models.transformatcher.correlation import (l2_normalize, multilayer_correlation,
                                                         resize_bilinear_align_corners)
from jaxmatch.models.transformatcher.geometry import (TAU_EVAL, TAU_TRAIN, kernel_soft_argmax_flow,
                                                      normalize_kps, soft_sampler_weights,
                                                      transfer_keypoints, unnormalize_kps,
                                                      upsample4d_align_corners)
from jaxmatch.models.transformatcher.loss import keypoint_loss
from jaxmatch.models.transformatcher.match2match import Match2Match, Match2MatchBlock
from jaxmatch.models.transformatcher.rotary import apply_rotary, rotary_angles, rotary_table

__all__ = [
    "AdditiveAttention", "Match2Match", "Match2MatchBlock", "TAU_EVAL", "TAU_TRAIN",
    "apply_rotary", "keypoint_loss", "kernel_soft_argmax_flow", "l2_normalize",
    "multilayer_correlation", "normalize_kps", "resize_bilinear_align_corners", "rotary_angles",
    "rotary_table", "soft_sampler_weights", "transfer_keypoints", "unnormalize_kps",
    "upsample4d_align_corners",
]
