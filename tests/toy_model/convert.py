"""The toy model's 'official' PyTorch layout: embed.{weight,bias}, camera.weight, classifier.weight."""
from __future__ import annotations

from jaxmatch.convert.keys import KeyAccountant, torch_linear_to_flax


def from_torch(config, state_dict, **options) -> dict:
  del options
  c = config.model
  acc = KeyAccountant(state_dict, "toy re-ID checkpoint")
  embed_w = acc.take("embed.weight", (c.dim, 6))
  embed_b = acc.take("embed.bias", (c.dim,))
  camera = acc.take("camera.weight", (c.num_cameras, c.dim))
  classifier = acc.take("classifier.weight", (c.num_classes, c.dim))
  acc.finish()
  return {"params": {"embed": {"kernel": torch_linear_to_flax(embed_w), "bias": embed_b},
                     "camera": {"embedding": camera},
                     "classifier": {"kernel": torch_linear_to_flax(classifier)}}}
