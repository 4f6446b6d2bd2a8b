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

from jaxmatch.config_utils import load_common

common = load_common(__file__, "common_transformatcher")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "", "smoke"):
    raise ValueError(f"unknown config argument {arg!r}; available: smoke")
  return common.spair_config(smoke=arg == "smoke")
