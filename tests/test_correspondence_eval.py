"""Multi-benchmark evaluation of the correspondence task: one table/json per (benchmark, threshold), keys
'pck@a/<label>', PF-WILLOW under both labelled thresholds, the transfer recipe's datasets, figures."""
from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxmatch.config_utils import load_config
from jaxmatch.evaluation.pck import pck_per_pair, pck_threshold
from jaxmatch.tasks.correspondence import Benchmark, CorrespondenceTask, benchmarks_from_config
from jaxmatch import parallel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = 64


def tiny_transfer_config():
  config = load_config(os.path.join(REPO, "configs", "transformatcher_transfer_spair.py:smoke"))
  config.data.img_size = S
  config.data.num_workers = 0
  config.data.embedded.update(dict(trn=8, val=8, test=10))
  config.eval.batch_size = 8
  config.eval.num_figures = 0
  return config


class ShiftModel:
  """A stand-in matcher with known output: every prediction is the ground truth moved by a fixed,
  per-keypoint offset (0 to 14 px), so PCK follows from the data alone."""

  def __init__(self):
    self.offsets = jnp.asarray(np.linspace(0, 14, 40, dtype=np.float32))

  def predict(self, params, model_state, batch):
    return batch["trg_kps"] + self.offsets[None, :, None] / np.sqrt(2)

  def predict_raw_argmax(self, params, model_state, batch):
    return batch["src_kps"]

  def predict_dense(self, params, model_state, batch):
    g = 8
    xy = (jnp.arange(g, dtype=jnp.float32) + 0.5) * (S / g)
    grid = jnp.stack(jnp.meshgrid(xy, xy), axis=-1)
    return jnp.broadcast_to(grid, (batch["src_img"].shape[0], g, g, 2))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("eval"))
  os.environ["JAXMATCH_DATA"] = os.path.join(workdir, "no_data_here")
  config = tiny_transfer_config()
  task = CorrespondenceTask(config, workdir)
  task.model = ShiftModel()
  scalars = task.evaluate({}, {}, parallel.make_mesh(), workdir, step=7, tag="final")
  return task, workdir, scalars


def _expected(task, bench: Benchmark, threshold: str) -> np.ndarray:
  """Per-alpha PCK x 100 computed straight from the pipeline batches and the PCK definitions."""
  fractions = []
  for batch in task._eval_batches(parallel.make_mesh(), bench):
    v = batch["valid"]
    thr = pck_threshold(threshold, batch["trg_kps"], batch["kp_mask"], batch["trg_bbox"], img_size=S)
    pred = batch["trg_kps"] + np.linspace(0, 14, 40, dtype=np.float32)[None, :, None] / np.sqrt(2)
    fractions.append(pck_per_pair(pred[v], batch["trg_kps"][v], batch["kp_mask"][v], thr[v], bench.alphas))
  return np.concatenate(fractions).mean(0) * 100


def test_every_benchmark_and_threshold_is_scored_and_labelled(evaluated):
  task, _, scalars = evaluated
  assert [b.name for b in task.benchmarks] == ["pfpascal", "pfwillow", "spair"]
  labels = {("pfpascal", "pfpascal"): "pfpascal", ("pfwillow", "pfwillow"): "pfwillow",
            ("pfwillow", "pfwillow_bbox_kp"): "pfwillow_bbox_kp", ("spair", "spair"): "spair"}
  for bench in task.benchmarks:
    for kind in bench.thresholds:
      label = labels[(bench.name, kind)]
      want = _expected(task, bench, kind)
      got = [scalars[f"pck@{a:g}/{label}"] for a in bench.alphas]
      np.testing.assert_allclose(got, want, rtol=1e-6)   # float64 accumulator vs float32 mean here
      assert scalars[f"num_pairs/{label}"] == 10
  # The headline (transfer setting T: SPair-71k test) also under the plain keys.
  assert scalars["pck@0.1"] == scalars["pck@0.1/spair"]
  # The padded-row threshold is never smaller than the keypoint box, so it inflates PCK.
  for a in (0.05, 0.1, 0.15):
    assert scalars[f"pck@{a:g}/pfwillow"] >= scalars[f"pck@{a:g}/pfwillow_bbox_kp"]
  assert scalars["pck@0.05/pfwillow"] > scalars["pck@0.05/pfwillow_bbox_kp"]


def test_each_benchmark_writes_its_own_labelled_json_and_table(evaluated):
  _, workdir, scalars = evaluated
  for name, labels in (("pfpascal", ["pfpascal"]), ("pfwillow", ["pfwillow", "pfwillow_bbox_kp"]),
                       ("spair", ["spair"])):
    result = json.load(open(os.path.join(workdir, "eval", f"final_model_{name}.json")))
    assert result["step"] == 7 and result["dataset"] == name and result["split"] == "test"
    assert list(result["results"]) == labels
    for label in labels:
      assert result["results"][label]["pck@0.1"] == pytest.approx(scalars[f"pck@0.1/{label}"])
    text = open(os.path.join(workdir, "eval", f"final_model_{name}.txt")).read()
    assert all(f"[{label}:" in text for label in labels)
  willow = json.load(open(os.path.join(workdir, "eval", "final_model_pfwillow.json")))["results"]
  assert "inflates" in willow["pfwillow"]["definition"]
  assert "intended" in willow["pfwillow_bbox_kp"]["definition"]
  assert set(willow["pfwillow"]["per_category"]) <= {"car(G)", "duck(S)", "motorbike(M)", "winebottle(wC)"}
  assert "per_difficulty" in json.load(open(os.path.join(workdir, "eval", "final_model_spair.json")))[
      "results"]["spair"]


def test_before_training_adds_the_baseline_and_periodic_uses_validation(evaluated, tmp_path):
  task, workdir, _ = evaluated
  before = task.evaluate({}, {}, parallel.make_mesh(), str(tmp_path), step=0, tag="before")
  assert before["raw_argmax_baseline/pck@0.1/pfwillow_bbox_kp"] < before["pck@0.1/pfwillow_bbox_kp"]
  assert (tmp_path / "eval" / "before_raw_argmax_baseline_spair.json").is_file()
  val = task.evaluate({}, {}, parallel.make_mesh(), str(tmp_path), step=3, tag="step3", periodic=True)
  assert set(val) == {"pck@0.05", "pck@0.1", "pck@0.15", "num_pairs", "pck@0.05/pfpascal_val",
                      "pck@0.1/pfpascal_val", "pck@0.15/pfpascal_val", "num_pairs/pfpascal_val"}
  assert json.load(open(tmp_path / "eval" / "step3_model_pfpascal_val.json"))["split"] == "val"


def test_bad_benchmark_configs_are_named():
  config = tiny_transfer_config()
  config.eval.benchmarks.pfwillow.split = "trn"
  with pytest.raises(ValueError, match="'pfwillow'.*splits \\('test',\\), not 'trn'"):
    benchmarks_from_config(config)
  config = tiny_transfer_config()
  config.eval.benchmarks.pfwillow.thresholds = ("pfwillow", "willow_box")
  with pytest.raises(ValueError, match="unknown thresholds \\['willow_box'\\]"):
    benchmarks_from_config(config)
  config = tiny_transfer_config()
  config.eval.benchmarks.spair.dataset = "caltech"
  with pytest.raises(ValueError, match="unknown dataset 'caltech'"):
    benchmarks_from_config(config)


def test_recipes_name_the_paper_settings():
  pascal = load_config(os.path.join(REPO, "configs", "transformatcher_pfpascal.py"))
  assert pascal.data.dataset == "pfpascal" and pascal.data.augment and pascal.eval.headline == "pfpascal"
  assert pascal.train.eval_every == 2940 // 16
  assert tuple(pascal.eval.benchmarks.pfwillow.thresholds) == ("pfwillow", "pfwillow_bbox_kp")
  noaug = load_config(os.path.join(REPO, "configs", "transformatcher_pfpascal.py:noaug"))
  assert not noaug.data.augment
  transfer = load_config(os.path.join(REPO, "configs", "transformatcher_transfer_spair.py:smoke,noaug"))
  assert transfer.eval.headline == "spair" and not transfer.data.augment and transfer.train.num_steps == 300
  with pytest.raises(ValueError, match="available: smoke, noaug"):
    load_config(os.path.join(REPO, "configs", "transformatcher_pfpascal.py:fast"))


def test_figures_for_the_first_pairs(evaluated, tmp_path):
  task, _, _ = evaluated
  task.config.eval.num_figures = 3
  try:
    task.evaluate({}, {}, parallel.make_mesh(), str(tmp_path), step=1, tag="final")
  finally:
    task.config.eval.num_figures = 0
  from PIL import Image
  figures = sorted(os.listdir(tmp_path / "eval" / "figures"))
  for name in ("pfpascal", "pfwillow", "spair"):
    for pair in range(3):
      for kind in ("keypoints", "warp"):
        path = tmp_path / "eval" / "figures" / f"final_{name}_{pair}_{kind}.png"
        assert path.name in figures
        img = np.asarray(Image.open(path))
        assert img.ndim == 3 and img.shape[2] in (3, 4) and img.std() > 0
  assert len(figures) == 3 * 3 * 2
