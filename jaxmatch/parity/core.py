"""Stage-by-stage numerical parity of a jaxmatch model against the authors' own PyTorch code.

The official repository is the user's clone, imported at run time from the folder they name (nothing of it
ships with jaxmatch). One adapter module per model (named by the model's contract in
jaxmatch.models.registry) knows that repository's entry points: how to build the official model from a
config, which intermediate tensors ("stages") it exposes, how to convert its weights and how to compute
the same stages in jaxmatch. `run_parity` then

  1. checks the config against what the official code can build (clear error otherwise),
  2. imports the repository (sys.path insertion; missing files or entry points are named),
  3. builds the official model: seeded random weights, "sharpened" by the adapter, or a checkpoint read
     with `weights_only` (used as given),
  4. converts that very state_dict with jaxmatch's converter,
  5. runs both on the same seeded inputs in float32 and compares every stage,
  6. checks that the comparison could have failed: each parameter group of the official model, scaled by
     1.01 on the reference side alone, must move some stage beyond its tolerance (reference forwards only).

Why 6: a comparison with random weights can pass whatever the port does on some path (an attention softmax
that is flat over 50k tokens makes its logits, scale and value path invisible). The adapter's `sharpen`
rescales the seeded weights so every group matters; the sensitivity self-check shows it, and with a
checkpoint reports what those weights leave untested. A group that moves no stage is "not covered": the
verdict line and the JSON say so, but the exit code still follows the stages (0 pass, 1 mismatch).

A stage passes when max|ours - ref| / max|ref| <= its tolerance (relative to the largest reference value:
element-wise ratios blow up where the reference is near zero, which says nothing about the port). A stage
made of several tensors (e.g. one per backbone block) is judged by its worst tensor.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import sys
import time
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from jaxmatch.parity.sensitivity import SensitivityReport
from jaxmatch.parity.stages import (Member, Stage, StageResult, compare_stage, first_failure,  # noqa: F401
                                    format_table, relative_error)

class ParityError(RuntimeError):
  """The comparison cannot run: missing repository, missing entry point, unsupported config, bad weights."""


@dataclasses.dataclass
class ParityReport:
  model: str
  reference_repo: str
  weights: str
  inputs: str
  results: list[StageResult]
  seconds: dict[str, float] = dataclasses.field(default_factory=dict)
  sensitivity: SensitivityReport | None = None  # None: the self-check was not run

  @property
  def passed(self) -> bool:
    return all(r.passed for r in self.results)

  def coverage(self) -> str:
    return "sensitivity self-check skipped" if self.sensitivity is None else self.sensitivity.summary()

  def summary(self) -> str:
    n = len(self.results)
    bad = first_failure(self.results)
    if bad is None:
      gaps = self.sensitivity.gaps() if self.sensitivity is not None else ""
      if gaps:
        return f"RESULT: PASS, but {gaps} ({n}/{n} stages within tolerance)"
      return f"RESULT: PASS ({n}/{n} stages within tolerance; {self.coverage()})"
    n_bad = sum(not r.passed for r in self.results)
    detail = bad.note or f"max rel {bad.max_rel:.3e} > {bad.stage.rtol:.0e}"
    return (f"RESULT: FAIL ({n_bad}/{n} stages out of tolerance; {self.coverage()}); first diverging stage: "
            f"{bad.stage.name} ({bad.stage.description}): {detail}")

  def render(self) -> str:
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
    head = [f"parity of jaxmatch '{self.model}' against the reference code in {self.reference_repo}",
            f"weights: {self.weights}", f"inputs: {self.inputs}; float32 on CPU"]
    if timing:
      head.append(f"time: {timing}")
    body = [format_table(self.results)]
    if self.sensitivity is not None:
      body.append(self.sensitivity.render())
    return "\n".join(head + [""] + "\n\n".join(body).splitlines() + ["", self.summary()])

  def to_json(self) -> str:
    return json.dumps({"model": self.model, "reference_repo": self.reference_repo, "weights": self.weights,
                       "inputs": self.inputs, "passed": self.passed, "summary": self.summary(),
                       "seconds": self.seconds, "stages": [r.to_dict() for r in self.results],
                       "sensitivity": None if self.sensitivity is None else self.sensitivity.to_dict()},
                      indent=1)


# ----------------------------------------------------------------------------- importing the reference
def _purge_modules(repo: str, names: Sequence[str]) -> None:
  """Forgets earlier imports of the repository's flat modules, so the named folder is what gets imported.

  Flat names such as `utils` or `geometry` are common; a module of that name imported from elsewhere (or an
  earlier reference folder) would otherwise be reused silently.
  """
  shadowed = set(names) - set(sys.stdlib_module_names)
  for name in list(sys.modules):
    path = getattr(sys.modules[name], "__file__", None) or ""
    if name.split(".")[0] in shadowed or os.path.abspath(path).startswith(repo + os.sep):
      del sys.modules[name]


def _module_file(name: str) -> str:
  """'model.make_model' -> 'model/make_model.py' (a dotted name is a module inside the repository's packages)."""
  return name.replace(".", "/") + ".py"


def _module_exists(repo: str, file: str) -> bool:
  path = os.path.join(repo, *file.split("/"))
  return os.path.isfile(path) or os.path.isfile(os.path.join(path[:-3], "__init__.py"))


def _local_names(repo: str) -> list[str]:
  """Top-level modules and packages of the repository (their names may be taken by earlier imports)."""
  return [os.path.splitext(f)[0] for f in os.listdir(repo)
          if f.endswith(".py") or os.path.isfile(os.path.join(repo, f, "__init__.py"))]


def import_reference(repo_path: str, modules: Sequence[str], entry_points: Mapping[str, Sequence[str]],
                     repository: str, install_hint: str = "") -> dict[str, Any]:
  """Imports the modules of the official repository at `repo_path`: {module name: module}.

  Names are flat (`geometry`) or dotted (`model.make_model`, a module of the repository's packages); the
  repository root is on sys.path while they are imported.

  Raises ParityError naming the missing files, the failed import (with `install_hint` when a dependency is
  missing) or the missing entry points (class / function names the adapter calls).
  """
  if not repo_path:
    raise ParityError(f"no reference repository given: clone {repository} and pass its folder")
  repo = os.path.abspath(os.path.expanduser(repo_path))
  if not os.path.isdir(repo):
    raise ParityError(f"reference repository not found: {repo_path} (expected a clone of {repository})")
  files = [_module_file(m) for m in modules]
  missing = [f for f in files if not _module_exists(repo, f)]
  if missing:
    layout = "the flat layout" if all("." not in m for m in modules) else "the layout"
    raise ParityError(f"{repo_path} does not look like a clone of {repository}: missing "
                      f"{', '.join(missing)} (expected {layout} with {', '.join(files)})")
  _purge_modules(repo, _local_names(repo))
  loaded = {}
  sys.path.insert(0, repo)
  try:
    for name in modules:
      try:
        loaded[name] = importlib.import_module(name)
      except ImportError as e:
        hint = f"; {install_hint}" if install_hint and isinstance(e, ModuleNotFoundError) else ""
        raise ParityError(f"importing {_module_file(name)} from {repo_path} failed: {type(e).__name__}: "
                          f"{e}{hint}") from e
      except Exception as e:  # the reference's own import-time code failed
        raise ParityError(f"importing {_module_file(name)} from {repo_path} failed: {type(e).__name__}: {e}") from e
  finally:
    sys.path.remove(repo)
  absent = [f"{m}.{attr}" for m, attrs in entry_points.items() for attr in attrs if not hasattr(loaded[m], attr)]
  if absent:
    raise ParityError(f"{repo_path} lacks the entry points the parity tool calls: {', '.join(absent)} "
                      f"(expected those of {repository})")
  return loaded


# ----------------------------------------------------------------------------- weights
def seed_everything(seed: int) -> None:
  """Seeds PyTorch's generator, which the official constructors draw their random weights from."""
  import torch
  torch.manual_seed(seed)
  np.random.seed(seed)


def numpy_state_dict(model) -> dict[str, np.ndarray]:
  from jaxmatch.convert.torch_io import to_numpy_tree
  return to_numpy_tree(model.state_dict())


def read_checkpoint(path: str, allow_pickle: bool = False) -> dict[str, np.ndarray]:
  """{key: array} through jaxmatch's reader (weights_only unless `allow_pickle`)."""
  from jaxmatch.convert.torch_io import load_state_dict
  try:
    return load_state_dict(path, allow_pickle=allow_pickle)
  except (FileNotFoundError, ValueError, ImportError) as e:
    raise ParityError(str(e)) from e


def load_reference_weights(model, state_dict: Mapping[str, np.ndarray], path: str) -> None:
  """Loads the checkpoint's tensors into the official model, strictly (every key must fit)."""
  import torch
  try:
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()},
                          strict=True)
  except RuntimeError as e:
    raise ParityError(f"{path} does not fit the official model built from the config: {e}") from e


# ----------------------------------------------------------------------------- adapters
# A parameter group member: a whole state_dict entry, or (key, index) for part of one (e.g. one stream's
# rows of a doubled tensor: ("backbone.conv1.weight", slice(0, 64))).


class Adapter(Protocol):
  """What a model plugs into the tool (one module per model, `ADAPTER = ...` inside)."""
  name: str
  repository: str                           # where users get the official code
  modules: tuple[str, ...]                  # modules of the repository to import, in order (flat or dotted)
  entry_points: Mapping[str, tuple[str, ...]]
  install_hint: str                         # what to install when the reference's imports fail

  def check_config(self, config) -> list[str]: ...                     # problems the official code cannot build
  def build_reference(self, modules: dict, config): ...                # -> torch.nn.Module (seeded before)
  def check_reference(self, model, modules: dict, config) -> list[str]: ...
  def convert(self, state_dict: dict, config) -> dict: ...             # -> jaxmatch variables
  def make_inputs(self, config, batch_size: int, seed: int) -> dict: ...
  def describe_inputs(self, inputs: dict) -> str: ...
  def stages(self, config) -> tuple[Stage, ...]: ...
  def run_reference(self, model, modules: dict, inputs: dict, config) -> dict: ...
  def run_ours(self, variables: dict, inputs: dict, config) -> dict: ...
  # Sensitivity (see sensitivity.check_sensitivity): every floating state_dict key must be in a group or unused.
  def parameter_groups(self, shapes: Mapping[str, tuple], config) -> dict[str, list[Member]]: ...
  def unused_parameters(self, shapes: Mapping[str, tuple], config) -> dict[str, str]: ...  # key -> why
  def sharpen(self, model, modules: dict, inputs: dict, config) -> str: ...  # in place; says what it did
  # Optional: `import_context()`, a context manager around the import (shims for what newer libraries dropped).


def get_adapter(name: str) -> Adapter:
  """The parity adapter the model's contract names (jaxmatch.models.registry)."""
  from jaxmatch import models
  try:
    contract = models.get_contract(name)
  except ValueError as e:
    raise ParityError(str(e)) from e
  if not contract.parity_adapter:
    with_adapter = [n for n in models.names() if models.get_contract(n).parity_adapter]
    raise ParityError(f"no parity adapter for model {name!r}; available: {', '.join(with_adapter)}")
  return importlib.import_module(contract.parity_adapter).ADAPTER


@contextlib.contextmanager
def _timed(seconds: dict, key: str):
  start = time.perf_counter()
  yield
  seconds[key] = time.perf_counter() - start


def run_parity(config, reference_repo: str, torch_checkpoint: str | None = None, allow_pickle: bool = False,
               seed: int = 0, batch_size: int = 1, sharpen: bool = True,
               sensitivity: bool = True) -> ParityReport:
  """Builds the official model and jaxmatch's from the same weights and compares them stage by stage.

  `sharpen`: let the adapter rescale the seeded random weights so every parameter group matters (ignored
  with a checkpoint, whose weights are used as given). `sensitivity`: run the self-check afterwards.
  """
  if batch_size < 1:
    raise ParityError(f"batch_size must be >= 1, got {batch_size}")
  try:
    import torch
  except ImportError as e:
    raise ParityError("the parity tool runs the official PyTorch code: install the parity extra "
                      "(pip install -e '.[parity]')") from e
  import jax

  adapter = get_adapter(config.model.name)
  # Read the file first, so an unreadable file is reported at once and the sizes it decides (classes,
  # side-information tables) complete the config before the official code is asked to build it.
  checkpoint = read_checkpoint(torch_checkpoint, allow_pickle) if torch_checkpoint else None
  if checkpoint is not None:
    from jaxmatch.convert import complete_config
    try:
      complete_config(config, checkpoint)
    except ValueError as e:
      raise ParityError(f"{torch_checkpoint}: {e}") from e
  problems = adapter.check_config(config)
  if problems:
    raise ParityError("the official code cannot run this config:\n  " + "\n  ".join(problems))
  # An adapter may shim what the official code imports but current libraries dropped (e.g. torch._six).
  shims = getattr(adapter, "import_context", None)
  with shims() if shims is not None else contextlib.nullcontext():
    modules = import_reference(reference_repo, adapter.modules, adapter.entry_points, adapter.repository,
                               adapter.install_hint)
  seconds: dict[str, float] = {}
  seed_everything(seed)
  with torch.no_grad(), _timed(seconds, "build reference"):
    model = adapter.build_reference(modules, config)
  model.eval()
  if checkpoint is not None:
    load_reference_weights(model, checkpoint, torch_checkpoint)
    weights = f"{torch_checkpoint} (loaded into the official model, then converted)"
  else:
    weights = f"random official initialisation (torch seed {seed})"
  problems = adapter.check_reference(model, modules, config)
  if problems:
    raise ParityError("the official model built from this config differs from jaxmatch's:\n  "
                      + "\n  ".join(problems))
  inputs = adapter.make_inputs(config, batch_size, seed)
  if checkpoint is None:  # a checkpoint is compared as given
    with _timed(seconds, "sharpen"):
      how = _sharpen(adapter, model, modules, inputs, config) if sharpen else "not sharpened"
    weights += f", {how}, converted"
  from jaxmatch.convert.keys import CheckpointMismatchError
  try:
    variables = adapter.convert(numpy_state_dict(model), config)
  except (CheckpointMismatchError, ValueError) as e:
    raise ParityError(f"converting the official weights failed: {e}") from e

  with torch.no_grad(), _timed(seconds, "reference"):
    ref = _run_reference(adapter, model, modules, inputs, config)
  # Full float32 matmuls: on accelerators the default may use reduced-precision passes.
  with jax.default_matmul_precision("highest"), _timed(seconds, "jaxmatch"):
    ours = adapter.run_ours(variables, inputs, config)
  results = [compare_stage(s, ours[s.name], ref[s.name]) for s in adapter.stages(config)]
  report = None
  if sensitivity:
    from jaxmatch.parity.sensitivity import check_sensitivity
    with torch.no_grad(), _timed(seconds, "sensitivity"):
      report = check_sensitivity(adapter, model, config, ref,
                                 lambda: _run_reference(adapter, model, modules, inputs, config))
  return ParityReport(config.model.name, os.path.abspath(reference_repo), weights,
                      adapter.describe_inputs(inputs), results, seconds, report)


def _run_reference(adapter, model, modules: dict, inputs: dict, config) -> dict:
  try:
    return adapter.run_reference(model, modules, inputs, config)
  except ParityError:
    raise
  except Exception as e:  # the official code rejected this configuration at run time
    raise ParityError(f"the reference code failed on this config: {type(e).__name__}: {e}") from e


def _sharpen(adapter, model, modules: dict, inputs: dict, config) -> str:
  import torch
  with torch.no_grad():
    try:
      return adapter.sharpen(model, modules, inputs, config)
    except ParityError:
      raise
    except Exception as e:
      raise ParityError(f"sharpening the official model's weights failed: {type(e).__name__}: {e}") from e


def cli_run(config, reference_repo: str, torch_checkpoint: str | None = None, allow_pickle: bool = False,
            seed: int = 0, batch_size: int = 1, json_out: str | None = None, sharpen: bool = True,
            sensitivity: bool = True) -> int:
  """What `python -m jaxmatch.parity` does: prints the report; returns 0 pass, 1 mismatch, 2 cannot run.

  Parameter groups the self-check finds not covered are named in the verdict and the JSON; they do not
  change the exit code, which says whether jaxmatch matches the reference on these weights.
  """
  try:
    report = run_parity(config, reference_repo, torch_checkpoint, allow_pickle, seed, batch_size, sharpen,
                        sensitivity)
  except ParityError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  print(report.render(), flush=True)
  if json_out:
    with open(json_out, "w") as f:
      f.write(report.to_json())
  return 0 if report.passed else 1
