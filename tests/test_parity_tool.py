"""`python -m jaxmatch.parity` against the stand-in reference package (tests/parity_reference/transformatcher).

The stand-in has the official repository's flat modules and entry points and computes what the official code
computes, so jaxmatch must pass every stage; its perturbed variants (JAXMATCH_PARITY_STANDIN) must make the
tool fail and name the first diverging stage, down to a 1% change of the attention scale. The sensitivity
self-check must find every parameter group covered under the sharpened random weights and name the groups
plain random weights leave untested. The config is the CPU recipe at 64 px with the official
keypoint-transfer constants, so a comparison takes seconds once jaxmatch's forward is compiled; the
self-check adds one reference forward per parameter group, so only the runs that test it enable it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from jaxmatch.config_utils import load_config
from jaxmatch.parity import (ParityError, Stage, check_sensitivity, cli_run, compare_stage, format_table,
                             import_reference, relative_error, run_parity)
from jaxmatch.parity.transformatcher import ADAPTER

from conftest import optional_import

torch = optional_import("torch")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN = os.path.join(REPO, "tests", "parity_reference", "transformatcher")
OVERRIDES = {"data.img_size": 64, "model.kernel_sigma": 10.0, "model.tau_eval": 0.05}
STAGES = ["backbone.source.conv4_x", "backbone.source.conv5_x", "backbone.target.conv4_x",
          "backbone.target.conv5_x", "correlation", "match2match", "correlation_upsampled", "keypoints"]
GROUPS = [f"backbone.{stream}.{part}" for stream in ("source", "target")
          for part in ("stem", "conv2_x", "conv3_x", "conv4_x", "conv5_x")] + [
    "head.embedding", "head.attention_norm", "head.query", "head.key", "head.value", "head.query_logits",
    "head.key_logits", "head.rotary_freqs", "head.to_r", "head.to_out", "head.mlp_norm", "head.mlp",
    "head.to_original"]
# the attention paths plain random weights cannot test (flat softmaxes over all tokens)
BLIND_WITHOUT_SHARPENING = {"head.value", "head.query_logits", "head.key_logits"}


def standin_config():
  config = load_config(os.path.join(REPO, "configs", "transformatcher_spair.py:smoke"))
  config.data.img_size = OVERRIDES["data.img_size"]
  config.model.kernel_sigma = OVERRIDES["model.kernel_sigma"]
  config.model.tau_eval = OVERRIDES["model.tau_eval"]
  return config


@pytest.fixture(autouse=True)
def _forget_reference_modules():
  """The stand-in's flat modules (utils, geometry, ...) must not outlive a test in sys.modules."""
  yield
  for name in [n for n, m in sys.modules.items()
               if (getattr(m, "__file__", None) or "").startswith(STANDIN + os.sep)]:
    del sys.modules[name]


@pytest.fixture(scope="module")
def passing_report():
  """The default run: sharpened random weights, then the sensitivity self-check."""
  os.environ.pop("JAXMATCH_PARITY_STANDIN", None)
  return run_parity(standin_config(), STANDIN, seed=0, batch_size=2)


def run_stages_only(**kwargs):
  return run_parity(standin_config(), STANDIN, seed=0, batch_size=2, sensitivity=False, **kwargs)


# ----------------------------------------------------------------------------- comparison rules
def test_relative_error_is_relative_to_the_largest_reference_value():
  ref = np.array([100.0, 1e-6, -50.0])
  ours = ref + np.array([0.0, 1e-3, 0.0])  # huge element-wise ratio at the tiny entry, small overall
  abs_err, rel_err = relative_error(ours, ref)
  assert abs_err == pytest.approx(1e-3) and rel_err == pytest.approx(1e-5)
  assert relative_error(np.ones(3), np.zeros(3)) == (1.0, 1.0)  # all-zero reference: absolute error


def test_compare_stage_judges_lists_by_their_worst_tensor_and_rejects_bad_shapes():
  stage = Stage("taps", "test", rtol=1e-3)
  ref = [np.ones((2, 3)), np.full((2, 3), 10.0)]
  ours = [ref[0] + 1e-4, ref[1] + 1e-2]  # tensor 1: 1e-3 relative, tensor 0: 1e-4
  result = compare_stage(stage, ours, ref)
  assert result.passed and result.max_rel == pytest.approx(1e-3) and "worst: tensor 1" in result.note
  assert not compare_stage(Stage("t", "", 1e-4), ours, ref).passed
  shape = compare_stage(stage, [np.ones((2, 4)), ref[1]], ref)
  assert not shape.passed and "shape mismatch at tensor 0" in shape.note
  nan = compare_stage(stage, np.array([np.nan, 1.0]), np.array([1.0, 1.0]))
  assert not nan.passed and "non-finite values in the jaxmatch output" in nan.note
  table = format_table([result, shape])
  assert table.splitlines()[0].split()[:4] == ["stage", "shape", "max", "abs"]
  assert "FAIL" in table.splitlines()[2]


# ----------------------------------------------------------------------------- a correct port passes
def test_jaxmatch_matches_the_standin_at_every_stage(passing_report):
  report = passing_report
  assert [r.stage.name for r in report.results] == STAGES
  assert report.passed, report.render()
  for r in report.results:
    # far inside the 1e-4 tolerance; the sharpened head amplifies float32 rounding to ~1e-5
    bound = 3e-5 if r.stage.name in ("match2match", "correlation_upsampled") else 1e-5
    assert r.max_rel < bound, f"{r.stage.name}: {r.max_rel}"
  text = report.render()
  assert "random official initialisation (torch seed 0), sharpened (" in text
  assert "2 seeded random pair(s) of 64x64 images" in text
  assert text.rstrip().splitlines()[-1].startswith("RESULT: PASS (8/8 stages within tolerance; 23/23 "
                                                   "parameter groups covered, weakest ")
  assert "6 x [2, 1024, 4, 4]" in text  # six conv4_x blocks of ResNet-50 at 64 px
  data = json.loads(report.to_json())
  assert data["passed"] and [s["stage"] for s in data["stages"]] == STAGES


# ----------------------------------------------------------------------------- the comparison can fail
def test_self_check_finds_every_transformatcher_parameter_group_covered(passing_report):
  sens = passing_report.sensitivity
  assert [g.group for g in sens.groups] == GROUPS
  assert sens.complete and sens.ungrouped == [], sens.render()
  assert sorted(sens.unused) == ["backbone.fc.bias", "backbone.fc.weight", "match2match.posenc"]
  # a 1% change of any group must move a stage well beyond tolerance (the float32 noise is ~10x inside it)
  weakest = min(sens.groups, key=lambda g: g.ratio)
  assert weakest.ratio > 5, sens.render()
  counts = {g.group: g.tensors for g in sens.groups}
  assert counts["head.rotary_freqs"] == 1   # one buffer shared by the six blocks: scaled once
  assert counts["backbone.source.conv4_x"] == counts["backbone.target.conv4_x"] == 95  # 6 blocks, bn x4
  text = passing_report.render()
  assert "head.key_logits" in text and "NOT COVERED" not in text
  assert "not perturbed (never read by the official forward): backbone.fc.bias" in text
  data = json.loads(passing_report.to_json())
  assert data["sensitivity"]["complete"] and data["sensitivity"]["covered"] == len(GROUPS)
  assert data["summary"] == passing_report.summary()


class _TwoLayers(torch.nn.Module):
  """A toy 'official model': `used` feeds the output, `idle` does not, `shared` is one tensor under two names."""

  def __init__(self):
    super().__init__()
    self.used = torch.nn.Linear(3, 3)
    self.idle = torch.nn.Linear(3, 3)
    self.extra = torch.nn.Parameter(torch.ones(2))
    self.register_buffer("shared", torch.ones(2))
    self.register_buffer("shared_alias", self.shared)


class _ToyAdapter:
  stage = Stage("out", "toy output", rtol=1e-4)

  def stages(self, config):
    return (self.stage,)

  def parameter_groups(self, shapes, config):
    return {"used": ["used.weight", ("used.bias", slice(0, 2))], "idle": ["idle.weight", "idle.bias"],
            "shared": ["shared", "shared_alias"]}

  def unused_parameters(self, shapes, config):
    return {}


def test_a_group_that_moves_no_stage_is_reported_not_covered():
  model = _TwoLayers()
  before = {k: v.clone() for k, v in model.state_dict().items()}
  x = torch.ones(1, 3)
  rerun = lambda: {"out": (model.used(x) * model.shared.sum()).detach().numpy()}  # noqa: E731
  with torch.no_grad():
    ref = rerun()
    report = check_sensitivity(_ToyAdapter(), model, None, ref, rerun)
  by_name = {g.group: g for g in report.groups}
  assert by_name["used"].covered and by_name["used"].tensors == 2
  assert by_name["shared"].covered and by_name["shared"].tensors == 1   # scaled once, not twice
  assert by_name["shared"].max_rel == pytest.approx(0.01, rel=1e-4)
  assert not by_name["idle"].covered and by_name["idle"].max_rel == 0.0
  assert report.not_covered == ["idle"] and report.ungrouped == ["extra"] and not report.complete
  assert report.gaps() == ("1 parameter groups not covered: idle; 1 state_dict keys in no parameter group: "
                           "extra")
  assert "NOT COVERED" in report.render() and "IN NO GROUP (untested): extra" in report.render()
  for k, v in model.state_dict().items():   # every perturbation was undone exactly
    assert torch.equal(v, before[k]), k


# ----------------------------------------------------------------------------- a real mismatch fails
@pytest.mark.parametrize("variant, first_bad", [
    ("perturb_match2match", "match2match"),   # perturb_correlation: the command-line test below
    ("perturb_attention_scale", "match2match"),   # dim_head**-0.5 x 1.01
    ("perturb_key_temperature", "match2match"),   # key-softmax logits / 1.05
    pytest.param("perturb_correlation", "correlation", marks=pytest.mark.slow),
    pytest.param("perturb_keypoints", "keypoints", marks=pytest.mark.slow),
])
def test_a_perturbed_reference_fails_at_its_first_diverging_stage(monkeypatch, passing_report, variant, first_bad):
  monkeypatch.setenv("JAXMATCH_PARITY_STANDIN", variant)
  report = run_stages_only()
  assert not report.passed
  by_name = {r.stage.name: r for r in report.results}
  before = STAGES[:STAGES.index(first_bad)]
  assert all(by_name[n].passed for n in before), report.render()
  assert not by_name[first_bad].passed and by_name[first_bad].max_rel > 1e-3
  assert f"first diverging stage: {first_bad} (" in report.summary()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["perturb_attention_scale", "perturb_key_temperature"])
def test_subtle_perturbations_pass_unnoticed_without_sharpening(monkeypatch, passing_report, variant):
  """Why the tool sharpens: under the plain official initialisation these changes move no stage."""
  monkeypatch.setenv("JAXMATCH_PARITY_STANDIN", variant)
  assert run_stages_only(sharpen=False).passed


# ----------------------------------------------------------------------------- clear errors
def test_config_the_official_code_cannot_build_is_refused_before_running():
  config = load_config(os.path.join(REPO, "configs", "transformatcher_spair.py:smoke"))  # sigma 5, tau 0.1
  config.model.backbone_depth = 152
  with pytest.raises(ParityError) as e:
    run_parity(config, STANDIN)
  msg = str(e.value)
  assert "backbone_depth=152" in msg and "ResNet-50 or ResNet-101 only" in msg
  assert "--config.model.kernel_sigma=10" in msg and "--config.model.tau_eval=0.05" in msg


def test_official_hard_coded_channels_are_reported(monkeypatch):
  monkeypatch.setenv("JAXMATCH_PARITY_STANDIN", "official_limits")
  with pytest.raises(ParityError, match=r"takes 26 correlation channels; this config \(ResNet-50, tap stages "
                                        r"\(3, 4\)\) gives 9"):
    run_parity(standin_config(), STANDIN)


def test_a_rotary_library_without_the_api_the_official_code_calls_is_reported(monkeypatch):
  from jaxmatch.parity.transformatcher import rotary_api_problems
  fake = types.ModuleType("rotary_embedding_torch")

  class RotaryEmbedding:  # the 0.5.0+ signature
    def forward(self, t, seq_len=None, offset=0):
      return t

  fake.RotaryEmbedding = RotaryEmbedding
  monkeypatch.setitem(sys.modules, "rotary_embedding_torch", fake)
  [problem] = rotary_api_problems()
  assert "cache_key" in problem and "rotary-embedding-torch<=0.4.0" in problem
  RotaryEmbedding.forward = lambda self, t, cache_key=None: t  # the 0.1-0.4 signature
  assert rotary_api_problems() == []


def _write(folder, files: dict):
  folder.mkdir(parents=True, exist_ok=True)
  for name, text in files.items():
    (folder / name).write_text(text)
  return str(folder)


def test_missing_or_wrong_repository_and_missing_entry_points(tmp_path):
  mods, entries = ADAPTER.modules, ADAPTER.entry_points
  with pytest.raises(ParityError, match="reference repository not found: .*nowhere.*wookiekim/transformatcher"):
    import_reference(str(tmp_path / "nowhere"), mods, entries, ADAPTER.repository)
  wrong = _write(tmp_path / "other", {"README.md": "x", "model.py": "x = 1\n"})
  with pytest.raises(ParityError, match="does not look like a clone of .*missing utils.py, geometry.py, "
                                        "backbone.py, transformatcher.py"):
    import_reference(wrong, mods, entries, ADAPTER.repository)
  hollow = _write(tmp_path / "hollow", {"utils.py": "", "geometry.py": "class Geometry: pass\n",
                                        "backbone.py": "def resnet50(): pass\n", "transformatcher.py": ""})
  with pytest.raises(ParityError, match="lacks the entry points .*: transformatcher.TransforMatcher, backbone.resnet101"):
    import_reference(hollow, mods, entries, ADAPTER.repository)
  broken = _write(tmp_path / "broken", {"utils.py": "", "geometry.py": "", "backbone.py": "",
                                        "transformatcher.py": "import rotary_embedding_torch_absent\n"})
  with pytest.raises(ParityError, match="importing transformatcher.py .* No module named "
                                        "'rotary_embedding_torch_absent'; install .*rotary-embedding-torch<=0.4.0"):
    import_reference(broken, mods, entries, ADAPTER.repository, ADAPTER.install_hint)


def test_the_named_folder_is_imported_even_if_a_module_of_the_same_name_was_loaded(tmp_path):
  first = _write(tmp_path / "a", {"geometry.py": "WHO = 'a'\n"})
  second = _write(tmp_path / "b", {"geometry.py": "WHO = 'b'\n"})
  try:
    assert import_reference(first, ["geometry"], {"geometry": ("WHO",)}, "x")["geometry"].WHO == "a"
    assert import_reference(second, ["geometry"], {"geometry": ("WHO",)}, "x")["geometry"].WHO == "b"
  finally:
    sys.modules.pop("geometry", None)
  assert first not in sys.path and second not in sys.path


# ----------------------------------------------------------------------------- torch checkpoints
@pytest.fixture(scope="module")
def seed5_state_dict():
  """An official-layout state_dict from the stand-in's own constructor, seeded differently from the runs."""
  os.environ.pop("JAXMATCH_PARITY_STANDIN", None)
  modules = import_reference(STANDIN, ADAPTER.modules, ADAPTER.entry_points, ADAPTER.repository)
  torch.manual_seed(5)
  with torch.no_grad():
    model = ADAPTER.build_reference(modules, standin_config())
  return model.state_dict()


def test_torch_checkpoint_is_loaded_into_both_models(tmp_path, passing_report, seed5_state_dict):
  path = tmp_path / "trained.pth"
  torch.save({"state_dict": seed5_state_dict, "epoch": 3}, path)
  report = run_parity(standin_config(), STANDIN, torch_checkpoint=str(path), seed=0, batch_size=2)
  assert report.passed, report.render()
  assert report.weights.startswith(str(path)) and "sharpened" not in report.weights
  # Different weights than the seed-0 initialisation: the stage values differ, so the file was used.
  assert [r.max_abs for r in report.results] != [r.max_abs for r in passing_report.results]
  # Used as given (plain random weights here): the self-check names the attention paths they leave untested.
  sens = report.sensitivity
  assert [g.group for g in sens.groups] == GROUPS
  assert BLIND_WITHOUT_SHARPENING <= set(sens.not_covered), sens.render()
  assert report.summary().startswith(f"RESULT: PASS, but {len(sens.not_covered)} parameter groups not covered: ")
  assert "NOT COVERED" in report.render()
  assert not json.loads(report.to_json())["sensitivity"]["complete"]


def test_checkpoint_that_does_not_fit_or_needs_pickle_is_an_error(tmp_path, seed5_state_dict):
  pickled = tmp_path / "pickled.pth"
  torch.save({"state_dict": {}, "args": _Args()}, pickled)
  with pytest.raises(ParityError, match=r"(?s)weights_only=True.*--allow_pickle"):
    run_parity(standin_config(), STANDIN, torch_checkpoint=str(pickled))
  with pytest.raises(ParityError, match="checkpoint file not found"):
    run_parity(standin_config(), STANDIN, torch_checkpoint=str(tmp_path / "absent.pth"))
  state_dict = dict(seed5_state_dict)
  del state_dict["match2match.to_original.0.bias"]
  bad = tmp_path / "bad.pth"
  torch.save(state_dict, bad)
  with pytest.raises(ParityError, match=r"(?s)does not fit the official model .*to_original.0.bias"):
    run_parity(standin_config(), STANDIN, torch_checkpoint=str(bad))


class _Args:
  """A training script's argument object pickled next to the weights (needs pickle to read)."""
  lr = 1e-3


# ----------------------------------------------------------------------------- the command line
def _cli(args, env_extra=None):
  env = {k: v for k, v in os.environ.items() if k != "JAXMATCH_PARITY_STANDIN"}
  env.update(JAX_PLATFORMS="cpu", **(env_extra or {}))
  overrides = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  cmd = [sys.executable, "-m", "jaxmatch.parity", "--config", "configs/transformatcher_spair.py:smoke",
         *overrides, *args]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _check_failing_output(stdout: str, first_bad: str):
  lines = stdout.splitlines()
  header = next(i for i, line in enumerate(lines) if line.startswith("stage "))
  rows = lines[header + 1: header + 1 + len(STAGES)]
  assert [row.split()[0] for row in rows] == STAGES
  verdicts = ["pass" if " pass" in row else "FAIL" if " FAIL" in row else "?" for row in rows]
  n_good = STAGES.index(first_bad)
  assert verdicts == ["pass"] * n_good + ["FAIL"] * (len(STAGES) - n_good)
  assert f"first diverging stage: {first_bad} (" in lines[-1]


def test_cli_run_prints_the_table_writes_json_and_returns_1_on_a_mismatch(monkeypatch, capsys, tmp_path,
                                                                          passing_report):
  monkeypatch.setenv("JAXMATCH_PARITY_STANDIN", "perturb_correlation")
  out = tmp_path / "report.json"
  assert cli_run(standin_config(), STANDIN, seed=0, batch_size=2, json_out=str(out), sensitivity=False) == 1
  _check_failing_output(capsys.readouterr().out, "correlation")
  data = json.loads(out.read_text())
  assert not data["passed"] and [s["passed"] for s in data["stages"]] == [True] * 4 + [False] * 4
  assert data["sensitivity"] is None
  monkeypatch.delenv("JAXMATCH_PARITY_STANDIN")
  assert cli_run(standin_config(), STANDIN, seed=0, batch_size=2, sensitivity=False) == 0
  assert capsys.readouterr().out.rstrip().endswith("RESULT: PASS (8/8 stages within tolerance; "
                                                   "sensitivity self-check skipped)")
  assert cli_run(standin_config(), str(tmp_path / "no_clone")) == 2
  assert "error: reference repository not found" in capsys.readouterr().err


def test_command_line_exits_2_with_a_clear_error_for_a_missing_repository(tmp_path):
  proc = _cli(["--reference_repo", str(tmp_path / "no_clone")])
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "error: reference repository not found" in proc.stderr
  assert proc.stdout == ""


def test_command_line_refuses_an_unbuildable_config_with_exit_2():
  proc = subprocess.run([sys.executable, "-m", "jaxmatch.parity", "--config",
                         "configs/transformatcher_spair.py:smoke", "--reference_repo", STANDIN,
                         "--nosharpen", "--nosensitivity"],  # the flags exist; refused before they matter
                        cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 2
  assert "cannot run this config" in proc.stderr and "--config.model.kernel_sigma=10" in proc.stderr


@pytest.mark.slow
def test_command_line_end_to_end_mismatch_exits_1(tmp_path):
  proc = _cli(["--reference_repo", STANDIN], {"JAXMATCH_PARITY_STANDIN": "perturb_match2match"})
  assert proc.returncode == 1, proc.stderr[-3000:]
  _check_failing_output(proc.stdout, "match2match")
  assert "23/23 parameter groups covered" in proc.stdout.splitlines()[-1]
