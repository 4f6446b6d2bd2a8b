"""End to end through the command line on tiny embedded data: train, resume, evaluate, bad inputs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from test_convert_cli import REPO, tiny_config

TINY = ["--config=configs/transformatcher_spair.py:smoke", "--config.data.img_size=64",
        "--config.data.num_workers=0", "--config.data.embedded.trn=16", "--config.data.embedded.val=8",
        "--config.data.embedded.test=8", "--config.eval.batch_size=8", "--config.train.num_steps=4",
        "--config.train.checkpoint_every=2", "--config.train.log_every=2", "--config.train.eval_every=2",
        "--config.eval.num_figures=0"]


def _main(args, env_data, timeout=600):
  env = dict(os.environ, JAXMATCH_DATA=str(env_data), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "jaxmatch.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("cli")
  workdir = root / "run"
  proc = _main([*TINY, f"--workdir={workdir}"], root / "no_data_here")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return root, workdir, proc


def test_train_prints_pck_before_and_after(trained):
  _, workdir, proc = trained
  assert "running on the embedded synthetic dataset" in proc.stdout
  for name in ("before_model_spair", "before_raw_argmax_baseline_spair", "final_model_spair"):
    assert f"({name}," in proc.stdout
    result = json.load(open(workdir / "eval" / f"{name}.json"))["results"]["spair"]
    assert 0.0 <= result["pck@0.1"] <= 100.0 and result["num_pairs"] == 8
  assert "step 4/4" in proc.stderr  # progress bar
  periodic = json.load(open(workdir / "eval" / "step2_model_spair_val.json"))
  assert periodic["split"] == "val"  # validation during training
  assert periodic["results"]["spair_val"]["num_pairs"] == 8
  steps = [json.loads(l)["step"] for l in open(workdir / "metrics.jsonl") if "train/loss" in l]
  assert steps == [2, 4]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]


def test_rerun_resumes_instead_of_restarting(trained):
  root, workdir, _ = trained
  proc = _main([*TINY, f"--workdir={workdir}"], root / "no_data_here")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "(before_model_spair," not in proc.stdout  # the finished run is not evaluated as a fresh model
  assert "(final_model_spair, step 4" in proc.stdout


def test_eval_mode_uses_the_checkpoint(trained):
  root, workdir, _ = trained
  proc = _main([*TINY, f"--workdir={workdir}", "--mode=eval"], root / "no_data_here")
  assert proc.returncode == 0, proc.stderr[-3000:]
  final = json.load(open(workdir / "eval" / "final_model_spair.json"))["results"]["spair"]
  evaluated = json.load(open(workdir / "eval_result.json"))
  assert evaluated["step"] == 4
  assert evaluated["pck@0.1/spair"] == pytest.approx(final["pck@0.1"], abs=1e-9)
  assert evaluated["pck@0.1"] == evaluated["pck@0.1/spair"]  # the headline benchmark


def test_pfpascal_recipe_end_to_end_on_embedded_data(tmp_path):
  """Train on the embedded PF-PASCAL, evaluate PF-PASCAL test and PF-WILLOW under both thresholds."""
  args = ["--config=configs/transformatcher_pfpascal.py:smoke,noaug", *TINY[1:], "--config.train.num_steps=2",
          "--config.train.eval_every=0", "--config.eval.num_figures=2",
          f"--workdir={tmp_path / 'run'}"]
  proc = _main(args, tmp_path / "no_data_here")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "No PF-PASCAL found" in proc.stdout and "No PF-WILLOW found" in proc.stdout
  willow = json.load(open(tmp_path / "run" / "eval" / "final_model_pfwillow.json"))["results"]
  assert set(willow) == {"pfwillow", "pfwillow_bbox_kp"} and willow["pfwillow"]["num_pairs"] == 8
  assert willow["pfwillow"]["pck@0.1"] >= willow["pfwillow_bbox_kp"]["pck@0.1"]
  pascal = json.load(open(tmp_path / "run" / "eval" / "final_model_pfpascal.json"))["results"]["pfpascal"]
  assert pascal["num_pairs"] == 8 and 0.0 <= pascal["pck@0.1"] <= 100.0
  # The first 2 pairs of each evaluation (before and after training) of each benchmark.
  drawn = os.listdir(tmp_path / "run" / "eval" / "figures")
  assert len([f for f in drawn if f.startswith("final_pfwillow_") and f.endswith("_warp.png")]) == 2
  assert len(drawn) == 2 * 2 * 2 * 2


def test_misspelled_override_names_the_key(tmp_path):
  proc = _main([*TINY, f"--workdir={tmp_path}", "--config.train.learning_rate=0.1"], tmp_path)
  assert proc.returncode != 0
  assert "learning_rate" in proc.stderr


def test_wrong_value_type_names_the_key(tmp_path):
  proc = _main([*TINY, f"--workdir={tmp_path}", "--config.train.batch_size=many"], tmp_path)
  assert proc.returncode != 0
  assert "batch_size" in proc.stderr


def test_wrong_dataset_folder_is_an_error_not_a_fallback(tmp_path):
  wrong = tmp_path / "Downloads"
  (wrong / "JPEGImages").mkdir(parents=True)
  proc = _main([*TINY, f"--workdir={tmp_path / 'w'}", f"--config.data.manual_dir={wrong}"], tmp_path)
  assert proc.returncode == 1
  assert "Layout" in proc.stderr and "PairAnnotation" in proc.stderr  # names the expected layout
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "w" / "embedded_data").exists()


def test_corrupt_image_names_the_file(trained, tmp_path):
  from jaxmatch.runner import run
  from input_pipeline.errors import CorruptImageError
  root, _, _ = trained
  data = tmp_path / "SPair-71k"
  shutil.copytree(root / "run" / "embedded_data" / "SPair-71k", data)
  victim = sorted((data / "JPEGImages").rglob("*.jpg"))[3]
  victim.write_bytes(victim.read_bytes()[:200])
  config = tiny_config()
  config.data.manual_dir = str(data)
  with pytest.raises(CorruptImageError, match=victim.name):
    run(config, str(tmp_path / "w"), "train")


class _Killed(Exception):
  pass


def _restore(workdir, config):
  from jaxmatch import parallel
  from jaxmatch.tasks.base import ModelOnlyTask
  from jaxmatch.train import checkpoint as ckpt
  from jaxmatch.train import loop
  mesh = parallel.make_mesh(1)
  state, _ = loop.init_state(ModelOnlyTask(config), config.train, mesh, 0)
  manager = ckpt.make_manager(str(workdir), with_data=False)
  restored, meta = ckpt.restore(manager, ckpt.abstract_like(state, parallel.replicated(mesh)))
  manager.close()
  return restored, meta


def test_killed_run_resumes_to_the_uninterrupted_result(trained, tmp_path):
  """Interrupted after step 3 (checkpoint at 2): the rerun redoes step 3 with the same batch."""
  import jax
  import numpy as np
  from jaxmatch import tasks
  from jaxmatch.train import loop
  root, uninterrupted, _ = trained
  config = tiny_config()
  config.train.update(dict(num_steps=4, checkpoint_every=2, log_every=2, num_devices=1,
                           eval_before_training=False))
  workdir = str(tmp_path / "killed")

  def kill_after_3(step):
    if step == 3:
      raise _Killed()

  os.environ["JAXMATCH_DATA"] = str(root / "no_data_here")
  with pytest.raises(_Killed):
    loop.train_and_evaluate(config, workdir, tasks.build(config, workdir), after_step=kill_after_3)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
  loop.train_and_evaluate(config, workdir, tasks.build(config, workdir))
  resumed, meta = _restore(workdir, config)
  reference, _ = _restore(uninterrupted, config)
  assert meta["step"] == 4
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(reference)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
