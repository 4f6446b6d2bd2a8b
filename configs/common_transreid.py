"""Parts the TransReID recipes share (configs/MSMT17/vit_transreid_stride.yml of the official code): the
model, SGD with bias lr x2 and weight decay on every tensor, the 5-epoch warm-up + cosine per epoch, the
code's augmentation, and a CPU schedule that learns on the embedded synthetic data. Recipes load it with
`jaxmatch.config_utils.load_common(__file__, "common_transreid")`.

Recipe arguments (comma-separated, the paper's rows): 'baseline' (ViT-B/16 stride 16, no JPM, no SIE:
the Baseline(ViT) row), 'stride16' (TransReID at stride 16), 'deit' (DeiT-B/16 backbone, started from the
distilled DeiT-B ImageNet file), 'nolocal' (JPM trained, local features left out at inference).
"""
from __future__ import annotations

import ml_collections

from jaxmatch.config_utils import load_common

ARGS = ("baseline", "stride16", "deit", "nolocal")
BASE_LR = 0.008


def _model(vehicle: bool) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name="transreid", backbone="vit_base", embed_dim=0, depth=0, num_heads=0, mlp_ratio=0.0, stride=12,
      drop_path=0.1, sie_camera=True, sie_view=vehicle, sie_coe=3.0, num_cameras=0, num_views=0,
      jpm=True, rearrange=True, shift_num=8 if vehicle else 5, shuffle_groups=2, num_parts=4,
      num_classes=0, neck_feat="before", local_at_inference=True, feature_form="code", feat_norm=True,
      id_loss_weight=1.0, triplet_weight=1.0, label_smoothing=0.0, triplet_margin=0.0, pretrained="",
      dtype="float32"))


def _train(base_lr: float) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      batch_size=64, num_epochs=120, num_steps=-1, seed=1234,
      optimizer="sgd", b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4, momentum=0.9, grad_clip_norm=0.0,
      schedule="cosine_warmup_epochs", warmup_steps=0, warmup_epochs=5, warmup_factor=0.01,
      warmup_lr=0.01 * base_lr, min_lr=0.002 * base_lr, milestones=(), gamma=0.1,
      learning_rates=ml_collections.ConfigDict(dict(base=base_lr, bias=2 * base_lr)),
      group_overrides=ml_collections.ConfigDict(dict(bias=dict(weight_decay=1e-4))),
      log_every=50, checkpoint_every=2000, keep_checkpoints=2, eval_every=0,
      eval_before_training=False, num_devices=0, tensorboard=True))


def _augment(data: ml_collections.ConfigDict) -> None:
  data.augment.update(dict(interpolation="bicubic", test_interpolation="bilinear", flip_prob=0.5, pad=10,
                           erasing="timm_pixel", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))


def _embedded_schedule() -> ml_collections.ConfigDict:
  """A 3-block, 64-wide ViT at 128x64 trained from scratch with Adam (no ImageNet weights can be had on
  CPU); the structure (overlapping patches, SIE, JPM, necks, losses) is the recipe's."""
  return ml_collections.ConfigDict(dict(
      model=dict(embed_dim=64, depth=3, num_heads=4, mlp_ratio=4.0, drop_path=0.0),
      data=dict(img_size=(128, 64), augment=dict(erasing="none")),
      train=dict(batch_size=32, num_epochs=60, warmup_epochs=1, optimizer="adam", weight_decay=0.0,
                 warmup_lr=1e-5, min_lr=1e-5, log_every=10, checkpoint_every=100,
                 learning_rates=dict(base=1e-3, bias=1e-3), group_overrides=dict(bias=dict(weight_decay=0.0))),
      eval=dict(batch_size=64)))


def parse_args(arg: str | None) -> set[str]:
  words = {w.strip() for w in (arg or "").split(",") if w.strip()}
  unknown = sorted(words - set(ARGS))
  if unknown:
    raise ValueError(f"unknown config arguments {unknown}; available: {', '.join(ARGS)} (comma-separated)")
  return words


def transreid_config(dataset: str, arg: str | None, *, img_size=(256, 128), vehicle: bool = False,
                     base_lr: float = BASE_LR, batch_size: int = 64) -> ml_collections.ConfigDict:
  """TransReID trained and evaluated on `dataset` (the re-ID platform of configs/common_reid.py)."""
  words = parse_args(arg)
  config = load_common(__file__, "common_reid").baseline_config(dataset)
  config.model = _model(vehicle)
  config.data.img_size = tuple(img_size)
  _augment(config.data)
  config.train = _train(base_lr)
  config.train.batch_size = batch_size
  config.eval.batch_size = 256
  config.embedded_schedule = _embedded_schedule()
  if "baseline" in words:
    config.model.update(dict(stride=16, jpm=False, sie_camera=False, sie_view=False))
  if "stride16" in words:
    config.model.stride = 16
  if "deit" in words:
    config.model.backbone = "deit_base"
  if "nolocal" in words:
    config.model.local_at_inference = False
  return config
