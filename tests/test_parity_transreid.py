"""`python -m jaxmatch.parity` for TransReID against the stand-in package (tests/parity_reference/transreid).

The stand-in has the official package layout (config/defaults.py, model/make_model.py,
model/backbones/vit_pytorch.py), entry points, hard-coded 768-wide necks and the torch._six import, so the
tool's reduced-size factory override, width fix and import shim are exercised. jaxmatch must pass every
stage with every parameter group covered; 1% perturbations of the stand-in must fail at the right stage.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jaxmatch.config_utils import load_config
from jaxmatch.parity import ParityError, cli_run, import_reference, run_parity
from jaxmatch.parity.transreid import ADAPTER

from conftest import optional_import

torch = optional_import("torch")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN = os.path.join(REPO, "tests", "parity_reference", "transreid")
CONFIG = os.path.join(REPO, "tests", "parity_reference", "transreid_small.py")
STAGES = ["patch_embed", "tokens", "blocks", "b1", "b2", "global_feat", "local_feats", "bn_feats", "eval_feature",
          "train_logits", "loss"]
BRANCHES = ["global", "local1", "local2", "local3", "local4"]
GROUPS = ["patch_embed", "pos_embed", "cls_token", "sie_embed", "block0", "block1", "b1", "b2"] + [
    f"{kind}.{b}" for b in BRANCHES for kind in ("neck", "classifier")]


@pytest.fixture(autouse=True)
def _forget_reference_modules():
  yield
  for name in [n for n, m in sys.modules.items() if (getattr(m, "__file__", None) or "").startswith(STANDIN + os.sep)]:
    del sys.modules[name]


@pytest.fixture(scope="module")
def passing_report():
  os.environ.pop("JAXMATCH_PARITY_STANDIN", None)
  return run_parity(load_config(CONFIG), STANDIN, seed=0, batch_size=4)


def test_jaxmatch_matches_the_standin_with_every_group_covered(passing_report):
  report = passing_report
  assert [r.stage.name for r in report.results] == STAGES
  assert report.passed, report.render()
  assert all(r.max_rel < 5e-5 for r in report.results), report.render()
  sens = report.sensitivity
  assert [g.group for g in sens.groups] == GROUPS
  assert sens.complete, sens.render()
  assert min(g.ratio for g in sens.groups) > 20, sens.render()
  assert sorted(sens.unused)[:2] == ["base.blocks.2.attn.proj.bias", "base.blocks.2.attn.proj.weight"]
  assert {"base.fc.weight", "base.norm.weight"} <= set(sens.unused)
  text = report.render()
  assert "reduced official backbone (32-d, 3 blocks, 4 heads)" in text and "4 x [4, 4, 32]" in text
  assert text.rstrip().splitlines()[-1].startswith("RESULT: PASS (11/11 stages within tolerance; 18/18 parameter "
                                                   "groups covered, weakest ")


@pytest.mark.parametrize("variant, first_bad", [
    ("perturb_sie_coe", "tokens"),            # SIE coefficient 3.0 -> 3.03
    ("perturb_shift", "b2"),                  # JPM rotation by shift instead of shift - 1
    ("perturb_local_divisor", "eval_feature"),  # local features / 4.04
])
def test_a_perturbed_standin_fails_at_its_first_diverging_stage(monkeypatch, passing_report, variant, first_bad):
  monkeypatch.setenv("JAXMATCH_PARITY_STANDIN", variant)
  report = run_parity(load_config(CONFIG), STANDIN, seed=0, batch_size=4, sensitivity=False)
  by_name = {r.stage.name: r for r in report.results}
  assert all(by_name[n].passed for n in STAGES[:STAGES.index(first_bad)]), report.render()
  assert not by_name[first_bad].passed and by_name[first_bad].max_rel > 1e-3, report.render()
  assert f"first diverging stage: {first_bad} (" in report.summary()


def test_configs_the_official_code_cannot_build_are_refused():
  config = load_config(CONFIG)
  config.model.num_parts, config.model.feature_form, config.model.label_smoothing = 3, "paper", 0.2
  config.model.num_classes = 0
  with pytest.raises(ParityError) as e:
    run_parity(config, STANDIN)
  msg = str(e.value)
  for part in ("hard-codes 4 local branches", "--config.model.feature_form=code", "label_smoothing=0.2",
               "--config.model.num_classes"):
    assert part in msg, msg
  config = load_config(CONFIG)
  config.model.update(embed_dim=0, depth=0, num_heads=0, mlp_ratio=0.0, backbone="deit_small")
  with pytest.raises(ParityError, match="hard-codes 768-wide BNNecks"):
    run_parity(config, STANDIN)


def _write(root, files: dict) -> str:
  for name, text in files.items():
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  return str(root)


def test_missing_repository_layout_entry_points_and_yacs(tmp_path):
  mods, entries, repo = ADAPTER.modules, ADAPTER.entry_points, ADAPTER.repository
  with pytest.raises(ParityError, match="reference repository not found: .*heshuting555/TransReID"):
    import_reference(str(tmp_path / "nowhere"), mods, entries, repo)
  flat = _write(tmp_path / "flat", {"make_model.py": ""})
  with pytest.raises(ParityError, match="missing config/defaults.py, model/backbones/vit_pytorch.py, "
                                        "model/make_model.py"):
    import_reference(flat, mods, entries, repo)
  hollow = _write(tmp_path / "hollow", {"config/__init__.py": "", "config/defaults.py": "_C = None\n",
                                        "model/__init__.py": "", "model/backbones/__init__.py": "",
                                        "model/backbones/vit_pytorch.py": "class TransReID: pass\n",
                                        "model/make_model.py": "def make_model(): pass\n"})
  with pytest.raises(ParityError, match="lacks the entry points .*model.backbones.vit_pytorch.deit_small_patch16_224_"
                                        "TransReID.*model.make_model.build_transformer_local"):
    import_reference(hollow, mods, entries, repo)
  no_yacs = _write(tmp_path / "no_yacs", {"config/__init__.py": "",
                                          "config/defaults.py": "from yacs_not_installed.config import CfgNode\n",
                                          "model/__init__.py": "", "model/backbones/__init__.py": "",
                                          "model/backbones/vit_pytorch.py": "", "model/make_model.py": ""})
  with pytest.raises(ParityError, match="importing config/defaults.py .*yacs_not_installed.*pip install yacs"):
    import_reference(no_yacs, mods, entries, repo, ADAPTER.install_hint)


def test_cli_returns_2_for_a_missing_repository_and_a_bad_config(capsys, tmp_path):
  assert cli_run(load_config(CONFIG), str(tmp_path / "no_clone")) == 2
  assert "error: reference repository not found" in capsys.readouterr().err
  config = load_config(CONFIG)
  config.model.sie_camera, config.model.num_cameras = True, 1
  assert cli_run(config, STANDIN) == 2
  assert "single camera value" in capsys.readouterr().err


def test_command_line_exits_2_with_a_clear_error():
  proc = subprocess.run([sys.executable, "-m", "jaxmatch.parity", "--config", CONFIG, "--reference_repo",
                         os.path.join(REPO, "no_such_clone")], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "error: reference repository not found" in proc.stderr and "heshuting555/TransReID" in proc.stderr
