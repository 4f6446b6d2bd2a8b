r"""ResNet-50 strong baseline on MSMT17 (V1 by default): the Market recipe of configs/baseline_market.py
with MSMT17's training identities.

  python -m jaxmatch.main --config configs/baseline_msmt.py --workdir runs/baseline_msmt \
      --config.model.pretrained=resnet50-0676ba61.pth

MSMT17 as distributed, unpacked to ~/tensorflow_datasets/downloads/manual/MSMT17_V1 (or MSMT17_V2 with
--config.data.options.msmt17.version=V2) or named with --config.data.folders.msmt17=PATH. Training uses
list_train + list_val (1,041 identities), as the official code; `msmt17all=True` in
config.data.options.msmt17 trains on every image (the setting generalisation papers train on). Evaluation
(11,659 queries x 82,161 gallery images) runs blocked on the device; add --config.eval.rerank=True for
k-reciprocal re-ranking. Cross-dataset evaluation: --config.eval.datasets="('msmt17','market1501')".
Hardware: one GPU with 16 GB; evaluation memory stays within the evaluator's budget.

With no dataset on the machine it trains on the embedded synthetic set (see baseline_market.py).

Reported (R-1 / mAP, %, MSMT17): NFormer paper Table 4, its ResNet-50 encoder 74.9 / 50.1.
"""
from __future__ import annotations

import ml_collections

from jaxmatch.config_utils import load_common

common = load_common(__file__, "common_reid")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f"unknown config argument {arg!r}; this recipe takes none")
  return common.baseline_config("msmt17")
