"""The toy model's parity adapter: what a model plugs into `python -m jaxmatch.parity`."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxmatch import convert, models
from jaxmatch.parity.core import Stage


class ToyAdapter:
  name = "toy_reid"
  repository = "tests/toy_model/reference"
  modules = ("toy_official",)
  entry_points = {"toy_official": ("ToyReid",)}
  install_hint = "pip install torch"

  def check_config(self, config) -> list[str]:
    return [] if config.model.dim > 0 else ["config.model.dim must be positive"]

  def build_reference(self, modules: dict, config):
    c = config.model
    return modules["toy_official"].ToyReid(int(c.num_classes), int(c.num_cameras), int(c.dim))

  def check_reference(self, model, modules: dict, config) -> list[str]:
    return []

  def convert(self, state_dict: dict, config) -> dict:
    return convert.from_torch(config, state_dict)

  def make_inputs(self, config, batch_size: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    h, w = config.data.img_size
    return {"image": rng.normal(size=(batch_size, h, w, 3)).astype(np.float32),
            "camera": rng.integers(0, config.model.num_cameras, size=(batch_size,)).astype(np.int32)}

  def describe_inputs(self, inputs: dict) -> str:
    return f"{inputs['image'].shape[0]} seeded images with cameras {inputs['camera'].tolist()}"

  def stages(self, config) -> tuple[Stage, ...]:
    return (Stage("feature", "embedding plus camera offset", 1e-5), Stage("logits", "classifier", 1e-5))

  def parameter_groups(self, shapes: dict, config) -> dict[str, list]:
    return {"embed": ["embed.weight", "embed.bias"], "camera": ["camera.weight"],
            "classifier": ["classifier.weight"]}

  def unused_parameters(self, shapes: dict, config) -> dict[str, str]:
    return {}

  def sharpen(self, model, modules: dict, inputs: dict, config) -> str:
    return "no sharpening needed (every path is linear)"

  def run_reference(self, model, modules: dict, inputs: dict, config) -> dict:
    import torch
    images = torch.from_numpy(np.transpose(inputs["image"], (0, 3, 1, 2)).copy())
    feat, logits = model(images, torch.from_numpy(inputs["camera"]).long())
    return {"feature": feat.numpy(), "logits": logits.numpy()}

  def run_ours(self, variables: dict, inputs: dict, config) -> dict:
    module = models.build(config).module
    feat, logits = module.apply(variables, jnp.asarray(inputs["image"]), jnp.asarray(inputs["camera"]))
    return {"feature": np.asarray(feat), "logits": np.asarray(logits)}


ADAPTER = ToyAdapter()
