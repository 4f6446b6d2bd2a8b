"""TransReID end to end through the command lines on tiny embedded data: train (SIE camera table from the
training split, JPM, both losses), evaluation, feature extraction of a dataset split and of loose images
(whose unknown cameras are an error unless a fixed row is given), eval mode."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from test_cli_reid import _run

TINY = ["--config=configs/transreid_market.py", "--config.data.num_workers=0",
        "--config.data.embedded.num_train_ids=12", "--config.data.embedded.num_test_ids=6",
        "--config.data.embedded.images_per_id=4", "--config.embedded_schedule.data.img_size=(64,32)",
        "--config.embedded_schedule.model.embed_dim=32", "--config.embedded_schedule.model.depth=2",
        "--config.embedded_schedule.train.batch_size=8", "--config.embedded_schedule.eval.batch_size=8",
        "--config.train.num_steps=3", "--config.embedded_schedule.train.log_every=1",
        "--config.eval.num_ranked_figures=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("transreid_cli")
  workdir = root / "run"
  proc = _run("jaxmatch.main", [*TINY, f"--workdir={workdir}"], root / "no_data_here")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return root, workdir


def test_trains_with_the_training_cameras_as_the_sie_table(trained):
  _, workdir = trained
  config = json.load(open(workdir / "config.json"))
  assert config["model"]["num_cameras"] == 6 and config["data"]["camera_ids"] == [1, 2, 3, 4, 5, 6]
  assert config["model"]["num_classes"] == 12 and config["model"]["jpm"]
  losses = [json.loads(line) for line in open(workdir / "metrics.jsonl") if "train/loss" in line]
  assert [m["step"] for m in losses] == [1, 2, 3] and all(np.isfinite(m["train/loss"]) for m in losses)
  final = json.load(open(workdir / "eval" / "final_market1501.json"))["plain"]
  assert final["num_valid_queries"] > 0 and 0 <= final["mAP"] <= 100


def test_extract_split_and_loose_images(trained, tmp_path):
  root, workdir = trained
  out = tmp_path / "q.npy"
  proc = _run("jaxmatch.extract", [f"--workdir={workdir}", "--dataset=market1501", "--split=query",
                                   f"--output={out}"], root / "no_data_here")
  assert proc.returncode == 0, proc.stderr[-3000:]
  feats = np.load(out)
  assert feats.shape[1] == 5 * 32  # global + 4 local features
  np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
  # Loose crops without camera ids in their names: an error naming the id and the table, or a fixed row.
  query = workdir / "embedded_data" / "Market-1501-v15.09.15" / "query"
  loose = tmp_path / "crops"
  loose.mkdir()
  for i, f in enumerate(sorted(query.glob("*.jpg"))[:5]):
    shutil.copy(f, loose / f"crop{i}.jpg")
  proc = _run("jaxmatch.extract", [f"--workdir={workdir}", f"--images={loose}", f"--output={tmp_path / 'l'}"],
              root / "no_data_here")
  assert proc.returncode == 1
  assert "camera id -1" in proc.stderr and "camera table of 6" in proc.stderr and "fixed_camera" in proc.stderr
  proc = _run("jaxmatch.extract", [f"--workdir={workdir}", f"--images={loose}", f"--output={tmp_path / 'l'}",
                                   "--fixed_camera=0"], root / "no_data_here")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert np.load(tmp_path / "l.npy").shape == (5, 5 * 32)


def test_eval_mode_reproduces_the_final_numbers(trained):
  root, workdir = trained
  final = json.load(open(workdir / "eval" / "final_market1501.json"))["plain"]
  proc = _run("jaxmatch.main", [*TINY, f"--workdir={workdir}", "--mode=eval"], root / "no_data_here")
  assert proc.returncode == 0, proc.stderr[-3000:]
  again = json.load(open(workdir / "eval" / "eval_market1501.json"))["plain"]
  assert again["mAP"] == pytest.approx(final["mAP"], rel=1e-6)
