r"""TransReID on VeRi-776 (camera + viewpoint side information, 256x256): ViT-B/16, overlapping patches (stride 12), camera and viewpoint SIE (VeRi's keypoint files give the 8 orientations), shift 8, JPM, BNNeck heads
(the official configs/.../vit_transreid_stride.yml).

  python -m jaxmatch.main --config configs/transreid_veri.py --workdir runs/transreid_veri \
      --config.model.pretrained=jx_vit_base_p16_224-80ecf9dd.pth

VeRi-776 (camera + viewpoint side information, 256x256) as distributed under ~/tensorflow_datasets/downloads/manual/VeRi (or
--config.data.folders.veri776=PATH). The ImageNet start is timm's ViT-B/16 file (DeiT: the distilled DeiT-B
file with the 'deit' argument). Paper rows by argument: '' TransReID*, 'baseline' (ViT-B stride 16, no
JPM / SIE), 'stride16', 'deit', 'nolocal'. Recipe: SGD momentum 0.9, BASE_LR 0.01 (bias x2), weight decay
1e-4 on every tensor, 5 warm-up epochs from 0.01 x BASE_LR then cosine to 0.002 x BASE_LR stepped per
epoch, 120 epochs, batch 64 (16 ids x 4 for 64), ID + soft-margin triplet on the global and each local
feature, halved; bicubic train resize, flip, pad 10 + crop, timm per-pixel random erasing; bilinear test
resize. Hardware: one GPU with >= 16 GB (the official run: one V100, fp16; here float32, or
--config.model.dtype=bfloat16).

Released weights: python -m jaxmatch.convert --config configs/transreid_veri.py \
    --torch_checkpoint transformer_120.pth --workdir runs/veri_vit_transreid_stride
then --mode eval / python -m jaxmatch.extract on that workdir.

Paper Table 6 (ViT-B/16, 256x256, mAP / R-1): TransReID* 82.0 / 97.1.
README, released checkpoints: TransReID*(ViT) 82.1 / 97.4.

With no dataset on the machine it trains a 3-block, 64-wide ViT on the embedded synthetic Market-layout
data (the recipe's `embedded_schedule`, printed when used).
"""
from __future__ import annotations

import ml_collections

from jaxmatch.config_utils import load_common

common = load_common(__file__, "common_transreid")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = common.transreid_config("veri776", arg, img_size=(256, 256), vehicle=True, base_lr=0.01,
                                   batch_size=64)
  return config
