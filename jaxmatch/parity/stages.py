"""Stages of a parity comparison and how one is judged: max|ours - ref| / max|ref| within its tolerance
(relative to the largest reference value: element-wise ratios blow up where the reference is near zero,
which says nothing about the port); a stage of several tensors is judged by its worst tensor."""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence, Union

import numpy as np

# A member of a parameter group: a state_dict key, or (key, index) for part of a tensor.
Member = Union[str, tuple[str, Any]]


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  description: str
  rtol: float  # allowed max|ours - ref| / max|ref|


@dataclasses.dataclass(frozen=True)
class StageResult:
  stage: Stage
  shape: str
  max_abs: float
  max_rel: float
  passed: bool
  note: str = ""

  def to_dict(self) -> dict:
    return {"stage": self.stage.name, "description": self.stage.description, "shape": self.shape,
            "max_abs": self.max_abs, "max_rel": self.max_rel, "tolerance": self.stage.rtol,
            "passed": self.passed, "note": self.note}


def relative_error(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
  """(max|ours - ref|, max|ours - ref| / max|ref|); an all-zero reference makes rel = abs."""
  diff = float(np.max(np.abs(ours.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
  scale = float(np.max(np.abs(ref))) if ref.size else 0.0
  return diff, (diff / scale if scale > 0 else diff)


def _as_list(value) -> list[np.ndarray]:
  if isinstance(value, (list, tuple)):
    return [np.asarray(v) for v in value]
  return [np.asarray(value)]


def _shape_text(arrays: Sequence[np.ndarray]) -> str:
  first = list(arrays[0].shape)
  if len(arrays) == 1:
    return str(first)
  same = all(a.shape == arrays[0].shape for a in arrays)
  return f"{len(arrays)} x {first}" if same else f"{len(arrays)} tensors"


def compare_stage(stage: Stage, ours, ref) -> StageResult:
  """Compares one stage (an array or a list of arrays); shape or count mismatches fail with a note."""
  ours_l, ref_l = _as_list(ours), _as_list(ref)
  if len(ours_l) != len(ref_l):
    return StageResult(stage, f"{len(ref_l)} tensors", float("nan"), float("nan"), False,
                       f"jaxmatch gives {len(ours_l)} tensors, the reference {len(ref_l)}")
  worst_abs, worst_rel, worst_i = 0.0, 0.0, 0
  for i, (a, b) in enumerate(zip(ours_l, ref_l)):
    if a.shape != b.shape:
      return StageResult(stage, _shape_text(ref_l), float("nan"), float("nan"), False,
                         f"shape mismatch at tensor {i}: jaxmatch {list(a.shape)}, reference {list(b.shape)}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
      which = "jaxmatch" if not np.all(np.isfinite(a)) else "reference"
      return StageResult(stage, _shape_text(ref_l), float("nan"), float("nan"), False,
                         f"non-finite values in the {which} output (tensor {i})")
    abs_err, rel_err = relative_error(a, b)
    worst_abs = max(worst_abs, abs_err)
    if rel_err >= worst_rel:
      worst_rel, worst_i = rel_err, i
  note = f"worst: tensor {worst_i}" if len(ref_l) > 1 else ""
  return StageResult(stage, _shape_text(ref_l), worst_abs, worst_rel, worst_rel <= stage.rtol, note)


def first_failure(results: Sequence[StageResult]) -> StageResult | None:
  return next((r for r in results if not r.passed), None)


def format_table(results: Sequence[StageResult]) -> str:
  rows = [("stage", "shape", "max abs", "max rel", "tol", "result", "")]
  for r in results:
    rows.append((r.stage.name, r.shape, f"{r.max_abs:.3e}", f"{r.max_rel:.3e}", f"{r.stage.rtol:.0e}",
                 "pass" if r.passed else "FAIL", r.note))
  widths = [max(len(row[i]) for row in rows) for i in range(6)]
  lines = ["  ".join(c.ljust(w) for c, w in zip(row[:6], widths)) + (f"  {row[6]}" if row[6] else "")
           for row in rows]
  return "\n".join(line.rstrip() for line in lines)
