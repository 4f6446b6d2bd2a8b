"""TransforMatcher end to end: two ResNet streams -> multi-layer correlation -> match-to-match head.

`TransforMatcher` is the pure linen module (images -> upsampled 4-D match scores). `TransforMatcherModel`
owns what the shared training loop needs from it: variable init, the keypoint loss, predictions for PCK,
dense target -> source positions, the no-learning baseline and the parameter groups (backbone / head
learning rates).

Variants (config.model; defaults reproduce the official code): `attention` additive | performer |
linformer | softmax, `position` rotary | absolute | none, `correlation` multi | concat | mean, with
`performer_features`, `linformer_k`, `max_attention_bytes`, `performer_eval_seed` (see `variants`,
`positional`, `correlation`). Configs written before these keys existed get the defaults. Performer
features are random: training draws them from the loss rng of each step, evaluation from the fixed
`performer_eval_seed`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from jaxmatch.models.common import compute_dtype
from jaxmatch.models.resnet import RESNET_STAGES, ResNet
from jaxmatch.models.transformatcher import geometry
from jaxmatch.models.transformatcher.correlation import CORRELATION_MODES, correlation_by_mode
from jaxmatch.models.transformatcher.loss import keypoint_loss
from jaxmatch.models.transformatcher.linformer import DEFAULT_PROJECTED_LENGTH
from jaxmatch.models.transformatcher.match2match import Match2Match
from jaxmatch.models.transformatcher.performer import DEFAULT_NUM_FEATURES, RNG_STREAM
from jaxmatch.models.transformatcher.positional import check_position_mode
from jaxmatch.models.transformatcher.vanilla import DEFAULT_MAX_ATTENTION_BYTES
from jaxmatch.models.transformatcher.variants import check_attention

# Variant keys and their defaults (the official code's choices), for configs that predate them.
VARIANT_DEFAULTS = dict(attention="additive", position="rotary", correlation="multi",
                        performer_features=DEFAULT_NUM_FEATURES, linformer_k=DEFAULT_PROJECTED_LENGTH,
                        max_attention_bytes=DEFAULT_MAX_ATTENTION_BYTES, performer_eval_seed=0)


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
  attention: str = "additive"
  position: str = "rotary"
  correlation_mode: str = "multi"
  performer_features: int = DEFAULT_NUM_FEATURES
  linformer_k: int = DEFAULT_PROJECTED_LENGTH
  max_attention_bytes: int = DEFAULT_MAX_ATTENTION_BYTES

  def setup(self):
    if self.backbone_depth not in RESNET_STAGES:
      raise ValueError(f"backbone_depth must be one of {sorted(RESNET_STAGES)}, got {self.backbone_depth}")
    stages = RESNET_STAGES[self.backbone_depth]
    num_stages = max(self.tap_stages)
    self.source_backbone = ResNet(stages, num_stages=num_stages, dtype=self.dtype)
    self.target_backbone = ResNet(stages, num_stages=num_stages, dtype=self.dtype)
    self.match2match = Match2Match(width=self.width, heads=self.heads, head_dim=self.head_dim,
                                   depth=self.depth, mlp_ratio=self.mlp_ratio,
                                   upsample_factor=self.upsample_factor, dtype=self.dtype,
                                   attention=self.attention, position=self.position,
                                   performer_features=self.performer_features, linformer_k=self.linformer_k,
                                   max_attention_bytes=self.max_attention_bytes)

  def _taps(self, backbone, images, train: bool):
    blocks = backbone(images, train=train and self.backbone_bn_train)["blocks"]
    taps = [tap for stage in self.tap_stages for tap in blocks[stage - 1]]
    if self.freeze_backbone:
      taps = [jax.lax.stop_gradient(t) for t in taps]
    return taps

  def correlation(self, src_img, trg_img, train: bool = False):
    """Correlation [B, h, w, h, w, C] at the first tapped stage's resolution: the pre-ReLU multi-layer
    map (C = L taps) or a single-channel variant (C = 1), per `correlation_mode`."""
    src = self._taps(self.source_backbone, src_img, train)
    trg = self._taps(self.target_backbone, trg_img, train)
    size = src[0].shape[1]
    src = [t.astype(jnp.float32) for t in src]
    trg = [t.astype(jnp.float32) for t in trg]
    return correlation_by_mode(self.correlation_mode, src, trg, size)

  def __call__(self, src_img, trg_img, train: bool = False):
    """Returns the upsampled match scores [B, (2h)^2, (2h)^2]: rows source cells, columns target cells."""
    _, corr_up = self.match2match(self.correlation(src_img, trg_img, train))
    return corr_up


@dataclasses.dataclass(frozen=True)
class TransforMatcherModel:
  """Init, loss, predictions and parameter groups of TransforMatcher for the shared loop."""
  cfg: ConfigDict
  img_size: int

  def __post_init__(self):
    check_attention(self.variant("attention"))
    check_position_mode(self.variant("position"))
    if self.variant("correlation") not in CORRELATION_MODES:
      raise ValueError(f"config.model.correlation must be one of {CORRELATION_MODES}, "
                       f"got {self.variant('correlation')!r}")

  def variant(self, key: str):
    """config.model.<key>, or the official default for configs without the variant keys."""
    return self.cfg.get(key, VARIANT_DEFAULTS[key])

  @property
  def module(self) -> TransforMatcher:
    c, v = self.cfg, self.variant
    return TransforMatcher(backbone_depth=c.backbone_depth, tap_stages=tuple(c.tap_stages), width=c.width,
                           heads=c.heads, head_dim=c.head_dim, depth=c.depth, mlp_ratio=c.mlp_ratio,
                           upsample_factor=c.upsample_factor, freeze_backbone=c.freeze_backbone,
                           backbone_bn_train=c.backbone_bn_train, dtype=compute_dtype(c.dtype),
                           attention=v("attention"), position=v("position"), correlation_mode=v("correlation"),
                           performer_features=int(v("performer_features")), linformer_k=int(v("linformer_k")),
                           max_attention_bytes=int(v("max_attention_bytes")))

  def eval_rngs(self) -> dict:
    """The fixed key of evaluation-time random features (Performer); unused by the other variants."""
    return {RNG_STREAM: jax.random.key(int(self.variant("performer_eval_seed")))}

  @property
  def grid(self) -> int:
    """Side of the upsampled correlation grid: the first tapped stage's resolution (15 at 240 px) x 2."""
    stride = 4 * 2 ** (min(self.cfg.tap_stages) - 1)  # stage 1 has stride 4, each later stage doubles it
    return self.img_size // stride * self.cfg.upsample_factor

  def init_variables(self, rng):
    x = jnp.zeros((1, self.img_size, self.img_size, 3), jnp.float32)
    # `rng` alone seeds the parameters (as before the variants existed); features get a derived key.
    variables = self.module.init({"params": rng, RNG_STREAM: jax.random.fold_in(rng, 1)}, x, x, train=False)
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
    # The step's rng only feeds Performer's random features; the official model has no randomness.
    corr_up, updates = self.module.apply({"params": params, **model_state}, batch["src_img"],
                                         batch["trg_img"], train=True, mutable=["batch_stats"],
                                         rngs={RNG_STREAM: rng})
    pred = self._transfer(corr_up.astype(jnp.float32), batch["src_kps"], batch["kp_mask"],
                          self.cfg.tau_train)
    gt = geometry.normalize_kps(batch["trg_kps"], self.img_size)
    loss = keypoint_loss(pred, gt, batch["kp_mask"])
    return loss, (dict(updates), {})

  def predict(self, params, model_state, batch):
    """Predicted target keypoints in pixels of the resized frame (what PCK compares)."""
    corr_up = self.module.apply({"params": params, **model_state}, batch["src_img"], batch["trg_img"],
                                rngs=self.eval_rngs())
    pred = self._transfer(corr_up.astype(jnp.float32), batch["src_kps"], batch["kp_mask"],
                          self.cfg.tau_eval)
    return geometry.unnormalize_kps(pred, self.img_size)

  def predict_dense(self, params, model_state, batch):
    """[B, g, g, 2]: for each target cell (row y, column x of the g x g output grid), the (x, y) source
    position in pixels of the resized source image (kernel soft-argmax over the source cells)."""
    corr_up = self.module.apply({"params": params, **model_state}, batch["src_img"], batch["trg_img"],
                                rngs=self.eval_rngs())
    return geometry.dense_source_positions(corr_up.astype(jnp.float32), self.img_size, self.grid,
                                           self.cfg.kernel_sigma)

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


def build(config: ConfigDict) -> TransforMatcherModel:
  return TransforMatcherModel(config.model, img_size=config.data.img_size)
