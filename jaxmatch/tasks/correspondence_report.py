"""What a correspondence evaluation writes: PCK tables per benchmark and threshold (printed, .txt, .json)
and keypoint / warp pictures of the first pairs."""
from __future__ import annotations

import json
import os

import numpy as np

from input_pipeline.images import IMAGENET_MEAN, IMAGENET_STD

THRESHOLD_LABELS = {
    "spair": "alpha_bbox: max side of the target object box",
    "pfpascal": "alpha_img: the (resized) image side",
    "pfwillow": "alpha_bbox as the official code computes it: extent of the target keypoint row including "
                "its -2 padding, i.e. max(x_max, y_max) + 2 (inflates PCK)",
    "pfwillow_bbox_kp": "alpha_bbox-kp: max side of the target keypoints' bounding box (the intended "
                        "threshold)",
}


def denormalize(img: np.ndarray) -> np.ndarray:
  """ImageNet-normalised float [H, W, 3] -> uint8 RGB."""
  return np.clip(np.round((img * np.float32(IMAGENET_STD) + np.float32(IMAGENET_MEAN)) * 255), 0, 255).astype(np.uint8)


def write_figures(folder: str, prefix: str, batch: dict, pred: np.ndarray, dense: np.ndarray,
                  tolerance: np.ndarray, limit: int) -> int:
  """Keypoint and warp PNGs for up to `limit` valid pairs of a host batch; returns how many were drawn.

  `pred` [B, K, 2] predicted target keypoints, `dense` [B, g, g, 2] source position (pixels) of every
  target grid cell, `tolerance` [B] the PCK distance (alpha * threshold) used to colour the keypoints.
  """
  from jaxmatch.visualize.correspondence import keypoint_figure, save_png, warp_figure
  os.makedirs(folder, exist_ok=True)
  drawn = 0
  for i in np.flatnonzero(batch["valid"])[:limit]:
    mask = np.asarray(batch["kp_mask"][i], bool)
    src, trg = denormalize(batch["src_img"][i]), denormalize(batch["trg_img"][i])
    stem = os.path.join(folder, f"{prefix}_{int(batch['pair_index'][i])}")
    save_png(f"{stem}_keypoints.png", keypoint_figure(src, trg, batch["src_kps"][i][mask],
                                                      batch["trg_kps"][i][mask], pred[i][mask],
                                                      threshold=float(tolerance[i])))
    save_png(f"{stem}_warp.png", warp_figure(src, trg, dense[i]))
    drawn += 1
  return drawn


def write_report(workdir: str, name: str, step: int, bench, per_threshold: dict, tables: dict) -> None:
  """workdir/eval/<name>.json and .txt: one table per threshold, each labelled with its definition
  (`bench`: the task's Benchmark)."""
  blocks, payload = [], {}
  for kind, result in per_threshold.items():
    label = bench.label(kind)
    header = (f"PCK on {bench.dataset} '{bench.split}' [{label}: {THRESHOLD_LABELS[kind]}] "
              f"({name}, step {step}, {result.get('num_pairs')} pairs)")
    blocks.append(f"{header}\n{tables[kind]}")
    payload[label] = {"threshold": kind, "definition": THRESHOLD_LABELS[kind], **result}
  text = "\n\n".join(blocks)
  print(f"\n{text}\n", flush=True)
  out = os.path.join(workdir, "eval")
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f"{name}.json"), "w", encoding="utf-8") as f:
    json.dump({"step": step, "benchmark": bench.name, "dataset": bench.dataset, "split": bench.split,
               "results": payload}, f, indent=2, default=float)
  with open(os.path.join(out, f"{name}.txt"), "w", encoding="utf-8") as f:
    f.write(text + "\n")
