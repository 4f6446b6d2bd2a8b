"""A tiny re-ID model that exists only in the tests: what adding a model takes. Its package (this folder)
holds the model, its converter and its parity adapter; registering it is one call,
`jaxmatch.models.register(CONTRACT)`, and nothing else in jaxmatch changes.

It consumes the camera id next to the image (like TransReID's side information), so the test also shows
that a model's declared batch fields reach it."""
from jaxmatch.models.registry import ModelContract

CONTRACT = ModelContract(
    name="toy_reid", task="reid", build="toy_model.model:build",
    train_fields=("image", "label", "camera"), eval_fields=("image", "camera"),
    from_torch="toy_model.convert:from_torch", parity_adapter="toy_model.parity")
