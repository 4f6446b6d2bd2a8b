"""TransforMatcher end to end: two ResNet streams -> multi-layer correlation -> match-to-match head.

`TransforMatcher` is the pure linen module (images -> upsampled 4-D match scores). `TransforMatcherModel`
owns what the shared training loop needs from it: variable init, the keypoint loss, predictions for PCK,
the no-learning baseline and the parameter groups (backbone / head learning rates).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from jaxmatch.models.resnet import RESNET_STAGES, ResNet
from jaxmatch.models.transformatcher import geometry
from jaxmatch.models.transformatcher.correlation import multilayer_correlation
from jaxmatch.models.transformatcher.loss import keypoint_loss
from jaxmatch.models.transformatcher.match2match import Match2Match

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(name: str):
  if name not in _DTYPES:
    raise ValueError(f"config.model.dtype must be one of {sorted(_DTYPES)}, got {name!r}")
  return _DTYPES[name]


class TransforMatcher(nn.Module):
  """Source and target backbones are separate parameter sets, as in the official (grouped-conv) code."""
  backbone_depth: int = 101
  tap_stages: Sequence[int] = (3, 4)
  width: int = 16
  heads: int = 8
  head_dim: int = 4
  depth: int = 6
  mlp_ratio: int = 4
  upsample_factor: int = 2
  freeze_backbone: bool = False
  backbone_bn_train: bool = True
  dtype: Any = jnp.float32

  def setup(self):
    if self.backbone_depth not in RESNET_STAGES:
      raise ValueError(f"backbone_depth must be one of {sorted(RESNET_STAGES)}, got {self.backbone_depth}")
    stages = RESNET_STAGES[self.backbone_depth]
    num_stages = max(self.tap_stages)
    self.source_backbone = ResNet(stages, num_stages=num_stages, dtype=self.dtype)
    self.target_backbone = ResNet(stages, num_stages=num_stages, dtype=self.dtype)
    self.match2match = Match2Match(width=self.width, heads=self.heads, head_dim=self.head_dim,
                                   depth=self.depth, mlp_ratio=self.mlp_ratio,
                                   upsample_factor=self.upsample_factor, dtype=self.dtype)

  def _taps(self, backbone, images, train: bool):
    blocks = backbone(images, train=train and self.backbone_bn_train)["blocks"]
    taps = [tap for stage in self.tap_stages for tap in blocks[stage - 1]]
    if self.freeze_backbone:
      taps = [jax.lax.stop_gradient(t) for t in taps]
    return taps

  def correlation(self, src_img, trg_img, train: bool = False):
    """Pre-ReLU multi-layer correlation [B, h, w, h, w, L] at the first tapped stage's resolution."""
    src = self._taps(self.source_backbone, src_img, train)
    trg = self._taps(self.target_backbone, trg_img, train)
    size = src[0].shape[1]
    src = [t.astype(jnp.float32) for t in src]
    trg = [t.astype(jnp.float32) for t in trg]
    return multilayer_correlation(src, trg, size)

  def __call__(self, src_img, trg_img, train: bool = False):
    """Returns the upsampled match scores [B, (2h)^2, (2h)^2]: rows source cells, columns target cells."""
    _, corr_up = self.match2match(self.correlation(src_img, trg_img, train))
    return corr_up


@dataclasses.dataclass(frozen=True)
class TransforMatcherModel:
  """Init, loss, predictions and parameter groups of TransforMatcher for the shared loop."""
  cfg: ConfigDict
  img_size: int

  @property
  def module(self) -> TransforMatcher:
    c = self.cfg
    return TransforMatcher(backbone_depth=c.backbone_depth, tap_stages=tuple(c.tap_stages), width=c.width,
                           heads=c.heads, head_dim=c.head_dim, depth=c.depth, mlp_ratio=c.mlp_ratio,
                           upsample_factor=c.upsample_factor, freeze_backbone=c.freeze_backbone,
                           backbone_bn_train=c.backbone_bn_train, dtype=compute_dtype(c.dtype))

  @property
  def grid(self) -> int:
    """Side of the upsampled correlation grid: the first tapped stage's resolution (15 at 240 px) x 2."""
    stride = 4 * 2 ** (min(self.cfg.tap_stages) - 1)  # stage 1 has stride 4, each later stage doubles it
    return self.img_size // stride * self.cfg.upsample_factor

  def init_variables(self, rng):
    x = jnp.zeros((1, self.img_size, self.img_size, 3), jnp.float32)
    variables = self.module.init(rng, x, x, train=False)
    params, stats = dict(variables["params"]), dict(variables["batch_stats"])
    if self.cfg.same_backbone_init:
      # The official recipe copies one ImageNet ResNet into both streams; with independent random
      # streams, source and target features would not be comparable and the correlation meaningless.
      params["target_backbone"] = params["source_backbone"]
      stats["target_backbone"] = stats["source_backbone"]
    return params, {"batch_stats": stats}

  def param_labels(self, params):
    return {k: jax.tree.map(lambda _: "backbone" if k.endswith("backbone") else "head", v)
            for k, v in params.items()}

  def _transfer(self, corr_up, src_kps_px, mask, tau):
    src = geometry.normalize_kps(src_kps_px, self.img_size)
    return geometry.transfer_keypoints(corr_up, src, mask, grid=self.grid, tau=tau,
                                       sigma=self.cfg.kernel_sigma)

  def loss_fn(self, params, model_state, batch, rng):
    del rng  # TransforMatcher has no dropout or other randomness
    corr_up, updates = self.module.apply({"params": params, **model_state}, batch["src_img"],
                                         batch["trg_img"], train=True, mutable=["batch_stats"])
    pred = self._transfer(corr_up.astype(jnp.float32), batch["src_kps"], batch["kp_mask"],
                          self.cfg.tau_train)
    gt = geometry.normalize_kps(batch["trg_kps"], self.img_size)
    loss = keypoint_loss(pred, gt, batch["kp_mask"])
    return loss, (dict(updates), {})

  def predict(self, params, model_state, batch):
    """Predicted target keypoints in pixels of the resized frame (what PCK compares)."""
    corr_up = self.module.apply({"params": params, **model_state}, batch["src_img"], batch["trg_img"])
    pred = self._transfer(corr_up.astype(jnp.float32), batch["src_kps"], batch["kp_mask"],
                          self.cfg.tau_eval)
    return geometry.unnormalize_kps(pred, self.img_size)

  def predict_raw_argmax(self, params, model_state, batch):
    """No-learning baseline: each keypoint's cell goes to the argmax of the raw (mean, ReLU) correlation."""
    corr = self.module.apply({"params": params, **model_state}, batch["src_img"], batch["trg_img"],
                             method=TransforMatcher.correlation)
    raw = jnp.mean(jax.nn.relu(corr), axis=-1)
    b = raw.shape[0]
    scores = geometry.upsample4d_align_corners(raw, self.grid).reshape(b, self.grid ** 2, self.grid ** 2)
    best = jnp.argmax(scores, axis=-1)
    gx, gy = geometry.grid_coords(self.grid)  # the same cell coordinates the soft-argmax flow uses
    flow = jnp.stack([jnp.asarray(gx)[best], jnp.asarray(gy)[best]], axis=-1)  # [B, S, 2]
    src = geometry.normalize_kps(batch["src_kps"], self.img_size)
    weights = geometry.soft_sampler_weights(src, self.grid, self.cfg.tau_eval)  # [B, K, S]
    return geometry.unnormalize_kps(jnp.einsum("bks,bsc->bkc", weights, flow), self.img_size)
