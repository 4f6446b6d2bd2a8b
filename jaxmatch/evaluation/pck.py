"""Percentage of correct keypoints (PCK) as the TransforMatcher / CHM / DHPF evaluator computes it.

Everything lives in the resized S x S frame (S = 240 by default). A predicted keypoint is correct when
its float32 Euclidean distance to the ground truth is <= alpha * threshold (inclusive, both factors
float32, as the official torch code compares). A pair's score is the fraction of its own keypoints
that are correct, and the reported number is the mean over pairs x 100 (per-pair averaging, not
per-category). Keypoints are [N, K, 2] (x, y) arrays with a boolean mask [N, K]; the official code's
[N, 2, 40] layout with -2 pads converts with `kps.transpose(0, 2, 1)` and `arange(40) < n_pts`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

ALPHAS = (0.05, 0.1, 0.15)
DIFFICULTY_KEYS = ('vpvar', 'scvar', 'trncn', 'occln')
OFFICIAL_MAX_PTS = 40   # the official loaders always pad keypoint rows to 40 columns with -2
OFFICIAL_PAD = -2.0


def alpha_key(alpha: float) -> str:
  return f'pck@{alpha:g}'


def _bbox_threshold(trg_bbox) -> np.ndarray:
  box = np.asarray(trg_bbox, np.float32)
  return np.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])


def _masked_extent(kps: np.ndarray, mask: np.ndarray, include_pad: np.ndarray) -> np.ndarray:
  """Per row and axis: max - min over the valid keypoints (and the -2 pad value where included)."""
  valid = mask[..., None]
  hi = np.where(valid, kps, -np.inf).max(axis=1)
  lo = np.where(valid, kps, np.inf).min(axis=1)
  lo = np.where(include_pad[:, None], np.minimum(lo, np.float32(OFFICIAL_PAD)), lo)
  return (hi - lo).astype(np.float32).max(axis=1)


def pck_threshold(benchmark: str, trg_kps, kp_mask, trg_bbox=None, img_size: int = 240,
                  max_pts: int = OFFICIAL_MAX_PTS) -> np.ndarray:
  """Per-pair PCK threshold [N] float32 in the S x S frame.

  'spair': max(w, h) of the target bbox (already rescaled into the S frame).
  'pfpascal': the image side S.
  'pfwillow': the official code's value: max over x/y of (max - min) of the target keypoint row
    INCLUDING its -2 pad columns (there are pads whenever n_pts < max_pts, i.e. always for the
    10-keypoint PF-WILLOW), so it equals max(x_max, y_max) + 2 rather than the keypoint box.
  'pfwillow_bbox_kp': the intended threshold, max side of the keypoints' bounding box.
  """
  kps = np.asarray(trg_kps, np.float32)
  mask = np.asarray(kp_mask, bool)
  if benchmark == 'spair':
    if trg_bbox is None:
      raise ValueError("benchmark 'spair' needs trg_bbox")
    return _bbox_threshold(trg_bbox)
  if benchmark == 'pfpascal':
    return np.full(kps.shape[0], img_size, np.float32)
  if benchmark == 'pfwillow':
    return _masked_extent(kps, mask, mask.sum(axis=1) < max_pts)
  if benchmark == 'pfwillow_bbox_kp':
    return _masked_extent(kps, mask, np.zeros(kps.shape[0], bool))
  raise ValueError(f'unknown PCK benchmark {benchmark!r}; expected spair, pfpascal, pfwillow or '
                   'pfwillow_bbox_kp')


def keypoint_distances(pred, gt) -> np.ndarray:
  """float32 L2 distances [N, K], summing squares then sqrt exactly like the torch evaluator."""
  diff = np.asarray(pred, np.float32) - np.asarray(gt, np.float32)
  return np.sqrt(np.square(diff).sum(axis=-1, dtype=np.float32))


def pck_counts(pred, gt, mask, thr, alphas: Sequence[float] = ALPHAS):
  """(correct counts [N, A] int64, valid keypoints per pair [N] int64)."""
  mask = np.asarray(mask, bool)
  dist = keypoint_distances(pred, gt)                                    # [N, K]
  limits = np.asarray(thr, np.float32)[:, None] * np.asarray(alphas, np.float32)[None, :]
  correct = (dist[:, None, :] <= limits[:, :, None]) & mask[:, None, :]   # [N, A, K]
  return correct.sum(axis=2), mask.sum(axis=1)


def pck_per_pair(pred, gt, mask, thr, alphas: Sequence[float] = ALPHAS) -> np.ndarray:
  """Fraction of each pair's valid keypoints within alpha * thr, [N, len(alphas)] float32.

  A pair without valid keypoints yields NaN (the official code would divide by zero too).
  """
  counts, n_pts = pck_counts(pred, gt, mask, thr, alphas)
  with np.errstate(invalid='ignore', divide='ignore'):
    return counts.astype(np.float32) / n_pts.astype(np.float32)[:, None]


def _mean_table(fractions: np.ndarray, alphas: Sequence[float]) -> dict:
  table = {alpha_key(a): float(np.mean(fractions[:, i]) * 100) for i, a in enumerate(alphas)}
  table['num_pairs'] = int(fractions.shape[0])
  return table


class PCKAccumulator:
  """Collects per-pair PCK over batches and reports overall, per-category and per-difficulty means.

  `add(pred, batch)` takes predicted target keypoints [B, K, 2] and a batch with 'trg_kps',
  'kp_mask', 'pck_thr' (from `pck_threshold`) and optionally 'valid' (padding rows are skipped),
  'category' and the SPair difficulty flags 'vpvar', 'scvar', 'trncn', 'occln'. Means are taken in
  float64 over exact count / n_pts fractions: identical to the official train/val path and within
  1e-5 of test.py's float32 torch mean.
  """

  def __init__(self, alphas: Sequence[float] = ALPHAS,
               category_names: Sequence[str] | None = None):
    self.alphas = tuple(alphas)
    self.category_names = tuple(category_names) if category_names is not None else None
    self._counts: list[np.ndarray] = []
    self._n_pts: list[np.ndarray] = []
    self._labels: dict[str, list[np.ndarray]] = {}

  def add(self, pred, batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """Adds one batch; returns the per-pair fractions (float64) of its valid rows."""
    valid = np.asarray(batch.get('valid', np.ones(len(batch['pck_thr']), bool)), bool)
    counts, n_pts = pck_counts(np.asarray(pred)[valid], np.asarray(batch['trg_kps'])[valid],
                               np.asarray(batch['kp_mask'])[valid],
                               np.asarray(batch['pck_thr'])[valid], self.alphas)
    self._counts.append(counts)
    self._n_pts.append(n_pts)
    for key in ('category',) + DIFFICULTY_KEYS:
      if key in batch:
        self._labels.setdefault(key, []).append(np.asarray(batch[key])[valid].astype(np.int64))
    return counts / n_pts[:, None]

  @property
  def num_pairs(self) -> int:
    return int(sum(n.shape[0] for n in self._n_pts))

  def per_pair(self) -> np.ndarray:
    """[N, A] float64 fractions (exact count / n_pts, as the official train/val path)."""
    if not self._n_pts:
      return np.zeros((0, len(self.alphas)))
    return np.concatenate(self._counts) / np.concatenate(self._n_pts)[:, None]

  def _category_name(self, index: int):
    names = self.category_names
    return names[index] if names is not None and 0 <= index < len(names) else index

  def _grouped(self, key: str, fractions: np.ndarray, name=lambda v: v) -> dict:
    if key not in self._labels:
      return {}
    labels = np.concatenate(self._labels[key])
    return {name(int(v)): _mean_table(fractions[labels == v], self.alphas)
            for v in np.unique(labels)}

  def result(self) -> dict:
    """{'pck@a': mean x 100 per alpha, 'per_category', 'per_difficulty', 'num_pairs'}."""
    fractions = self.per_pair()
    if fractions.shape[0] == 0:
      raise ValueError('PCKAccumulator.result() called before any valid pair was added')
    out = _mean_table(fractions, self.alphas)
    out['per_category'] = self._grouped('category', fractions, self._category_name)
    out['per_difficulty'] = {k: self._grouped(k, fractions) for k in DIFFICULTY_KEYS
                             if k in self._labels}
    return out

  def format_table(self) -> str:
    """Plain-text tables: overall, per category, then one block per difficulty flag."""
    res = self.result()
    keys = [alpha_key(a) for a in self.alphas]
    head = f"{'':<14}" + ''.join(f'{k:>10}' for k in keys) + f"{'pairs':>8}"

    def row(label, table):
      return f'{str(label):<14}' + ''.join(f'{table[k]:>10.2f}' for k in keys) + \
          f"{table['num_pairs']:>8d}"

    lines = ['PCK (per-pair mean, %)', head]
    lines += [row(name, t) for name, t in res['per_category'].items()]
    lines.append(row('all', res))
    for flag, groups in res['per_difficulty'].items():
      lines += ['', f'by {flag}', head] + [row(f'{flag}={v}', t) for v, t in groups.items()]
    return '\n'.join(lines)
