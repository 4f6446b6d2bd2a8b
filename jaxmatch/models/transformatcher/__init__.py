"""TransforMatcher (Kim, Min, Cho, CVPR 2022): correlation, match-to-match head, keypoint transfer,
and the paper's attention / position / correlation variants."""
from jaxmatch.models.registry import ModelContract
from jaxmatch.models.transformatcher.attention import AdditiveAttention
from jaxmatch.models.transformatcher.correlation import (concat_correlation, correlation_by_mode,
                                                         l2_normalize, mean_correlation,
                                                         multilayer_correlation,
                                                         resize_bilinear_align_corners)
from jaxmatch.models.transformatcher.geometry import (TAU_EVAL, TAU_TRAIN, dense_source_positions,
                                                      kernel_soft_argmax_flow, normalize_kps,
                                                      soft_sampler_weights, transfer_keypoints,
                                                      unnormalize_kps, upsample4d_align_corners)
from jaxmatch.models.transformatcher.linformer import LinformerAttention
from jaxmatch.models.transformatcher.loss import keypoint_loss
from jaxmatch.models.transformatcher.match2match import Match2Match, Match2MatchBlock
from jaxmatch.models.transformatcher.performer import (PerformerAttention, favor_attention,
                                                       orthogonal_random_features)
from jaxmatch.models.transformatcher.positional import AbsolutePositionEmbedding
from jaxmatch.models.transformatcher.rotary import apply_rotary, rotary_angles, rotary_table
from jaxmatch.models.transformatcher.vanilla import SoftmaxAttention
from jaxmatch.models.transformatcher.variants import ATTENTIONS, make_attention

CONTRACT = ModelContract(
    name="transformatcher", task="correspondence", build="jaxmatch.models.transformatcher.model:build",
    train_fields=("src_img", "trg_img", "src_kps", "trg_kps", "kp_mask"),
    eval_fields=("src_img", "trg_img", "src_kps", "trg_kps", "kp_mask"),
    from_torch="jaxmatch.convert.transformatcher:from_torch",
    imagenet_start="jaxmatch.convert.transformatcher:imagenet_start",
    parity_adapter="jaxmatch.parity.transformatcher")

__all__ = [
    "CONTRACT",
    "ATTENTIONS", "AbsolutePositionEmbedding", "AdditiveAttention", "LinformerAttention", "Match2Match",
    "Match2MatchBlock", "PerformerAttention", "SoftmaxAttention", "TAU_EVAL", "TAU_TRAIN",
    "apply_rotary", "concat_correlation", "correlation_by_mode", "dense_source_positions",
    "favor_attention", "keypoint_loss", "kernel_soft_argmax_flow", "l2_normalize", "make_attention",
    "mean_correlation", "multilayer_correlation", "normalize_kps", "orthogonal_random_features",
    "resize_bilinear_align_corners", "rotary_angles", "rotary_table", "soft_sampler_weights",
    "transfer_keypoints", "unnormalize_kps", "upsample4d_align_corners",
]
