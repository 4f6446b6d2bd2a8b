"""Test setup: 8 simulated CPU devices, parsed absl flags, the torchvision CPU shim, fixture paths."""
import os
import pathlib

# Must precede the first use of a jax device anywhere in the test process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

# grain's worker processes read absl flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("JAXMATCH_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"


def _install_torchvision_cpu_shim():
  """PyPI torchvision is a CUDA build; on CPU torch its import fails registering nms/qnms."""
  try:
    import torch
  except ImportError:
    return None
  if torch.version.cuda is not None:
    return None
  lib = torch.library.Library("torchvision", "FRAGMENT")
  lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
  lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
  torch.set_num_threads(2)
  return lib


_TV_SHIM = _install_torchvision_cpu_shim()


# Under CI (CI=true) every fixture and optional dependency must be there: a missing one fails the test
# instead of skipping it, so a broken checkout or install cannot pass as green.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_unless_ci(reason: str):
  """Skips the test on a developer machine; fails it under CI."""
  if IN_CI:
    pytest.fail(f"{reason} (CI requires it)", pytrace=False)
  pytest.skip(reason)


def require_file(path) -> pathlib.Path:
  path = pathlib.Path(path)
  if not path.exists():
    skip_unless_ci(f"{path} not available")
  return path


def optional_import(name: str):
  """pytest.importorskip outside CI; a plain import (an error if missing) under CI."""
  if IN_CI:
    import importlib
    return importlib.import_module(name)
  return pytest.importorskip(name)


def load_fixture(name: str) -> dict:
  """Loads shared/fixtures/<name>.npz as a dict of numpy arrays (skipped if absent, failed under CI)."""
  path = require_file(FIXTURES / f"{name}.npz")
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def fixtures_dir():
  return FIXTURES
