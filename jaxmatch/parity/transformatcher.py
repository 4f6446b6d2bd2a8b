"""Parity adapter for TransforMatcher against the official repository (github.com/wookiekim/transformatcher).

The official code is flat: `transformatcher.py` (TransforMatcher, Match2Match), `backbone.py` (the doubled,
grouped-conv ResNet; `resnet50` / `resnet101`), `geometry.py` (Geometry: correlation, 4-D upsampling,
keypoint transfer) and `utils.py`. The model is built with its own constructor,
`TransforMatcher('resnet101', [3, 4], cpu, imside)`; that constructor would download torchvision's ImageNet
file (`pretrained=True` is hard-wired), so the repository's `resnet50`/`resnet101` are called with
`pretrained=False` while it runs: the official random initialisation, seeded, or the checkpoint loaded after.

Stages, all from one unmodified official forward plus its public keypoint transfer:
  backbone.{source,target}.convN_x  forward hooks on every tapped bottleneck block (`backbone.layerK[i]`);
                                    the doubled output is split in channel halves (source | target)
  correlation                       forward hook on `match2match.relu` (the stacked multi-layer correlation
                                    after ReLU) [B, L, h, w, h, w]
  match2match                       forward hook on `match2match.to_original` (refined scores before the
                                    4-D upsampling) [B, h, w, h, w]
  correlation_upsampled             the forward's output [B, (2h)^2, (2h)^2]
  keypoints                         `Geometry.transfer_kps_diff(..., is_train=False)` then
                                    `Geometry.unnormalize_kps`: predicted target keypoints in pixels
jaxmatch computes the same from one `TransforMatcher` application (backbone outputs captured) and the
geometry functions the evaluator uses.

Weights: the seeded official initialisation is "sharpened" before conversion (`sharpen`). As built, the
additive attention's softmaxes over all tokens are nearly flat and the pooled global query / key cancel
(~1e-4 against values ~1), so the logit weights, the scale, both softmaxes and the value path would move no
stage: a port could get them wrong and pass. One calibrating reference forward rescales, block by block,
each logit layer so its logits have std LOGIT_STD (peaked softmaxes) and `to_r`'s weight so the value path
has std VALUE_STD (a quarter of that of the query it is added to). The sensitivity self-check groups are each
backbone stage of each stream (the rows of the doubled tensors) and the head's roles across its blocks.

What the official code can build: ResNet-50/101 only; its Match2Match hard-codes 26 correlation channels
(ResNet-101 conv4_x + conv5_x), a 15-cell grid, width 16, 8 heads of 4, 6 blocks; keypoint transfer
hard-codes sigma 10 and tau 0.05. Config values that differ are reported before anything runs, and the
built model's channel count and output grid are checked against jaxmatch's before comparing.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import inspect
import sys

import jax
import numpy as np

from input_pipeline.images import IMAGENET_MEAN, IMAGENET_STD
from jaxmatch.parity.core import ParityError, Stage

OFFICIAL_BACKBONES = (50, 101)
OFFICIAL_SIGMA = 10.0     # Geometry.apply_gaussian_kernel default, not passed on by transfer_kps_diff
OFFICIAL_TAU_EVAL = 0.05  # Geometry.transfer_kps_diff with is_train=False

# Tolerances on max|ours - ref| / max|ref| in float32 (measured errors are 10-100x smaller; see README).
RTOL_BACKBONE = 1e-4
RTOL_CORRELATION = 1e-4
RTOL_HEAD = 1e-4
RTOL_KEYPOINTS = 1e-4     # of the largest pixel coordinate: 0.024 px at 240 px

# Sharpening targets (see the module docstring): raw logit std (x dim_head**-0.5 = 0.5 in the softmax) and
# the std of to_r's weight times the pooled values. Measured (seeds 0-3 at the 64 px test size, 0-1 at
# 240 px): a 1% change of the weakest group moves a stage 4.6-29x (64 px) / 1.9-5.4x (240 px) its
# tolerance, while the float32 difference of a faithful port stays 11-90x / 5-12x inside it. Sharper
# settings raise that difference faster than the sensitivity: value std 0.5 fails at 64 px (4e-4), and
# softmaxes over ~8 tokens fail at 240 px.
LOGIT_STD = 8.0
VALUE_STD = 0.125

# Self-check groups of the head: role -> (state_dict key pattern inside match2match., rows of to_qkv)
HEAD_GROUPS = {
    "head.embedding": ("to_embedding.", None),
    "head.attention_norm": (".0.norm.", None),
    "head.query": (".to_qkv.", 0),
    "head.key": (".to_qkv.", 1),
    "head.value": (".to_qkv.", 2),
    "head.query_logits": (".to_q_attn_logits.", None),
    "head.key_logits": (".to_k_attn_logits.", None),
    "head.rotary_freqs": (".pos_emb.freqs", None),
    "head.to_r": (".to_r.", None),
    "head.to_out": (".to_out.", None),
    "head.mlp_norm": (".1.norm.", None),
    "head.mlp": (".1.fn.", None),
    "head.to_original": ("to_original.", None),
}
UNUSED = {"match2match.posenc": "the learnable absolute position embedding the official forward never adds",
          "backbone.fc.": "the single-stream ImageNet classifier, never called"}


def rotary_api_problems() -> list[str]:
  """The official code calls RotaryEmbedding.forward(t, cache_key=...), which rotary-embedding-torch dropped in
  0.5.0 (a TypeError deep inside the forward otherwise)."""
  module = sys.modules.get("rotary_embedding_torch")
  rotary = getattr(module, "RotaryEmbedding", None)
  if rotary is None or "cache_key" in inspect.signature(rotary.forward).parameters:
    return []
  try:
    version = importlib.metadata.version("rotary-embedding-torch")
  except importlib.metadata.PackageNotFoundError:
    version = "unknown"
  return [f"rotary-embedding-torch {version} is installed, but the official code calls "
          "RotaryEmbedding.forward(t, cache_key=...), which exists up to 0.4.0 only: "
          "pip install 'rotary-embedding-torch<=0.4.0'"]


def _stage_label(stage: int) -> str:
  return f"conv{stage + 1}_x"  # torchvision layerK is the paper's conv(K+1)_x


class TransforMatcherAdapter:
  name = "transformatcher"
  repository = "github.com/wookiekim/transformatcher"
  modules = ("utils", "geometry", "backbone", "transformatcher")
  entry_points = {"transformatcher": ("TransforMatcher",), "geometry": ("Geometry",),
                  "backbone": ("resnet50", "resnet101")}
  install_hint = ("install the official code's dependencies: pip install einops 'rotary-embedding-torch<=0.4.0' "
                  "(0.5.0 changed the API the official code calls)")

  # ------------------------------------------------------------------ config and model
  def check_config(self, config) -> list[str]:
    m = config.model
    problems = []
    if m.backbone_depth not in OFFICIAL_BACKBONES:
      problems.append(f"backbone_depth={m.backbone_depth}: the official constructor builds ResNet-50 or "
                      "ResNet-101 only")
    if float(m.kernel_sigma) != OFFICIAL_SIGMA:
      problems.append(f"kernel_sigma={m.kernel_sigma}: the official keypoint transfer hard-codes "
                      f"{OFFICIAL_SIGMA:g} (pass --config.model.kernel_sigma={OFFICIAL_SIGMA:g})")
    if float(m.tau_eval) != OFFICIAL_TAU_EVAL:
      problems.append(f"tau_eval={m.tau_eval}: the official keypoint transfer hard-codes "
                      f"{OFFICIAL_TAU_EVAL:g} at test time (pass --config.model.tau_eval={OFFICIAL_TAU_EVAL:g})")
    if m.upsample_factor != 2:
      problems.append(f"upsample_factor={m.upsample_factor}: the official code upsamples to img_size / 8, "
                      "twice the img_size / 16 correlation grid")
    return problems

  def build_reference(self, modules: dict, config):
    import torch
    backbone = f"resnet{config.model.backbone_depth}"
    with _without_imagenet_download(modules["backbone"]):
      try:
        return modules["transformatcher"].TransforMatcher(backbone, list(config.model.tap_stages),
                                                          torch.device("cpu"), int(config.data.img_size))
      except Exception as e:
        raise ParityError(f"the official TransforMatcher({backbone!r}, {list(config.model.tap_stages)}, cpu, "
                          f"{config.data.img_size}) failed: {type(e).__name__}: {e}") from e

  def check_reference(self, model, modules: dict, config) -> list[str]:
    from jaxmatch.models.resnet import RESNET_STAGES
    from jaxmatch.models.transformatcher.model import TransforMatcherModel
    problems = []
    ours = sum(RESNET_STAGES[config.model.backbone_depth][s - 1] for s in config.model.tap_stages)
    weight = model.state_dict().get("match2match.to_embedding.1.weight")
    if weight is not None and weight.shape[1] != ours:
      problems.append(f"the official Match2Match takes {weight.shape[1]} correlation channels; this config "
                      f"(ResNet-{config.model.backbone_depth}, tap stages {tuple(config.model.tap_stages)}) gives "
                      f"{ours}. The official code hard-codes 26 = ResNet-101 conv4_x + conv5_x: use the full "
                      "recipe (ResNet-101, 240 px)")
    problems += rotary_api_problems()
    grid = TransforMatcherModel(config.model, int(config.data.img_size)).grid
    official = getattr(modules["geometry"].Geometry, "upsample_size", [grid])[0]
    if official != grid:
      problems.append(f"the official output grid at {config.data.img_size} px is {official} cells, jaxmatch's "
                      f"is {grid}")
    return problems

  def convert(self, state_dict: dict, config) -> dict:
    from jaxmatch.convert import from_torch
    return from_torch(config, state_dict)

  # ------------------------------------------------------------------ inputs
  def make_inputs(self, config, batch_size: int, seed: int) -> dict:
    """Seeded ImageNet-normalised random images and keypoints (half near output-grid nodes)."""
    from jaxmatch.models.transformatcher.model import TransforMatcherModel
    rng = np.random.default_rng(seed)
    size, max_kps = int(config.data.img_size), int(config.data.max_kps)
    pixels = rng.uniform(0.0, 1.0, (2, batch_size, size, size, 3)).astype(np.float32)
    images = (pixels - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    n_pts = rng.integers(1, max_kps + 1, batch_size)
    kps = rng.uniform(0.0, size - 1, (batch_size, max_kps, 2))
    # Near grid nodes the official tau=0.05 sampler reaches a cell at any grid size (at 240 px every point does).
    grid = TransforMatcherModel(config.model, size).grid
    nodes = rng.integers(0, grid, (batch_size, max_kps, 2)) * (2.0 / (grid - 1)) - 1.0
    near = nodes + rng.uniform(-0.5, 0.5, nodes.shape) * OFFICIAL_TAU_EVAL
    near_px = np.clip(near * (size // 2) + size // 2, 0.0, size - 1)
    kps[:, ::2] = near_px[:, ::2]
    mask = np.arange(max_kps)[None, :] < n_pts[:, None]
    kps = np.where(mask[..., None], kps, -2.0).astype(np.float32)
    return {"src_img": images[0], "trg_img": images[1], "src_kps": kps, "n_pts": n_pts, "kp_mask": mask}

  def describe_inputs(self, inputs: dict) -> str:
    b, h, w, _ = inputs["src_img"].shape
    return (f"{b} seeded random pair(s) of {h}x{w} images, {int(inputs['n_pts'].sum())} source keypoints "
            "(ImageNet-normalised, NCHW for the official model)")

  # ------------------------------------------------------------------ stages
  def stages(self, config) -> tuple[Stage, ...]:
    out = []
    for stream in ("source", "target"):
      for s in config.model.tap_stages:
        out.append(Stage(f"backbone.{stream}.{_stage_label(s)}",
                         f"{stream} ResNet block outputs of {_stage_label(s)} (layer{s})", RTOL_BACKBONE))
    out += [Stage("correlation", "multi-layer correlation after ReLU [B, L, h, w, h, w]", RTOL_CORRELATION),
            Stage("match2match", "refined scores before upsampling [B, h, w, h, w]", RTOL_HEAD),
            Stage("correlation_upsampled", "4-D upsampled scores [B, (2h)^2, (2h)^2]", RTOL_HEAD),
            Stage("keypoints", "transferred target keypoints, pixels (valid points)", RTOL_KEYPOINTS)]
    return tuple(out)

  # ------------------------------------------------------------------ sensitivity
  def parameter_groups(self, shapes: dict, config) -> dict[str, list]:
    """Backbone: stem and every stage of each stream (its rows of the doubled tensors); head: by role."""
    groups = {}
    for stream, half in (("source", 0), ("target", 1)):
      for name, prefix in [("stem", ("backbone.conv1.", "backbone.bn1."))] + \
          [(_stage_label(s), (f"backbone.layer{s}.",)) for s in (1, 2, 3, 4)]:
        groups[f"backbone.{stream}.{name}"] = [(k, _stream_rows(shapes[k], half)) for k in shapes
                                               if k.startswith(prefix) and shapes[k]]
    head = [k for k in shapes if k.startswith("match2match.")]
    for group, (pattern, rows) in HEAD_GROUPS.items():
      keys = [k for k in head if pattern in k]
      groups[group] = keys if rows is None else [(k, _qkv_rows(shapes[k], rows)) for k in keys]
    return {name: members for name, members in groups.items() if members}

  def unused_parameters(self, shapes: dict, config) -> dict[str, str]:
    return {k: why for k in shapes for prefix, why in UNUSED.items() if k.startswith(prefix)}

  def sharpen(self, model, modules: dict, inputs: dict, config) -> str:
    """Rescales the attention logit layers and to_r, block by block, in one calibrating forward."""
    handles = []
    for name, module in model.named_modules():
      if name.endswith(("to_q_attn_logits", "to_k_attn_logits")):
        handles.append(module.register_forward_hook(_calibrate(LOGIT_STD)))
      elif name.endswith(".to_r"):
        handles.append(module.register_forward_hook(_calibrate(VALUE_STD)))
    if not handles:
      raise ParityError("the official model has no to_q_attn_logits / to_k_attn_logits / to_r layers to sharpen")
    try:
      self.run_reference(model, modules, inputs, config)
    finally:
      for h in handles:
        h.remove()
    return (f"sharpened (attention logit weights rescaled to logit std {LOGIT_STD:g}, to_r weights to value "
            f"path std {VALUE_STD:g}, on these inputs)")

  def run_reference(self, model, modules: dict, inputs: dict, config) -> dict:
    import torch
    geometry = modules["geometry"].Geometry
    captured: dict[str, list] = {}
    handles = []

    def keep(key):
      def hook(module, args, output):
        captured.setdefault(key, []).append(output.detach().clone())
      return hook

    try:
      for s in config.model.tap_stages:
        for block in _submodule(model, f"backbone.layer{s}"):
          handles.append(block.register_forward_hook(keep(f"taps{s}")))
      handles.append(_submodule(model, "match2match.relu").register_forward_hook(keep("correlation")))
      handles.append(_submodule(model, "match2match.to_original").register_forward_hook(keep("refined")))
      src = torch.from_numpy(np.ascontiguousarray(inputs["src_img"].transpose(0, 3, 1, 2)))
      trg = torch.from_numpy(np.ascontiguousarray(inputs["trg_img"].transpose(0, 3, 1, 2)))
      corr_up = model(src, trg)[0]
    finally:
      for h in handles:
        h.remove()
    kps = torch.from_numpy(np.ascontiguousarray(inputs["src_kps"].transpose(0, 2, 1)))  # [B, 2, K]
    n_pts = torch.from_numpy(inputs["n_pts"])
    pred = geometry.unnormalize_kps(geometry.transfer_kps_diff(corr_up, kps, n_pts, normalized=False,
                                                               is_train=False))
    out = {"correlation": captured["correlation"][0].numpy(), "match2match": captured["refined"][0].numpy()[:, 0],
           "correlation_upsampled": corr_up.numpy(),
           "keypoints": pred.numpy().transpose(0, 2, 1)[inputs["kp_mask"]]}
    for s in config.model.tap_stages:
      halves = [(t[:, : t.shape[1] // 2].numpy(), t[:, t.shape[1] // 2:].numpy()) for t in captured[f"taps{s}"]]
      out[f"backbone.source.{_stage_label(s)}"] = [h[0] for h in halves]
      out[f"backbone.target.{_stage_label(s)}"] = [h[1] for h in halves]
    return out

  def run_ours(self, variables: dict, inputs: dict, config) -> dict:
    import jax.numpy as jnp
    from jaxmatch.models.transformatcher import geometry
    from jaxmatch.models.transformatcher.model import TransforMatcherModel
    cfg = config.model.copy_and_resolve_references()
    cfg.dtype = "float32"  # parity is a float32 property; reduced precision would only add noise
    model = TransforMatcherModel(cfg, int(config.data.img_size))
    corr, refined, corr_up, blocks = _forward_stages(model.module, variables, inputs["src_img"],
                                                     inputs["trg_img"])
    mask = jnp.asarray(inputs["kp_mask"])
    src = geometry.normalize_kps(jnp.asarray(inputs["src_kps"]), model.img_size)
    pred = geometry.transfer_keypoints(corr_up, src, mask, grid=model.grid, tau=cfg.tau_eval,
                                       sigma=cfg.kernel_sigma)
    pred_px = geometry.unnormalize_kps(pred, model.img_size)
    nchw = lambda x: np.asarray(x).transpose(0, 3, 1, 2)  # noqa: E731
    out = {"correlation": np.asarray(jax.nn.relu(corr)).transpose(0, 5, 1, 2, 3, 4),
           "match2match": np.asarray(refined), "correlation_upsampled": np.asarray(corr_up),
           "keypoints": np.asarray(pred_px)[inputs["kp_mask"]]}
    for stream in ("source", "target"):
      for s in cfg.tap_stages:
        out[f"backbone.{stream}.{_stage_label(s)}"] = [nchw(t) for t in blocks[stream][s - 1]]
    return out


def _stages(m, src, trg):
  corr = m.correlation(src, trg)
  refined, corr_up = m.match2match(corr)
  return corr, refined, corr_up


def _is_backbone_call(mdl, method_name: str) -> bool:
  return method_name == "__call__" and mdl.name in ("source_backbone", "target_backbone")


@functools.partial(jax.jit, static_argnums=0)
def _apply_stages(module, variables, src_img, trg_img):
  # Module-level and keyed on the (hashable) module: repeated comparisons in one process compile once.
  return module.apply(variables, src_img, trg_img, method=_stages, capture_intermediates=_is_backbone_call,
                      mutable=["intermediates"])


def _forward_stages(module, variables, src_img, trg_img):
  """One application of jaxmatch's TransforMatcher: (pre-ReLU corr, refined, corr_up, {stream: blocks})."""
  (corr, refined, corr_up), state = _apply_stages(module, dict(variables), src_img, trg_img)
  inter = state["intermediates"]
  blocks = {stream: inter[f"{stream}_backbone"]["__call__"][0]["blocks"] for stream in ("source", "target")}
  return corr, refined, corr_up, blocks


def _stream_rows(shape: tuple, half: int) -> slice:
  """One stream's rows of a doubled backbone tensor (source first; the grouped convs keep them apart)."""
  n = shape[0] // 2
  return slice(half * n, (half + 1) * n)


def _qkv_rows(shape: tuple, part: int) -> slice:
  """to_qkv's output rows of q (0), k (1) or v (2): the official code chunks its output in three."""
  n = shape[0] // 3
  return slice(part * n, (part + 1) * n)


def _calibrate(target_std: float):
  """Forward hook: scales the layer's weight so its weight term has std `target_std` on this input, and
  passes the rescaled output on (later blocks are calibrated on what the sharpened earlier ones give)."""
  def hook(module, args, output):
    bias = 0.0 if module.bias is None else module.bias
    spread = float((output - bias).std())
    if not spread > 0:
      raise ParityError(f"cannot sharpen {type(module).__name__}: its output does not vary")
    factor = target_std / spread
    module.weight.mul_(factor)
    return (output - bias) * factor + bias
  return hook


def _submodule(model, dotted: str):
  try:
    return model.get_submodule(dotted)
  except AttributeError as e:
    raise ParityError(f"the official model has no submodule {dotted!r} to take a stage from ({e}); "
                      "is this the official TransforMatcher code?") from e


@contextlib.contextmanager
def _without_imagenet_download(backbone_module):
  """The official constructor hard-wires pretrained=True (a torchvision download); build random instead."""
  originals = {name: getattr(backbone_module, name) for name in ("resnet50", "resnet101")}

  def random_init(make):
    @functools.wraps(make)
    def build(pretrained=False, **kwargs):
      del pretrained  # the weights are replaced by the seeded initialisation or the checkpoint anyway
      return make(pretrained=False, **kwargs)
    return build

  for name, make in originals.items():
    setattr(backbone_module, name, random_init(make))
  try:
    yield
  finally:
    for name, make in originals.items():
      setattr(backbone_module, name, make)


ADAPTER = TransforMatcherAdapter()
