"""Metrics out of the loop: JSON lines + TensorBoard event files in the workdir, a progress bar on stderr."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

import jax
import numpy as np


def _scalar(value: Any) -> float | None:
  try:
    arr = np.asarray(value)
  except Exception:
    return None
  return float(arr) if arr.size == 1 and np.issubdtype(arr.dtype, np.number) else None


class MetricWriter:
  """Writes scalars to <workdir>/metrics.jsonl and TensorBoard (process 0 only)."""

  def __init__(self, workdir: str, enable_tensorboard: bool = True):
    self._active = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if not self._active:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    if enable_tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> None:
    if not self._active:
      return
    scalars = {f"{prefix}{k}": s for k, v in metrics.items() if (s := _scalar(v)) is not None}
    self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **scalars}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k.replace("@", "_at_"), v, int(step))  # TensorBoard tags allow no '@'

      self._tb.flush()

  def close(self) -> None:
    if self._jsonl:
      self._jsonl.close()
    if self._tb:
      self._tb.close()


def _fmt_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class ProgressBar:
  """One self-overwriting stderr line: step, loss, examples/s, ETA. Quiet on non-zero processes."""

  def __init__(self, total_steps: int, start_step: int, unit: str = "pairs", stream=sys.stderr):
    self._total = total_steps
    self._start = start_step
    self._unit = unit
    self._stream = stream
    self._t0 = time.perf_counter()
    self._last_t = self._t0
    self._last_step = start_step
    self._rate = float("nan")
    self._active = jax.process_index() == 0
    self._tty = getattr(stream, "isatty", lambda: False)()

  def update(self, step: int, loss: float, examples_per_step: int) -> None:
    if not self._active:
      return
    now = time.perf_counter()
    if step > self._last_step and now > self._last_t:
      self._rate = (step - self._last_step) * examples_per_step / (now - self._last_t)
    self._last_t, self._last_step = now, step
    steps_per_s = self._rate / examples_per_step if self._rate == self._rate else float("nan")
    eta = (self._total - step) / steps_per_s if steps_per_s and steps_per_s > 0 else float("nan")
    width = 24
    done = int(width * step / max(self._total, 1))
    line = (f"[{'#' * done}{'.' * (width - done)}] step {step}/{self._total} loss {loss:.4f} "
            f"{self._rate:.1f} {self._unit}/s ETA {_fmt_duration(eta)}")
    end = "\r" if self._tty else "\n"
    self._stream.write(line + end)
    self._stream.flush()

  def close(self) -> None:
    if self._active and self._tty:
      self._stream.write("\n")
      self._stream.flush()
