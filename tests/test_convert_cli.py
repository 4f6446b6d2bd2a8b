"""`python -m jaxmatch.convert` round trip: official-layout file -> checkpoint -> `main --mode eval`."""
from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxmatch import convert, models
from jaxmatch.config_utils import load_config
from jaxmatch.convert.to_workdir import convert_to_workdir
from jaxmatch.convert.keys import CheckpointMismatchError
from jaxmatch.convert.transformatcher import transformatcher_to_torch

from conftest import optional_import

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config():
  config = load_config(os.path.join(REPO, "configs", "transformatcher_spair.py:smoke"))
  config.data.img_size = 64
  config.data.num_workers = 0
  config.data.embedded.update(dict(trn=16, val=8, test=8))
  config.eval.batch_size = 8
  return config


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
  """A random model written in the official layout (doubled backbone, match2match names) as .pth."""
  torch = optional_import("torch")
  config = tiny_config()
  params, model_state = models.build(config).init_variables(jax.random.key(7))
  variables = jax.tree.map(np.asarray, {"params": params, **model_state})
  rng = np.random.default_rng(0)  # make the two streams differ, so a swapped half would be caught
  variables["params"]["target_backbone"] = jax.tree.map(
      lambda x: (x * rng.uniform(0.9, 1.1, x.shape)).astype(np.float32), variables["params"]["target_backbone"])
  sd = transformatcher_to_torch(variables, config.model)
  path = tmp_path_factory.mktemp("official") / "transformatcher.pth"
  torch.save({"state_dict": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}}, path)
  return config, variables, sd, str(path)


def test_round_trip_is_exact(official_file):
  config, variables, _, path = official_file
  back = convert.from_torch(config, convert.load_state_dict(path))
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)


def test_converted_checkpoint_evaluates_like_the_original(official_file, tmp_path):
  config, variables, _, path = official_file
  workdir = str(tmp_path / "converted")
  convert_to_workdir(config, workdir, torch_checkpoint=path)
  from jaxmatch.runner import run
  result = run(config, workdir, "eval")
  assert 0.0 <= result["pck@0.1"] <= 100.0
  # Same weights through the model directly give the same PCK.
  from jaxmatch import tasks
  from jaxmatch import parallel
  task = tasks.build(config, workdir)
  mesh = parallel.make_mesh()
  direct = task.evaluate(variables["params"], {"batch_stats": variables["batch_stats"]}, mesh, workdir,
                         step=0, tag="direct")
  assert direct["pck@0.1"] == pytest.approx(result["pck@0.1"], abs=1e-9)


def test_training_continues_from_converted_weights(official_file, tmp_path):
  config, _, _, path = official_file
  config = config.copy_and_resolve_references()
  workdir = str(tmp_path / "finetune")
  convert_to_workdir(config, workdir, torch_checkpoint=path)
  config.train.update(dict(num_steps=2, checkpoint_every=2, log_every=1, eval_before_training=False))
  from jaxmatch.runner import run
  result = run(config, workdir, "train")
  assert result.step == 2 and result.eval_before is None  # resumed from the converted step-0 state
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["0", "2"]


def test_safetensors_and_npz_are_read(official_file, tmp_path):
  config, _, sd, _ = official_file
  from safetensors.numpy import save_file
  save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
  np.savez(tmp_path / "w.npz", **sd)
  a = convert.load_state_dict(str(tmp_path / "w.safetensors"))
  b = convert.load_state_dict(str(tmp_path / "w.npz"))
  assert sorted(a) == sorted(b) == sorted(sd)


def test_pickled_code_is_refused_without_opt_in(tmp_path):
  torch = optional_import("torch")
  path = tmp_path / "legacy.pth"
  torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": _Legacy()}, path)
  with pytest.raises(ValueError, match="allow_pickle"):
    convert.load_state_dict(str(path))
  assert "w" in convert.load_state_dict(str(path), allow_pickle=True)


class _Legacy:  # an arbitrary pickled object, as old training scripts saved (args namespaces etc.)
  pass


def test_cli_reports_mismatched_checkpoint(official_file, tmp_path):
  config, _, sd, _ = official_file
  broken = dict(sd)
  del broken["match2match.to_original.0.bias"]
  broken["match2match.to_embedding.1.weight"] = broken["match2match.to_embedding.1.weight"][:, :3]
  path = tmp_path / "broken.npz"
  np.savez(path, **broken)
  with pytest.raises(CheckpointMismatchError):
    convert.from_torch(config, convert.load_state_dict(str(path)))
  cmd = [sys.executable, "-m", "jaxmatch.convert", "--config", "configs/transformatcher_spair.py:smoke",
         "--config.data.img_size=64", f"--torch_checkpoint={path}", f"--workdir={tmp_path / 'out'}"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert "match2match.to_original.0.bias" in proc.stderr and "match2match.to_embedding.1.weight" in proc.stderr
  assert "Traceback" not in proc.stderr
