"""The re-ID strong baseline (BoT, Luo et al. 2019): ResNet-50 with last stride 1 -> global average
pooling -> [optional projection] -> BNNeck -> classifier, trained with ID + triplet (+ center) losses.

NFormer and KPM start from this encoder; NFormer's variant adds a Linear(2048 -> 256) projection before
the neck (`embed_dim=256`). `StrongBaseline` is the pure linen module; `BaselineModel` is what the shared
training loop and the re-ID task call (init, parameter groups, loss, test-time embedding).

config.model schema (ConfigDict):
  name='baseline'
  depth=50                 ResNet depth (50/101/152); `stage_sizes` overrides the blocks per stage
  stage_sizes=None         e.g. (1, 1, 1, 1) for a tiny test network
  last_stride=1            stride of layer4 (1: 16x8 map for 256x128 inputs; no dilation, as the code)
  stem_relu=True           False: the official BoT/NFormer stem (no ReLU between bn1 and max-pool)
  embed_dim=0              > 0: Linear(2048 -> embed_dim) before the neck (NFormer's encoder: 256)
  num_classes              number of training identities; set by the task from the training ids
  neck='bnneck'            'bnneck' (BN with frozen zero bias + bias-free classifier) | 'no' (classifier
                           with bias straight on the pooled feature)
  neck_feat='after'        test feature: 'after' the BNNeck BN or 'before' it
  feat_norm=True           L2-normalise the test feature (official FEAT_NORM 'yes', eps 1e-12)
  id_loss_weight=1.0       weight of the (label-smoothed) cross-entropy on the classifier logits
  label_smoothing=0.1      eps of CrossEntropyLabelSmooth; 0 = plain cross-entropy
  triplet_weight=1.0       weight of the batch-hard triplet loss on the pre-BN feature; 0 = off
  triplet_margin=0.3       > 0: hard margin; <= 0: soft margin (softplus)
  triplet_squared=False    squared Euclidean distances for mining and loss
  triplet_normalize=False  L2-normalise the features before the triplet loss (TransReID's flag)
  center_loss_weight=5e-4  weight of the center loss on the pre-BN feature; 0 = no centres at all
  pretrained=''            torchvision resnet{depth} weights (.pth/.safetensors/.npz) for the backbone
  dtype='float32'          compute dtype (parameters and BN statistics stay float32)

Parameter groups (`param_labels`): 'backbone' (the ResNet), 'head' (projection, BNNeck, classifier) and
'centers' (the center-loss centres, params['centers'] [num_classes, feat_dim]); the BNNeck shift is
labelled 'frozen' (no update at all, as it is absent from the official optimizer). The official recipe
trains the centres with their own SGD at lr 0.5 on the UNWEIGHTED center-loss gradient; the loss here is
the plain weighted sum, so the config must give the group that rescaling:
  config.train.learning_rates.centers = 0.5
  config.train.group_overrides.centers = dict(optimizer='sgd', momentum=0.0, weight_decay=0.0,
                                              schedule='constant', grad_scale=1 / center_loss_weight)

The metric losses see the batch the loss is called with; under jax.jit with the batch sharded over a
mesh that is the global batch (mining and BatchNorm statistics over all devices), where the official
single-GPU run sees its one batch of 64 too. Training batches are full PK batches (no padding rows).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from jaxmatch.losses import accuracy, center_loss, cross_entropy, init_centers, triplet_loss
from jaxmatch.models.common import compute_dtype, image_size
from jaxmatch.models.layers import linear_torch_bias, linear_torch_kernel
from jaxmatch.models.reid.bnneck import BNNeck, classifier_init
from jaxmatch.models.resnet import EXPANSION, RESNET_STAGES, ResNet, stage_features
from jaxmatch.numerics import l2_normalize
from jaxmatch.param_groups import FROZEN

NECKS = ("bnneck", "no")
NECK_FEATS = ("after", "before")


class StrongBaseline(nn.Module):
  """images [B, H, W, 3] -> {'global_feat' (pre-neck), 'feat' (after the neck BN), 'logits'}."""
  num_classes: int
  stage_sizes: Sequence[int] = RESNET_STAGES[50]
  last_stride: int = 1
  stem_relu: bool = True
  embed_dim: int = 0
  neck: str = "bnneck"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False) -> dict:
    self._check_config()
    pooled = self._pooled(images, train)
    global_feat = pooled
    if self.embed_dim:
      # nn.Linear default init, as the official projection (not passed through Kaiming init).
      global_feat = nn.Dense(self.embed_dim, dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=linear_torch_kernel, bias_init=linear_torch_bias(pooled.shape[-1]),
                             name="projection")(pooled)
    if self.neck == "bnneck":
      feat, logits = BNNeck(self.num_classes, dtype=self.dtype, name="neck")(global_feat, train=train)
    else:
      feat = global_feat
      logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                        kernel_init=classifier_init, name="classifier")(global_feat)
    return {"global_feat": global_feat, "feat": feat, "logits": logits}

  def _pooled(self, images, train: bool):
    blocks = ResNet(self.stage_sizes, last_stride=self.last_stride, dtype=self.dtype, stem_relu=self.stem_relu,
                    name="backbone")(images, train=train)["blocks"]
    # Pool in float32: a mean over many bf16 values loses precision.
    return jnp.mean(blocks[-1][-1].astype(jnp.float32), axis=(1, 2)).astype(self.dtype)

  def _check_config(self):
    if self.neck not in NECKS:
      raise ValueError(f"neck must be one of {NECKS}, got {self.neck!r}")
    if not self.num_classes or self.num_classes < 2:
      raise ValueError(f"num_classes must be the number of training identities (>= 2), got {self.num_classes}")
    if len(self.stage_sizes) != 4:
      raise ValueError(f"stage_sizes needs 4 stages, got {tuple(self.stage_sizes)}")


@dataclasses.dataclass(frozen=True)
class BaselineModel:
  """Init, losses, test feature and parameter groups of the strong baseline for the shared loop."""
  cfg: ConfigDict
  img_size: Any = (256, 128)

  @property
  def module(self) -> StrongBaseline:
    c = self.cfg
    return StrongBaseline(num_classes=int(c.num_classes), stage_sizes=self.stage_sizes,
                          last_stride=int(c.get("last_stride", 1)), stem_relu=bool(c.get("stem_relu", True)),
                          embed_dim=int(c.get("embed_dim", 0) or 0), neck=c.get("neck", "bnneck"),
                          dtype=compute_dtype(c.get("dtype", "float32")))

  @property
  def stage_sizes(self) -> tuple[int, ...]:
    if self.cfg.get("stage_sizes"):
      return tuple(int(s) for s in self.cfg.stage_sizes)
    depth = int(self.cfg.get("depth", 50))
    if depth not in RESNET_STAGES:
      raise ValueError(f"config.model.depth must be one of {sorted(RESNET_STAGES)}, got {depth}")
    return RESNET_STAGES[depth]

  @property
  def feat_dim(self) -> int:
    """Dimension of the pre-neck feature (triplet, centres) and of the test feature."""
    return int(self.cfg.get("embed_dim", 0) or 0) or stage_features(4) * EXPANSION

  def init_variables(self, rng):
    net_rng, center_rng = jax.random.split(rng)
    h, w = image_size(self.img_size, min_side=16)  # layer3 (and layer4, last stride 1) is 1/16
    # Batch of 2: init runs the train-free path, but keep shapes honest for BatchNorm.
    variables = self.module.init(net_rng, jnp.zeros((2, h, w, 3), jnp.float32), train=False)
    params, stats = dict(variables["params"]), dict(variables["batch_stats"])
    if self.cfg.get("pretrained") and self.cfg.get("stage_sizes"):
      raise ValueError("config.model.pretrained loads a torchvision ResNet; leave stage_sizes unset")
    if self.cfg.get("center_loss_weight", 0.0):
      params["centers"] = init_centers(center_rng, int(self.cfg.num_classes), self.feat_dim)
    return params, {"batch_stats": stats}

  def param_labels(self, params):
    def group(name):
      return "backbone" if name == "backbone" else "centers" if name == "centers" else "head"
    labels = {k: jax.tree.map(lambda _, g=group(k): g, v) for k, v in params.items()}
    # The BNNeck shift is outside the official optimizer: its gradient is 0, but coupled L2 would still
    # move a non-zero value (e.g. a converted checkpoint's), so it is frozen rather than decayed.
    if "bias" in labels.get("neck", {}).get("bottleneck", {}):
      labels["neck"]["bottleneck"]["bias"] = FROZEN
    return labels

  def _apply(self, params, model_state, images, train: bool):
    net_params = {k: v for k, v in params.items() if k != "centers"}
    variables = {"params": net_params, **model_state}
    if train:
      out, updates = self.module.apply(variables, images, train=True, mutable=["batch_stats"])
      return out, dict(updates)
    return self.module.apply(variables, images, train=False), model_state

  def losses(self, params, outputs: dict, labels) -> dict:
    """Each weighted term and its metrics from the train-mode outputs and int labels [B]."""
    c = self.cfg
    logits, metric_feat = outputs["logits"], outputs["global_feat"]
    terms = {"id_loss": cross_entropy(logits, labels, float(c.get("label_smoothing", 0.1))),
             "accuracy": accuracy(logits, labels)}
    total = float(c.get("id_loss_weight", 1.0)) * terms["id_loss"]
    if c.get("triplet_weight", 1.0):
      margin = float(c.get("triplet_margin", 0.3))
      tri = triplet_loss(metric_feat, labels, margin=margin if margin > 0 else None,
                         squared=bool(c.get("triplet_squared", False)),
                         normalize=bool(c.get("triplet_normalize", False)))
      total = total + float(c.triplet_weight) * tri.loss
      finite_an = jnp.isfinite(tri.dist_an)
      terms.update(triplet_loss=tri.loss, dist_ap=jnp.mean(tri.dist_ap),
                   dist_an=jnp.sum(jnp.where(finite_an, tri.dist_an, 0.0)) / jnp.maximum(finite_an.sum(), 1))
    if c.get("center_loss_weight", 0.0):
      if "centers" not in params:
        raise ValueError("center_loss_weight > 0 but params has no 'centers' (initialise with it set)")
      terms["center_loss"] = center_loss(metric_feat, labels, params["centers"])
      total = total + float(c.center_loss_weight) * terms["center_loss"]
    return {"total": total, **terms}

  def loss_fn(self, params, model_state, batch, rng):
    del rng  # the baseline has no dropout or other randomness
    labels = batch["label"]
    outputs, model_state = self._apply(params, model_state, batch["image"], train=True)
    terms = self.losses(params, outputs, labels)
    total = terms.pop("total")
    return total, (model_state, terms)

  def embed(self, params, model_state, batch, normalize: bool | None = None):
    """The test-time feature [B, feat_dim] in float32: neck_feat 'after' (BN output) or 'before'."""
    neck_feat = self.cfg.get("neck_feat", "after")
    if neck_feat not in NECK_FEATS:
      raise ValueError(f"config.model.neck_feat must be one of {NECK_FEATS}, got {neck_feat!r}")
    outputs, _ = self._apply(params, model_state, batch["image"], train=False)
    feat = outputs["feat" if neck_feat == "after" else "global_feat"].astype(jnp.float32)
    if self.cfg.get("feat_norm", True) if normalize is None else normalize:
      feat = l2_normalize(feat)
    return feat


def build(config: ConfigDict) -> BaselineModel:
  return BaselineModel(config.model, img_size=config.data.img_size)
