"""TransReID (He et al., ICCV 2021) as the official code builds it: a ViT with overlapping patches, side
information embeddings (SIE) and the jigsaw patch module (JPM), one BNNeck + classifier per branch.

Forward (JPM, the shipped configs):
  tokens = [cls; patches] + pos_embed + sie_coe * sie_embed[row]        (row broadcast to every token)
  z      = blocks 0 .. depth-2 of the backbone (no final LayerNorm)
  global = b1(z)[:, 0]                b1 = a copy of the last block + the final LayerNorm
  local k= b2([z_cls; G_k])[:, 0]     b2 = a second copy, shared by the 4 groups
where G_k is the k-th slice of the patch tokens rotated left by shift-1 (the code's off-by-one), padded
with one copy of r[N-2] when N is odd, and interleaved over 2 groups (`jpm_order`). Without JPM: all
blocks + final LayerNorm -> cls token -> one neck.

SIE table (official gating): cameras C > 1 and views V > 1 -> C*V rows, row camera*V + view; only one of
them > 1 -> that table, row its id; neither -> no embedding. The gather is jitted, where JAX would clamp an
out-of-range id to the last row; here it fills NaN instead (loud), and `check_side_info` validates host
arrays with a ValueError naming the id and the table size (`embed` calls it on host inputs).

config.model schema (ConfigDict), code-first defaults (configs/MSMT17/vit_transreid_stride.yml):
  name='transreid'
  backbone='vit_base'      vit_base | deit_base | vit_small (old timm: 768-d, 8 blocks) | deit_small
  embed_dim=0, depth=0, num_heads=0, mlp_ratio=0.0   non-zero: override the backbone table (tests)
  stride=12                patch stride (int or (h, w)): 16 plain, 14 / 12 / 11 overlapping
  drop_path=0.1            stochastic depth rate of the last block (linear 0 -> rate over the depth)
  sie_camera=True, sie_view=False, sie_coe=3.0
  num_cameras=0, num_views=0   distinct camera / view values of the training split (task or checkpoint)
  jpm=True, rearrange=True, shift_num=5, shuffle_groups=2, num_parts=4
  num_classes              training identities (task or checkpoint)
  neck_feat='before'       test feature from the pre-BN ('before') or post-BN ('after') features
  local_at_inference=True  append the JPM local features to the test feature
  feature_form='code'      'code': local features / 4 (the code's literal); 'paper': plain concatenation
  feat_norm=True           L2-normalise the test feature (the evaluator's FEAT_NORM)
  id_loss_weight=1.0, triplet_weight=1.0, label_smoothing=0.0, triplet_margin=0.0 (<= 0: soft margin)
  pretrained=''            timm ImageNet ViT / DeiT file for `imagenet_start`
  dtype='float32'          compute dtype (parameters, softmax, LayerNorm and BN statistics float32)

Loss as coded: 0.5 * (CE + Tri)(global) + 0.5 * mean_k (CE + Tri)(local k), triplet batch-hard on the
pre-BN features with non-squared Euclidean distances (without JPM: CE + Tri of the one branch).

Parameter groups (`param_labels`): 'bias' for every parameter whose official name contains 'bias'
(Linear / conv / LayerNorm shifts: the official optimizer gives them BASE_LR * BIAS_LR_FACTOR and
WEIGHT_DECAY_BIAS), FROZEN for the BNNeck shifts (requires_grad False), 'base' for the rest. A recipe
sets config.train.learning_rates = dict(base=BASE_LR, bias=2 * BASE_LR) (and, if WEIGHT_DECAY_BIAS
differs, config.train.group_overrides.bias.weight_decay). Drop path draws from the 'droppath' rng.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from jaxmatch.losses import accuracy, cross_entropy, triplet_loss
from jaxmatch.models.common import compute_dtype, image_size
from jaxmatch.models.reid.bnneck import BNNeck
from jaxmatch.models.vit import Block, ViTArch, VisionTransformer, arch_of, drop_path_rates, layer_norm, \
  pair, patch_grid, trunc_normal_02
from jaxmatch.numerics import l2_normalize
from jaxmatch.param_groups import FROZEN

SIE_MODES = ("none", "camera", "view", "both")
NECK_FEATS = ("before", "after")
FEATURE_FORMS = ("code", "paper")
LOCAL_DIVISOR = 4.0  # the code divides each local feature by the literal 4 (= DEVIDE_LENGTH)


# ------------------------------------------------------------------ side information

def sie_layout(num_cameras: int, num_views: int, use_camera: bool, use_view: bool) -> tuple[str, int]:
  """(mode, table rows) as the official gating decides them."""
  cams = int(num_cameras) if use_camera else 0
  views = int(num_views) if use_view else 0
  for what, flag, count in (("camera", use_camera, cams), ("view", use_view, views)):
    if flag and count < 1:
      raise ValueError(f"SIE {what} is on but num_{what}s is {count}: set config.model.num_{what}s")
    if flag and count == 1:
      # The official model creates no table for a single value and then crashes in its forward.
      raise ValueError(f"SIE {what} is on but the data has a single {what} value; turn sie_{what} off")
  if cams > 1 and views > 1:
    return "both", cams * views
  if cams > 1:
    return "camera", cams
  if views > 1:
    return "view", views
  return "none", 0


def sie_rows(mode: str, num_views: int, camera, view):
  """Row of the SIE table for each sample (jnp or numpy)."""
  if mode == "both":
    return camera * num_views + view
  return camera if mode == "camera" else view


def check_side_info(camera, view, mode: str, num_cameras: int, num_views: int) -> None:
  """Host-side check that every camera / view id has a row; a ValueError names the id and the size."""
  for what, ids, size, used in (("camera", camera, num_cameras, mode in ("camera", "both")),
                                ("view", view, num_views, mode in ("view", "both"))):
    if not used:
      continue
    if ids is None:
      raise ValueError(f"SIE uses {what} ids, but none were given")
    ids = np.asarray(ids)
    bad = ids[(ids < 0) | (ids >= size)]
    if bad.size:
      raise ValueError(f"{what} id {int(bad[0])} is outside the SIE table of {size} {what}s (ids 0..{size - 1}); "
                       f"cameras / views unseen in training have no embedding")


# ------------------------------------------------------------------ JPM

def jpm_order(num_patches: int, shift: int, groups: int, parts: int, rearrange: bool = True):
  """(shuffled order of patch indices incl. padding, indices of the `parts` groups [parts, N // parts])."""
  n = num_patches
  length = n // parts
  if not rearrange:
    order = np.arange(n)
    return order, order[:parts * length].reshape(parts, length)
  rotated = np.roll(np.arange(n), -(shift - 1))  # r[i] = patch[(i + shift - 1) mod N]
  if n % groups:
    rotated = np.concatenate([rotated, rotated[-2:-1]])  # the code appends r[N-2]
  if rotated.size % groups:
    raise ValueError(f"{n} patches cannot be split into {groups} shuffle groups (the official code fails too)")
  order = rotated.reshape(groups, -1).T.reshape(-1)
  return order, order[:parts * length].reshape(parts, length)


# ------------------------------------------------------------------ module

class Branch(nn.Module):
  """A copy of the last block followed by the final LayerNorm (official b1 / b2 = Sequential(block, norm))."""
  block: dict

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = Block(**self.block, name="block")(x, train=train)
    return layer_norm(self.block["dtype"], "norm")(x)


class TransReID(nn.Module):
  """images [B, H, W, 3], camera / view ids [B] -> every stage, features, BN features and logits."""
  num_classes: int
  img_size: Sequence[int]
  arch: ViTArch
  stride: Sequence[int] = (12, 12)
  drop_path_rate: float = 0.1
  sie_mode: str = "camera"
  sie_table: int = 0
  num_views: int = 1
  sie_coe: float = 3.0
  jpm: bool = True
  rearrange: bool = True
  shift_num: int = 5
  shuffle_groups: int = 2
  num_parts: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, camera=None, view=None, train: bool = False) -> dict:
    base = VisionTransformer(self.img_size, self.arch, tuple(self.stride), self.drop_path_rate,
                             num_blocks=self.arch.depth - 1 if self.jpm else None, final_norm=not self.jpm,
                             dtype=self.dtype, name="base")
    out = base(images, side=self._side(camera, view, images.shape[0]), train=train)
    if not self.jpm:
      feats = [out["out"][:, 0]]
    else:
      feats = self._jpm(out, base.block_kwargs(drop_path_rates(self.drop_path_rate, self.arch.depth)[-1]), train)
    names = ["neck"] + [f"neck_{k}" for k in range(1, len(feats))]
    necks = [BNNeck(self.num_classes, dtype=self.dtype, name=n)(f, train=train) for n, f in zip(names, feats)]
    out.update(feats=feats, bn_feats=[b for b, _ in necks], logits=[lg for _, lg in necks])
    return out

  def _side(self, camera, view, batch: int):
    if self.sie_mode == "none":
      return None
    table = self.param("sie_embed", trunc_normal_02, (self.sie_table, 1, self.arch.embed_dim), jnp.float32)
    if camera is None and self.sie_mode in ("camera", "both") or view is None and self.sie_mode in ("view", "both"):
      raise ValueError(f"SIE ({self.sie_mode}) needs the camera / view ids of every image")
    rows = sie_rows(self.sie_mode, self.num_views, jnp.asarray(camera if camera is not None else 0),
                    jnp.asarray(view if view is not None else 0))
    # mode='fill': an id without a row gives NaN features, never a silently clamped row.
    picked = jnp.take(table, rows.astype(jnp.int32).reshape(batch), axis=0, mode="fill", fill_value=jnp.nan)
    return jnp.asarray(self.sie_coe, jnp.float32) * picked

  def _jpm(self, out: dict, block: dict, train: bool) -> list:
    z = out["out"]
    b, n, d = z.shape
    order, groups = jpm_order(n - 1, self.shift_num, self.shuffle_groups, self.num_parts, self.rearrange)
    out["b1_out"] = Branch(block, name="b1")(z, train=train)
    out["rearranged"] = z[:, 1 + order]
    parts = z[:, 1 + groups.reshape(-1)].reshape(b, self.num_parts, -1, d)
    cls = jnp.broadcast_to(z[:, None, :1], (b, self.num_parts, 1, d))
    seqs = jnp.concatenate([cls, parts], axis=2).transpose(1, 0, 2, 3)  # [parts, B, 1 + L, D]
    # One call over the stacked groups (group-major batch); each sample still draws its own drop path.
    b2 = Branch(block, name="b2")(seqs.reshape((-1,) + seqs.shape[2:]), train=train)
    out["b2_out"] = b2.reshape(seqs.shape)
    return [out["b1_out"][:, 0]] + [out["b2_out"][k, :, 0] for k in range(self.num_parts)]


# ------------------------------------------------------------------ the model object

def _arch(c: ConfigDict) -> ViTArch:
  return arch_of(c.get("backbone", "vit_base"), embed_dim=int(c.get("embed_dim", 0) or 0),
                 depth=int(c.get("depth", 0) or 0), num_heads=int(c.get("num_heads", 0) or 0),
                 mlp_ratio=float(c.get("mlp_ratio", 0.0) or 0.0))


def _choice(c: ConfigDict, key: str, default: str, allowed: Sequence[str]) -> str:
  value = c.get(key, default)
  if value not in allowed:
    raise ValueError(f"config.model.{key} must be one of {tuple(allowed)}, got {value!r}")
  return value


@dataclasses.dataclass(frozen=True)
class TransReIDModel:
  """Init, losses, test feature and parameter groups of TransReID for the shared loop and re-ID task."""
  cfg: ConfigDict
  img_size: Any = (256, 128)

  @property
  def arch(self) -> ViTArch:
    return _arch(self.cfg)

  @property
  def sie(self) -> tuple[str, int]:
    c = self.cfg
    return sie_layout(int(c.get("num_cameras", 0) or 0), int(c.get("num_views", 0) or 0),
                      bool(c.get("sie_camera", True)), bool(c.get("sie_view", False)))

  @property
  def jpm(self) -> bool:
    return bool(self.cfg.get("jpm", True))

  @property
  def module(self) -> TransReID:
    c = self.cfg
    if not c.get("num_classes") or int(c.num_classes) < 2:
      raise ValueError(f"num_classes must be the number of training identities (>= 2), got {c.get('num_classes')}")
    mode, rows = self.sie
    return TransReID(num_classes=int(c.num_classes), img_size=image_size(self.img_size, 16), arch=self.arch,
                     stride=pair(c.get("stride", 12)), drop_path_rate=float(c.get("drop_path", 0.1)),
                     sie_mode=mode, sie_table=rows, num_views=int(c.get("num_views", 0) or 1),
                     sie_coe=float(c.get("sie_coe", 3.0)), jpm=self.jpm, rearrange=bool(c.get("rearrange", True)),
                     shift_num=int(c.get("shift_num", 5)), shuffle_groups=int(c.get("shuffle_groups", 2)),
                     num_parts=int(c.get("num_parts", 4)), dtype=compute_dtype(c.get("dtype", "float32")))

  @property
  def grid(self) -> tuple[int, int]:
    return patch_grid(image_size(self.img_size, 16), self.cfg.get("stride", 12))

  @property
  def feat_dim(self) -> int:
    locals_ = self.jpm and bool(self.cfg.get("local_at_inference", True))
    return self.arch.embed_dim * (1 + int(self.cfg.get("num_parts", 4)) * locals_)

  def check_side_info(self, camera, view=None) -> None:
    """Raises ValueError for a camera / view id outside the SIE table (call on host arrays)."""
    mode, _ = self.sie
    check_side_info(camera, view, mode, int(self.cfg.get("num_cameras", 0) or 0),
                    int(self.cfg.get("num_views", 0) or 0))

  def init_variables(self, rng):
    h, w = image_size(self.img_size, 16)
    ids = jnp.zeros((2,), jnp.int32)
    variables = self.module.init({"params": rng}, jnp.zeros((2, h, w, 3), jnp.float32), ids, ids, train=False)
    return dict(variables["params"]), {"batch_stats": dict(variables["batch_stats"])}

  def param_labels(self, params):
    def label(path, _):
      names = [str(getattr(p, "key", p)) for p in path]
      if names[-1] != "bias":
        return "base"
      return FROZEN if "bottleneck" in names else "bias"
    return jax.tree_util.tree_map_with_path(label, params)

  def apply(self, params, model_state, batch, train: bool, rng=None, extra=None):
    """The module's outputs (and updated model state in training); `extra` adds variable collections."""
    variables = {"params": params, **model_state, **(extra or {})}
    args = (batch["image"], batch.get("camera"), batch.get("view"))
    if train:
      rngs = {} if rng is None else {"droppath": rng}
      out, updates = self.module.apply(variables, *args, train=True, rngs=rngs, mutable=["batch_stats"])
      return out, {**model_state, **dict(updates)}
    return self.module.apply(variables, *args, train=False), model_state

  def losses(self, outputs: dict, labels) -> dict:
    c = self.cfg
    eps, margin = float(c.get("label_smoothing", 0.0)), float(c.get("triplet_margin", 0.0))
    ce = jnp.stack([cross_entropy(lg, labels, eps) for lg in outputs["logits"]])
    tri = [triplet_loss(f, labels, margin=margin if margin > 0 else None, squared=False) for f in outputs["feats"]]
    tri_losses = jnp.stack([t.loss for t in tri])
    id_loss, tri_loss = _combine(ce), _combine(tri_losses)
    total = float(c.get("id_loss_weight", 1.0)) * id_loss + float(c.get("triplet_weight", 1.0)) * tri_loss
    return {"total": total, "id_loss": id_loss, "triplet_loss": tri_loss, "ce_per_branch": ce,
            "triplet_per_branch": tri_losses, "dist_ap": jnp.stack([t.dist_ap for t in tri]),
            "dist_an": jnp.stack([t.dist_an for t in tri]), "accuracy": accuracy(outputs["logits"][0], labels)}

  def loss_fn(self, params, model_state, batch, rng):
    outputs, model_state = self.apply(params, model_state, batch, train=True, rng=rng)
    terms = self.losses(outputs, batch["label"])
    total = terms.pop("total")
    metrics = {k: v for k, v in terms.items() if jnp.ndim(v) == 0}
    return total, (model_state, metrics)

  def test_feature(self, outputs: dict):
    """The code's test feature: global || local_k / 4, from pre-BN ('before') or BN ('after') features."""
    neck_feat = _choice(self.cfg, "neck_feat", "before", NECK_FEATS)
    form = _choice(self.cfg, "feature_form", "code", FEATURE_FORMS)
    feats = outputs["feats" if neck_feat == "before" else "bn_feats"]
    if not self.cfg.get("local_at_inference", True):
      feats = feats[:1]
    divisor = LOCAL_DIVISOR if form == "code" else 1.0
    parts = [feats[0]] + [f / divisor for f in feats[1:]]
    return jnp.concatenate(parts, axis=-1).astype(jnp.float32)

  def embed(self, params, model_state, batch, normalize: bool | None = None):
    """[B, feat_dim] float32 test features (L2-normalised as the evaluator does, unless told otherwise)."""
    camera, view = batch.get("camera"), batch.get("view")
    if not any(isinstance(x, jax.core.Tracer) for x in (camera, view)):
      self.check_side_info(camera, view)
    outputs, _ = self.apply(params, model_state, batch, train=False)
    feat = self.test_feature(outputs)
    if self.cfg.get("feat_norm", True) if normalize is None else normalize:
      feat = l2_normalize(feat)
    return feat


def _combine(per_branch):
  """Official weighting: one branch as is; with JPM 0.5 * global + 0.5 * mean of the local branches."""
  if per_branch.shape[0] == 1:
    return per_branch[0]
  return 0.5 * (jnp.sum(per_branch[1:]) / (per_branch.shape[0] - 1)) + 0.5 * per_branch[0]


def build(config: ConfigDict) -> TransReIDModel:
  return TransReIDModel(config.model, img_size=config.data.img_size)
