r"""TransforMatcher transfer setting T of Table 1 (Kim, Min & Cho, CVPR 2022): trained on PF-PASCAL, evaluated
on SPair-71k test (and, from the same run, on PF-PASCAL test and PF-WILLOW).

Train with augmentation (the dagger row, official default) and evaluate (SPair-71k, PF-PASCAL and PF-WILLOW
as distributed under ~/tensorflow_datasets/downloads/manual/, or named with --config.data.manual_dir for
PF-PASCAL and --config.eval.benchmarks.<name>.manual_dir for the others):

  python -m jaxmatch.main --config configs/transformatcher_transfer_spair.py --workdir runs/tm_transfer

Without augmentation (the plain row):

  python -m jaxmatch.main --config configs/transformatcher_transfer_spair.py:noaug --workdir runs/tm_transfer_noaug

CPU quick run on the embedded synthetic PF-PASCAL, SPair-71k and PF-WILLOW (~8 minutes on 2 cores):

  python -m jaxmatch.main --config configs/transformatcher_transfer_spair.py:smoke   (or :smoke,noaug)

Recipe: exactly configs/transformatcher_pfpascal.py (PF-PASCAL trn, 10 epochs, batch 16, Adam 1e-3 /
backbone 1e-5, validation on PF-PASCAL val); the headline evaluation is SPair-71k test at alpha_bbox
(max side of the target box in the 240 frame), alphas 0.05 / 0.1 / 0.15. Hardware: one GPU with >= 16 GB;
evaluating the 12,234 SPair test pairs adds about as much time as one PF-PASCAL training epoch.

Paper, Table 1 (PCK @ alpha_bbox = 0.1 on SPair-71k test, model trained on PF-PASCAL):
  TransforMatcher 30.5; TransforMatcher with augmentation 30.1.
  Same models on PF-PASCAL alpha_img 0.05 / 0.1: 78.9 / 90.5 and 80.8 / 91.8; PF-WILLOW alpha 0.1
  bbox-kp / bbox: 66.7 / 75.1 and 65.3 / 76.0.
"""
from __future__ import annotations

import ml_collections

from jaxmatch.config_utils import load_common

common = load_common(__file__, "common_transformatcher")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """arg: '', 'noaug', 'smoke' or 'smoke,noaug' (as configs/transformatcher_pfpascal.py)."""
  config = common.pfpascal_training(arg)
  config.eval.benchmarks = ml_collections.ConfigDict(dict(**common.pf_benchmarks(),
                                                          spair=common.benchmark("spair")))
  config.eval.headline = "spair"
  return config
