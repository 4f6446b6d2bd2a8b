"""Pooled colour statistics -> linear embedding + a per-camera offset -> classifier."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
from ml_collections import ConfigDict

from jaxmatch.losses import accuracy, cross_entropy
from jaxmatch.numerics import l2_normalize


class ToyReid(nn.Module):
  num_classes: int
  num_cameras: int
  dim: int = 16

  @nn.compact
  def __call__(self, images, camera):
    pooled = jnp.concatenate([images.mean(axis=(1, 2)), images.std(axis=(1, 2))], axis=-1)
    feat = nn.Dense(self.dim, name="embed")(pooled) + nn.Embed(self.num_cameras, self.dim, name="camera")(camera)
    return feat, nn.Dense(self.num_classes, use_bias=False, name="classifier")(feat)


@dataclasses.dataclass(frozen=True)
class ToyReidModel:
  cfg: ConfigDict
  img_size: tuple

  @property
  def module(self) -> ToyReid:
    return ToyReid(int(self.cfg.num_classes), int(self.cfg.num_cameras), int(self.cfg.dim))

  def init_variables(self, rng):
    h, w = self.img_size
    variables = self.module.init(rng, jnp.zeros((2, h, w, 3)), jnp.zeros((2,), jnp.int32))
    return variables["params"], {}

  def param_labels(self, params):
    return {k: {n: "head" for n in v} for k, v in params.items()}

  def loss_fn(self, params, model_state, batch, rng):
    del rng
    _, logits = self.module.apply({"params": params}, batch["image"], batch["camera"])
    loss = cross_entropy(logits, batch["label"])
    return loss, (model_state, {"accuracy": accuracy(logits, batch["label"])})

  def embed(self, params, model_state, batch):
    feat, _ = self.module.apply({"params": params}, batch["image"], batch["camera"])
    return l2_normalize(feat)


def build(config: ConfigDict) -> ToyReidModel:
  return ToyReidModel(config.model, tuple(config.data.img_size))
