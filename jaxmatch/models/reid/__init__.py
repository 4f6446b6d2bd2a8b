"""Re-identification models: the BNNeck and the ResNet strong baseline (the NFormer / KPM encoder)."""
from jaxmatch.models.registry import ModelContract
from jaxmatch.models.reid.baseline import BaselineModel, StrongBaseline
from jaxmatch.models.reid.bnneck import BNNeck, frozen_bias_batch_norm

CONTRACT = ModelContract(
    name="baseline", task="reid", build="jaxmatch.models.reid.baseline:build",
    train_fields=("image", "label"), eval_fields=("image",),
    from_torch="jaxmatch.convert.baseline:from_torch",
    complete_config="jaxmatch.convert.baseline:complete_config",
    imagenet_start="jaxmatch.convert.baseline:imagenet_start")

__all__ = ["BNNeck", "BaselineModel", "CONTRACT", "StrongBaseline", "frozen_bias_batch_norm"]
