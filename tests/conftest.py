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


def load_fixture(name: str) -> dict:
  """Loads shared/fixtures/<name>.npz as a dict of numpy arrays (skips if shared/ is absent)."""
  path = FIXTURES / f"{name}.npz"
  if not path.exists():
    pytest.skip(f"fixture {path} not available")
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def fixtures_dir():
  return FIXTURES
