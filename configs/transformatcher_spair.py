r"""TransforMatcher on SPair-71k: the official code's recipe (Kim, Min & Cho, CVPR 2022).

Train and evaluate (the dataset as distributed, unpacked to ~/tensorflow_datasets/downloads/manual/SPair-71k
or named with --config.data.manual_dir):

  python -m jaxmatch.main --config configs/transformatcher_spair.py --workdir runs/tm_spair

Evaluate the checkpoint in a workdir (e.g. one written by `python -m jaxmatch.convert`):

  python -m jaxmatch.main --config configs/transformatcher_spair.py --workdir runs/tm_spair --mode eval

CPU quick run on the embedded synthetic data (128 px, ResNet-50, frozen random backbones, 300 steps; about
6 minutes on 2 cores):

  python -m jaxmatch.main --config configs/transformatcher_spair.py:smoke

Recipe (official train.py): 240x240 inputs, ResNet-101 taps of conv4_x and conv5_x (23 + 3 = 26
correlation channels), 6 additive match-to-match blocks with rotary embedding, Adam lr 1e-3 for the
matcher and 1e-5 for both backbones, batch 16, 10 epochs (3,334 steps each), keypoint-aware crop and the
CATs photometric augmentation, kernel soft-argmax sigma 10, soft sampler tau 0.1 (train) / 0.05 (eval).
ImageNet-initialised backbones: convert torchvision's resnet101 weights with
`python -m jaxmatch.convert --config configs/transformatcher_spair.py --torchvision_resnet FILE` (see README).
Hardware: one GPU with >= 16 GB; the official run reports 54 ms per pair at test time.

Paper, Table 1 (PCK @ alpha_bbox = 0.1 on SPair-71k test, per-pair average):
  TransforMatcher 50.2; TransforMatcher with augmentation (this recipe) 53.7.
  Table 2: alpha 0.05 / 0.1 = 32.4 / 53.7 (rotary + augmentation).
"""
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


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "correspondence"
  config.model = _model()
  config.data = _data()
  config.train = _train()
  config.eval = _eval()
  if arg == "smoke":
    shrink_for_cpu(config)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; available: smoke")
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
