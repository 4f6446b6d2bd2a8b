"""Re-ID end to end through the command lines on tiny embedded data: train (PK batches, ID + triplet +
center loss), evaluation tables with re-ranking, the ranked-list picture, eval mode, feature extraction."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO

TINY = ["--config=configs/baseline_market.py", "--config.model.stage_sizes=(1,1,1,1)",
        "--config.data.num_workers=0", "--config.data.embedded.num_train_ids=12",
        "--config.data.embedded.num_test_ids=6", "--config.data.embedded.images_per_id=4",
        "--config.embedded_schedule.data.img_size=(64,32)", "--config.embedded_schedule.train.batch_size=8",
        "--config.embedded_schedule.eval.batch_size=8", "--config.train.num_steps=3",
        "--config.embedded_schedule.train.log_every=1", "--config.eval.rerank=True",
        "--config.eval.num_ranked_figures=2", "--config.eval.figure_top_k=4"]


def _run(module, args, data_root, timeout=600):
  env = dict(os.environ, JAXMATCH_DATA=str(data_root), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("reid_cli")
  workdir = root / "run"
  proc = _run("jaxmatch.main", [*TINY, f"--workdir={workdir}"], root / "no_data_here")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return root, workdir, proc


def test_train_reports_cmc_map_and_reranking(trained):
  _, workdir, proc = trained
  assert "embedded synthetic dataset" in proc.stdout
  assert "Embedded data: using the recipe's CPU schedule" in proc.stdout
  result = json.load(open(workdir / "eval" / "final_market1501.json"))
  assert result["step"] == 3
  for mode in ("plain", "rerank"):
    r = result[mode]
    assert 0 <= r["mAP"] <= 100 and 0 <= r["rank1"] <= r["rank5"] <= r["rank10"] <= 100
    assert r["num_valid_queries"] > 0 and len(r["cmc"]) > 10
  config = json.load(open(workdir / "config.json"))
  assert config["model"]["num_classes"] == 12 and list(config["data"]["img_size"]) == [64, 32]
  losses = [json.loads(line) for line in open(workdir / "metrics.jsonl") if "train/loss" in line]
  assert [m["step"] for m in losses] == [1, 2, 3]
  assert all(np.isfinite(m["train/center_loss"]) and np.isfinite(m["train/triplet_loss"]) for m in losses)


def test_ranked_list_picture_is_written(trained):
  _, workdir, _ = trained
  img = np.asarray(Image.open(workdir / "eval" / "figures" / "final_market1501_ranked.png"))
  assert img.ndim == 3 and img.shape[0] > 2 * 64 and img.shape[1] > 5 * 32  # 2 rows of query + top 4


def test_eval_mode_reproduces_the_final_numbers(trained):
  root, workdir, _ = trained
  final = json.load(open(workdir / "eval" / "final_market1501.json"))
  proc = _run("jaxmatch.main", [*TINY, f"--workdir={workdir}", "--mode=eval"], root / "no_data_here")
  assert proc.returncode == 0, proc.stderr[-3000:]
  again = json.load(open(workdir / "eval" / "eval_market1501.json"))
  for mode in ("plain", "rerank"):
    np.testing.assert_allclose(again[mode]["cmc"], final[mode]["cmc"], rtol=1e-6)
    assert again[mode]["mAP"] == pytest.approx(final[mode]["mAP"], rel=1e-6)


def test_float16_reranking_like_transreid_is_a_config_option(trained):
  """--config.eval.rerank_float16_like_transreid reaches the evaluator: TransReID's float16 rounding
  moves the re-ranked distances a little (plain metrics are untouched)."""
  root, workdir, _ = trained
  final = json.load(open(workdir / "eval" / "final_market1501.json"))
  proc = _run("jaxmatch.main", [*TINY, f"--workdir={workdir}", "--mode=eval",
                                "--config.eval.rerank_float16_like_transreid=True"], root / "no_data_here")
  assert proc.returncode == 0, proc.stderr[-3000:]
  half = json.load(open(workdir / "eval" / "eval_market1501.json"))
  assert half["plain"]["mAP"] == pytest.approx(final["plain"]["mAP"], rel=1e-6)
  assert half["rerank"]["mAP"] == pytest.approx(final["rerank"]["mAP"], abs=2.0)


def test_rerank_options_follow_the_config():
  from jaxmatch.config_utils import load_config
  from jaxmatch.tasks.reid import rerank_options
  e = load_config(os.path.join(REPO, "configs", "baseline_market.py")).eval
  assert rerank_options(e) == {"k1": 20, "k2": 6, "lambda": 0.3, "float16_like_transreid": False}
  e.rerank_float16_like_transreid = True
  assert rerank_options(e)["float16_like_transreid"] is True


def test_extract_folder_and_dataset_split_agree(trained):
  root, workdir, _ = trained
  query_dir = workdir / "embedded_data" / "Market-1501-v15.09.15" / "query"
  out_folder, out_split = root / "folder_feats.npy", root / "split_feats.npy"
  proc = _run("jaxmatch.extract", [f"--workdir={workdir}", f"--images={query_dir}", f"--output={out_folder}"],
              root / "no_data_here")
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = _run("jaxmatch.extract", [f"--workdir={workdir}", "--dataset=market1501", "--split=query",
                                   f"--output={out_split}"], root / "no_data_here")
  assert proc.returncode == 0, proc.stderr[-3000:]
  a, b = np.load(out_folder), np.load(out_split)
  meta_a = json.load(open(root / "folder_feats.json"))
  meta_b = json.load(open(root / "split_feats.json"))
  assert a.shape == b.shape and a.shape[1] == 2048 and meta_a["num_images"] == a.shape[0]
  order = np.argsort(meta_a["names"])                     # both list the same files
  assert sorted(meta_a["names"]) == sorted(os.path.basename(n) for n in meta_b["names"])
  by_name = {os.path.basename(n): i for i, n in enumerate(meta_b["names"])}
  rows_b = [by_name[meta_a["names"][i]] for i in order]
  np.testing.assert_allclose(a[order], b[rows_b], rtol=1e-5, atol=1e-6)
  assert meta_a["pids"] == [int(n.split("_")[0]) for n in meta_a["names"]]
  np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)  # feat_norm


def test_missing_cross_dataset_is_a_clear_error(tmp_path):
  proc = _run("jaxmatch.main", [*TINY, f"--workdir={tmp_path / 'run'}",
                                "--config.eval.datasets=('market1501','msmt17')"], tmp_path / "none")
  assert proc.returncode == 1
  assert "evaluation dataset 'msmt17' was not found" in proc.stderr
  assert "config.data.folders.msmt17" in proc.stderr


def test_extract_needs_a_trained_workdir(tmp_path):
  proc = _run("jaxmatch.extract", [f"--workdir={tmp_path}", f"--images={tmp_path}", "--output=x.npy"], tmp_path)
  assert proc.returncode == 1 and "config.json" in proc.stderr


def test_embedded_schedule_merges_nested_fields_and_names_unknown_ones():
  import ml_collections

  from jaxmatch.config_utils import apply_embedded_schedule, load_config
  config = load_config(os.path.join(REPO, "configs", "baseline_market.py"))
  config.embedded_schedule = ml_collections.ConfigDict(dict(
      train=dict(batch_size=16, learning_rates=dict(head=1e-3)), data=dict(augment=dict(erasing="none"))))
  apply_embedded_schedule(config)
  assert config.train.batch_size == 16 and config.train.learning_rates.head == 1e-3
  assert config.train.learning_rates.centers == 0.5          # untouched sibling fields stay
  assert config.data.augment.erasing == "none" and config.data.augment.pad == 10
  config.embedded_schedule = ml_collections.ConfigDict(dict(train=dict(batch_sise=16)))
  with pytest.raises(ValueError, match="train.batch_sise"):
    apply_embedded_schedule(config)
