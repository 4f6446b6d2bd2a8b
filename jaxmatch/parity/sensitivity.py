"""Sensitivity self-check of a parity run: could the comparison have failed?

Each parameter group the adapter names (`parameter_groups`) is scaled by PERTURBATION on the reference side
alone, the reference is run again and compared with its unperturbed outputs under each stage's own
tolerance. The group is "covered" when some stage moves beyond tolerance: a port that got that group's
path wrong by as much would fail the real comparison too. A group that moves nothing is "not covered":
these weights and inputs cannot tell a right port of its path from a wrong one.

Cost: one reference forward per group, with the model already built (jaxmatch does not run again).
Only floating tensors are scaled (BatchNorm's num_batches_tracked is a counter), and a tensor listed under
several names (one shared buffer) is scaled once. Every floating state_dict key must belong to a group or
be declared unused by the adapter (`unused_parameters`, with the reason); any other key is reported.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Mapping, Sequence

from jaxmatch.parity.stages import Member, compare_stage

PERTURBATION = 1.01


@dataclasses.dataclass(frozen=True)
class GroupSensitivity:
  group: str
  tensors: int     # distinct tensors (or parts of tensors) scaled
  stage: str       # the stage this group moves most, relative to that stage's tolerance
  max_rel: float   # that stage's max|perturbed - ref| / max|ref|
  rtol: float
  covered: bool    # some stage moved beyond its tolerance

  @property
  def ratio(self) -> float:
    return self.max_rel / self.rtol

  def to_dict(self) -> dict:
    return {"group": self.group, "tensors": self.tensors, "covered": self.covered, "stage": self.stage,
            "max_rel": self.max_rel, "tolerance": self.rtol, "times_tolerance": self.ratio}


@dataclasses.dataclass
class SensitivityReport:
  groups: list[GroupSensitivity]
  ungrouped: list[str]         # floating state_dict keys in no group and not declared unused
  unused: dict[str, str]       # key -> why the official forward never reads it
  perturbation: float = PERTURBATION

  @property
  def not_covered(self) -> list[str]:
    return [g.group for g in self.groups if not g.covered]

  @property
  def complete(self) -> bool:
    return not self.not_covered and not self.ungrouped

  def summary(self) -> str:
    n, covered = len(self.groups), [g for g in self.groups if g.covered]
    text = f"{len(covered)}/{n} parameter groups covered"
    if covered:
      weakest = min(covered, key=lambda g: g.ratio)
      text += f", weakest {weakest.group} at {weakest.ratio:.3g}x tolerance"
    return text

  def gaps(self) -> str:
    """'' when complete, else what the verdict must say is untested."""
    parts = []
    if self.not_covered:
      parts.append(f"{len(self.not_covered)} parameter groups not covered: {', '.join(self.not_covered)}")
    if self.ungrouped:
      parts.append(f"{len(self.ungrouped)} state_dict keys in no parameter group: {_short_list(self.ungrouped)}")
    return "; ".join(parts)

  def render(self) -> str:
    lines = [f"sensitivity: each parameter group x{self.perturbation:g} in the reference alone, against the "
             "unperturbed reference"]
    rows = [("group", "tensors", "moves most", "max rel", "x tol", "result")]
    for g in self.groups:
      rows.append((g.group, str(g.tensors), g.stage, f"{g.max_rel:.3e}", f"{g.ratio:.3g}",
                   "covered" if g.covered else "NOT COVERED"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    if self.unused:
      lines.append(f"not perturbed (never read by the official forward): {_short_list(sorted(self.unused))}")
    if self.ungrouped:
      lines.append(f"IN NO GROUP (untested): {_short_list(self.ungrouped)}")
    return "\n".join(lines)

  def to_dict(self) -> dict:
    return {"perturbation": self.perturbation, "complete": self.complete,
            "covered": len(self.groups) - len(self.not_covered), "groups_total": len(self.groups),
            "not_covered": self.not_covered, "ungrouped_keys": self.ungrouped, "unused_keys": self.unused,
            "groups": [g.to_dict() for g in self.groups]}


def _short_list(names: Sequence[str], limit: int = 8) -> str:
  shown = ", ".join(names[:limit])
  return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _member(member: Member) -> tuple[str, object]:
  return (member, slice(None)) if isinstance(member, str) else (member[0], member[1])


@contextlib.contextmanager
def scaled(state: Mapping, members: Sequence[Member], factor: float):
  """Multiplies the members' tensors in place (they share storage with the model), restores them after.

  Yields how many distinct tensors or parts were scaled.
  """
  seen, saved = set(), []
  for member in members:
    key, index = _member(member)
    tensor = state[key]
    ident = (tensor.data_ptr(), repr(index))
    if not tensor.is_floating_point() or ident in seen:
      continue
    seen.add(ident)
    view = tensor[index]
    saved.append((view, view.clone()))
    view.mul_(factor)
  try:
    yield len(saved)
  finally:
    for view, original in saved:
      view.copy_(original)


def group_sensitivity(name: str, tensors: int, stages, moved: dict, ref: dict) -> GroupSensitivity:
  results = [compare_stage(s, moved[s.name], ref[s.name]) for s in stages]
  # non-finite or mis-shaped outputs count as moved (compare_stage fails them with NaN errors)
  worst = max(results, key=lambda r: r.max_rel / r.stage.rtol if r.max_rel == r.max_rel else float("inf"))
  return GroupSensitivity(name, tensors, worst.stage.name, worst.max_rel, worst.stage.rtol,
                          any(not r.passed for r in results))


def check_sensitivity(adapter, model, config, ref: dict, rerun: Callable[[], dict],
                      factor: float = PERTURBATION) -> SensitivityReport:
  """Perturbs each of the adapter's parameter groups of `model` in turn; `rerun()` runs the reference."""
  state = model.state_dict()
  shapes = {k: tuple(v.shape) for k, v in state.items()}
  groups = adapter.parameter_groups(shapes, config)
  unused = adapter.unused_parameters(shapes, config)
  grouped = {_member(m)[0] for members in groups.values() for m in members}
  ungrouped = [k for k, v in state.items() if v.is_floating_point() and k not in grouped and k not in unused]
  stages = adapter.stages(config)
  results = []
  for name, members in groups.items():
    with scaled(state, members, factor) as n:
      moved = rerun()
    results.append(group_sensitivity(name, n, stages, moved, ref))
  return SensitivityReport(results, ungrouped, dict(unused), factor)
