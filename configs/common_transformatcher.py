"""Parts the TransforMatcher recipes share: the SPair-71k model and optimiser (the official train.py
defaults), evaluation entries, the CPU shrink, and PF-PASCAL training. Recipes load this file with
`jaxmatch.config_utils.load_common(__file__, "common_transformatcher")`."""
from __future__ import annotations

import ml_collections


def _model() -> ml_collections.ConfigDict:
  # Variants of the paper's ablations (the defaults are the official code's choices):
  #   attention   additive | performer | linformer | softmax   (Table 3; softmax refuses above
  #               max_attention_bytes, e.g. at 15^4 tokens, naming the memory it would need)
  #   position    rotary | absolute | none                      (Table 2)
  #   correlation multi | concat | mean                         (Table A2, single-channel maps)
  # performer_features and linformer_k are not given by the paper or its code (see their modules).
  return ml_collections.ConfigDict(dict(
      name="transformatcher", backbone_depth=101, tap_stages=(3, 4), width=16, heads=8, head_dim=4,
      depth=6, mlp_ratio=4, upsample_factor=2, kernel_sigma=10.0, tau_train=0.1, tau_eval=0.05,
      freeze_backbone=False, backbone_bn_train=True, same_backbone_init=True, dtype="float32",
      attention="additive", position="rotary", correlation="multi", performer_features=256,
      linformer_k=256, max_attention_bytes=8 * 2 ** 30, performer_eval_seed=0))


def _data() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      dataset="spair", manual_dir="", data_dir="", img_size=240, max_kps=40, augment=True,
      num_workers=2, train_split="trn", val_split="val",
      embedded=ml_collections.ConfigDict(dict(trn=480, val=48, test=96, seed=0))))


def _train() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      batch_size=16, num_epochs=10, num_steps=-1, seed=0,
      optimizer="adam", b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, momentum=0.0, grad_clip_norm=0.0,
      schedule="constant", warmup_steps=0, milestones=(), gamma=0.1,
      learning_rates=ml_collections.ConfigDict(dict(head=1e-3, backbone=1e-5)),
      log_every=50, checkpoint_every=1000, keep_checkpoints=2, eval_every=3334,
      eval_before_training=True, num_devices=0, tensorboard=True))


def benchmark(dataset: str, split: str = "test", thresholds: tuple[str, ...] = (),
              alphas=(0.05, 0.1, 0.15)) -> ml_collections.ConfigDict:
  """One evaluation entry: PCK of `dataset`'s `split` under each threshold kind (default: the official
  one of the dataset; see jaxmatch.tasks.correspondence), read from `manual_dir` or the default place."""
  return ml_collections.ConfigDict(dict(dataset=dataset, split=split, thresholds=tuple(thresholds) or
                                        (dataset,), alphas=tuple(alphas), manual_dir=""))


def _eval() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      batch_size=16, max_pairs=-1, num_figures=4, headline="spair",
      benchmarks=ml_collections.ConfigDict(dict(spair=benchmark("spair")))))


def spair_config(smoke: bool = False) -> ml_collections.ConfigDict:
  """The SPair-71k recipe; `smoke`: its CPU shrink."""
  config = ml_collections.ConfigDict()
  config.task = "correspondence"
  config.model = _model()
  config.data = _data()
  config.train = _train()
  config.eval = _eval()
  if smoke:
    shrink_for_cpu(config)
  return config


def shrink_for_cpu(config: ml_collections.ConfigDict) -> None:
  """Minutes on a 2-core CPU with no pretrained weights to download.

  Same taps as the paper (conv4_x + conv5_x) of a ResNet-50 at 128 px: 9 correlation channels on an 8x8
  grid (8^4 tokens instead of 15^4), upsampled to 16x16. Both streams start from one random initialisation
  and stay frozen; the matcher learns on top with a cosine schedule. The soft-sampler radii and the
  Gaussian width are scaled to the 16-cell output grid (the official values are for 30 cells, where
  tau=0.05 always reaches a cell; at 16 cells it would not).
  """
  config.model.backbone_depth = 50
  config.model.kernel_sigma = 5.0
  config.model.tau_train = 0.19
  config.model.tau_eval = 0.1
  config.model.freeze_backbone = True
  config.model.backbone_bn_train = False
  config.data.img_size = 128
  config.train.batch_size = 8
  config.train.num_steps = 300
  config.train.schedule = "cosine"
  config.train.warmup_steps = 10
  config.train.learning_rates.head = 1e-2
  config.train.learning_rates.backbone = 0.0
  config.train.log_every = 10
  config.train.checkpoint_every = 50
  config.train.eval_every = 0
  config.eval.batch_size = 16


PFPASCAL_TRAIN_PAIRS = 2940


def parse_args(arg: str | None) -> set[str]:
  words = {w.strip() for w in (arg or "").split(",") if w.strip()}
  unknown = sorted(words - {"smoke", "noaug"})
  if unknown:
    raise ValueError(f"unknown config arguments {unknown}; available: smoke, noaug (comma-separated)")
  return words


def pfpascal_training(arg: str | None) -> ml_collections.ConfigDict:
  """PF-PASCAL training on the SPair recipe's model and optimiser (and, with 'smoke', its CPU shrink)."""
  words = parse_args(arg)
  config = spair_config(smoke="smoke" in words)
  config.data.dataset = "pfpascal"
  config.data.augment = "noaug" not in words
  config.data.embedded.update(dict(trn=240, val=48, test=96))
  if "smoke" not in words:
    steps_per_epoch = PFPASCAL_TRAIN_PAIRS // config.train.batch_size
    config.train.eval_every = steps_per_epoch
    config.train.checkpoint_every = steps_per_epoch
  return config


def pf_benchmarks() -> dict:
  """PF-PASCAL test and PF-WILLOW under both labelled thresholds (see the PF-PASCAL recipe)."""
  return dict(pfpascal=benchmark("pfpascal"),
              pfwillow=benchmark("pfwillow", thresholds=("pfwillow", "pfwillow_bbox_kp")))
