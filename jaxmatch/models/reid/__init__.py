"""Re-identification models: the BNNeck and the ResNet strong baseline (the NFormer / KPM encoder)."""
from jaxmatch.models.reid.baseline import BaselineModel, StrongBaseline
from jaxmatch.models.reid.bnneck import BNNeck, frozen_bias_batch_norm

__all__ = ["BNNeck", "BaselineModel", "StrongBaseline", "frozen_bias_batch_norm"]
