r"""TransReID on Market-1501: ViT-B/16, overlapping patches (stride 12), camera SIE, JPM, BNNeck heads
(the official configs/.../vit_transreid_stride.yml).

  python -m jaxmatch.main --config configs/transreid_market.py --workdir runs/transreid_market \
      --config.model.pretrained=jx_vit_base_p16_224-80ecf9dd.pth

Market-1501 as distributed under ~/tensorflow_datasets/downloads/manual/Market-1501-v15.09.15 (or
--config.data.folders.market1501=PATH). The ImageNet start is timm's ViT-B/16 file (DeiT: the distilled DeiT-B
file with the 'deit' argument). Paper rows by argument: '' TransReID*, 'baseline' (ViT-B stride 16, no
JPM / SIE), 'stride16', 'deit', 'nolocal'. Recipe: SGD momentum 0.9, BASE_LR 0.008 (bias x2), weight decay
1e-4 on every tensor, 5 warm-up epochs from 0.01 x BASE_LR then cosine to 0.002 x BASE_LR stepped per
epoch, 120 epochs, batch 64 (16 ids x 4 for 64), ID + soft-margin triplet on the global and each local
feature, halved; bicubic train resize, flip, pad 10 + crop, timm per-pixel random erasing; bilinear test
resize. Hardware: one GPU with >= 16 GB (the official run: one V100, fp16; here float32, or
--config.model.dtype=bfloat16).

Released weights: python -m jaxmatch.convert --config configs/transreid_market.py \
    --torch_checkpoint transformer_120.pth --workdir runs/market_vit_transreid_stride
then --mode eval / python -m jaxmatch.extract on that workdir.

Paper Table 6 (ViT-B/16, mAP / R-1): Baseline 86.8 / 94.7; TransReID* (stride 12) 88.9 / 95.2.
README, released checkpoints: TransReID*(ViT) 89.0 / 95.1, Baseline(ViT) 87.1 / 94.6, TransReID*(DeiT) 88.5 / 95.1.

With no dataset on the machine it trains a 3-block, 64-wide ViT on the embedded synthetic Market-layout
data (the recipe's `embedded_schedule`, printed when used).
"""
from __future__ import annotations

import ml_collections

from jaxmatch.config_utils import load_common

common = load_common(__file__, "common_transreid")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = common.transreid_config("market1501", arg, img_size=(256, 128), vehicle=False, base_lr=0.008,
                                   batch_size=64)
  return config
