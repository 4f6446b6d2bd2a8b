r"""ResNet-50 strong baseline on Market-1501 (BoT: Luo et al., CVPRW 2019; the encoder NFormer and KPM
start from), as its code trains it.

Train and evaluate (Market-1501 as distributed, unpacked to
~/tensorflow_datasets/downloads/manual/Market-1501-v15.09.15 or named with
--config.data.folders.market1501=PATH):

  python -m jaxmatch.main --config configs/baseline_market.py --workdir runs/baseline_market \
      --config.model.pretrained=resnet50-0676ba61.pth

`pretrained` is torchvision's ImageNet resnet50 file (the official recipe starts from it). Evaluate a
workdir's checkpoint with `--mode eval`; cross-dataset evaluation is one field, e.g.
`--config.eval.datasets="('market1501','msmt17')"`; k-reciprocal re-ranking: `--config.eval.rerank=True`.

Recipe (official code): 256x128 inputs, flip 0.5 + pad 10 / random crop + random erasing 0.5 (BoT
variant, after normalisation); PK batches 16 ids x 4 images; ResNet-50 with last stride 1 and the code's
stem without ReLU, GAP, BNNeck (frozen zero bias), bias-free classifier; label-smoothed (0.1) cross-entropy
+ batch-hard triplet (margin 0.3) + 0.0005 x center loss; Adam 3.5e-4 with coupled L2 5e-4, warmup from
0.01x over 10 epochs, x0.1 at epochs 40 and 70, 120 epochs; centres by SGD lr 0.5 on the unweighted
center-loss gradient. Test feature: the BNNeck output, L2-normalised, euclidean ranking, Market protocol.
Hardware: one GPU with 16 GB (batch 64 at 256x128).

With no dataset on the machine the same command trains on the embedded synthetic dataset (Market-1501
layout, 100 training identities) and switches to the `embedded_schedule` below so that it finishes in
minutes on a CPU: 128x64 images, batch 32 (8 ids x 4), 12 epochs (240 steps), no ImageNet start, so
Adam 1e-3 without the step decay and without random erasing (from a random initialisation the BoT
settings reach only ~19% training accuracy in 240 steps). The switch is printed and the effective
configuration is saved to <workdir>/config.json.

Reported (R-1 / mAP, %, Market-1501): BoT paper, ResNet-50 baseline with BNNeck + center loss
94.1 / 85.7; NFormer paper Table 4, its ResNet-50 encoder 93.2 / 83.5.
"""
from __future__ import annotations

import ml_collections

from jaxmatch.config_utils import load_common

common = load_common(__file__, "common_reid")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f"unknown config argument {arg!r}; this recipe takes none")
  return common.baseline_config("market1501")
