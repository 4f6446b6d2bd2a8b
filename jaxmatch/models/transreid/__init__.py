"""TransReID: ViT re-ID with side information embeddings and the jigsaw patch module."""
from jaxmatch.models.registry import ModelContract
from jaxmatch.models.transreid.model import (TransReID, TransReIDModel, build, check_side_info, jpm_order,
                                             sie_layout)

CONTRACT = ModelContract(
    name="transreid", task="reid", build="jaxmatch.models.transreid.model:build",
    train_fields=("image", "label", "camera", "view"), eval_fields=("image", "camera", "view"),
    from_torch="jaxmatch.convert.transreid:from_torch",
    complete_config="jaxmatch.convert.transreid:complete_config",
    imagenet_start="jaxmatch.convert.transreid:imagenet_start",
    parity_adapter="jaxmatch.parity.transreid")

__all__ = ["CONTRACT", "TransReID", "TransReIDModel", "build", "check_side_info", "jpm_order", "sie_layout"]
