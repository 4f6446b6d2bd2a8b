r"""TransReID on MSMT17 (V1): ViT-B/16, overlapping patches (stride 12), camera SIE, JPM, BNNeck heads
(the official configs/.../vit_transreid_stride.yml).

  python -m jaxmatch.main --config configs/transreid_msmt17.py --workdir runs/transreid_msmt17 \
      --config.model.pretrained=jx_vit_base_p16_224-80ecf9dd.pth

MSMT17 (V1) as distributed under ~/tensorflow_datasets/downloads/manual/MSMT17_V1 (or
--config.data.folders.msmt17=PATH). The ImageNet start is timm's ViT-B/16 file (DeiT: the distilled DeiT-B
file with the 'deit' argument). Paper rows by argument: '' TransReID*, 'baseline' (ViT-B stride 16, no
JPM / SIE), 'stride16', 'deit', 'nolocal'. Recipe: SGD momentum 0.9, BASE_LR 0.008 (bias x2), weight decay
1e-4 on every tensor, 5 warm-up epochs from 0.01 x BASE_LR then cosine to 0.002 x BASE_LR stepped per
epoch, 120 epochs, batch 64 (16 ids x 4 for 64), ID + soft-margin triplet on the global and each local
feature, halved; bicubic train resize, flip, pad 10 + crop, timm per-pixel random erasing; bilinear test
resize. Hardware: one GPU with >= 16 GB (the official run: one V100, fp16; here float32, or
--config.model.dtype=bfloat16).

Released weights: python -m jaxmatch.convert --config configs/transreid_msmt17.py \
    --torch_checkpoint transformer_120.pth --workdir runs/msmt17_vit_transreid_stride
then --mode eval / python -m jaxmatch.extract on that workdir.

Paper Table 6 (ViT-B/16, mAP / R-1): Baseline 61.0 / 81.8; TransReID* (stride 12) 67.4 / 85.3.
README, released checkpoints: TransReID*(ViT) 67.8 / 85.3, Baseline(ViT) 61.8 / 81.8, TransReID*(DeiT) 66.3 / 84.0.
(The official DeiT MSMT17 config uses BASE_LR 0.005: add --config.train.learning_rates.base=0.005
--config.train.learning_rates.bias=0.01.)

With no dataset on the machine it trains a 3-block, 64-wide ViT on the embedded synthetic Market-layout
data (the recipe's `embedded_schedule`, printed when used).
"""
from __future__ import annotations

import ml_collections

from jaxmatch.config_utils import load_common

common = load_common(__file__, "common_transreid")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = common.transreid_config("msmt17", arg, img_size=(256, 128), vehicle=False, base_lr=0.008,
                                   batch_size=64)
  return config
