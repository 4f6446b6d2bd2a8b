"""Parity adapter for TransReID against the official repository (github.com/heshuting555/TransReID).

The official code is a package tree run from the repository root: `config/defaults.py` (the yacs option
tree `_C`), `model/make_model.py` (`make_model(cfg, num_class, camera_num, view_num)`, which builds
`build_transformer_local` with JPM or `build_transformer` without, around a backbone from its factory table)
and `model/backbones/vit_pytorch.py` (`TransReID` and the `*_patch16_224_TransReID` factories). The model
is built by `make_model` from a clone of `_C` merged with the jaxmatch config (stride, SIE flags and
coefficient, JPM, rearrange, shift, shuffle groups, neck feature, image size, camera / view / class
counts; PRETRAIN_CHOICE 'none', so no ImageNet file is read; drop path and dropout 0, so the train-mode
forward is deterministic; the rates do not change the weights).

Reduced sizes: when config.model sets embed_dim / depth / num_heads / mlp_ratio (the test-size override of
the backbone table), the factory entry for MODEL.TRANSFORMER_TYPE is replaced while `make_model` runs by one
with the official factory's signature that calls the official `TransReID` class at those dims, and the
builder's hard-coded neck width (`self.in_planes = 768`) follows the backbone width. Every other line of
the official constructors and forwards runs unchanged. The official vit_pytorch.py imports
`torch._six.container_abcs` (gone since PyTorch 1.9): a shim provides it while the repository is imported.

Stages, from forward hooks on one eval forward plus one train-mode forward of the official model:
  patch_embed        `base.patch_embed` output [B, N, D]
  tokens             `base.pos_drop` output: cls + patches + pos_embed + SIE [B, 1 + N, D]
  blocks             every backbone block that runs (`base.blocks[i]`; with JPM all but the last)
  b1, b2             JPM only: the global branch output [B, 1 + N, D]; the four local b2 calls [B, 1 + L, D]
  global_feat        the input of `bottleneck` (pre-BN global feature)
  local_feats        JPM only: the inputs of `bottleneck_1..4`
  bn_feats           the eval-mode BNNeck outputs (running statistics)
  eval_feature       the eval forward's output (before L2 normalisation)
  train_logits       the train-mode classifier outputs (BNNecks on batch statistics)
  loss               [total, ID, triplet] by the official loss formula (loss/make_loss.py, whose CenterLoss
                     needs CUDA, so the formula is computed here in PyTorch from the official outputs): with
                     JPM 0.5 * global + 0.5 * mean of the local terms; CE (label smoothing 0.1 when on);
                     batch-hard triplet on non-squared Euclidean distances, soft margin or MarginRankingLoss
The train-mode pass changes no weights: the BNNecks' running statistics are restored after it.

Inputs: PK batches (identities x 2 images; at least 2 identities, since the triplet loss and train-mode
BatchNorm need them), seeded random images normalised with mean / std 0.5, random camera / view ids.

Weights: the seeded official initialisation is sharpened (`sharpen`): the attention logits are nearly flat
at init (qkv std 0.02) and pos / cls / SIE embeddings are small against the patch tokens, so attention and
embedding errors would hide. One calibrating forward rescales cls / pos / SIE to the patch tokens' spread,
each block's query and key rows so its attention logits have std LOGIT_STD, sets the BNNecks' running
statistics to the batch's and their affine parameters away from 1 / 0, and rescales the classifiers so the
logits have std CLASSIFIER_LOGIT_STD.
"""
from __future__ import annotations

import collections.abc
import contextlib
import importlib.util
import io
import math
import sys
import types
from functools import partial

import numpy as np

from jaxmatch.parity.core import ParityError, Stage

TRANSFORMER_TYPES = {"vit_base": "vit_base_patch16_224_TransReID", "deit_base": "deit_base_patch16_224_TransReID",
                     "vit_small": "vit_small_patch16_224_TransReID", "deit_small": "deit_small_patch16_224_TransReID"}
OFFICIAL_PARTS = 4          # build_transformer_local hard-codes four local branches
OFFICIAL_NECK_WIDTH = 768   # and the literal neck width
OFFICIAL_SMOOTHING = 0.1    # CrossEntropyLabelSmooth's epsilon (IF_LABELSMOOTH 'on')
INSTANCES = 2               # images per identity in the PK batch

RTOL_BACKBONE = 1e-4
RTOL_HEAD = 1e-4
RTOL_LOSS = 1e-4

LOGIT_STD = 2.0             # attention logits after sharpening (fixture transreid_small: ~2)
CLASSIFIER_LOGIT_STD = 2.0
SIE_SHARE = 0.5             # SIE term (coefficient x table) std relative to the patch tokens'

UNUSED = {"base.fc.": "the backbone's ImageNet classifier slot, never called"}
UNUSED_JPM = "with JPM the backbone's last block and final LayerNorm never run (b1 / b2 are copies)"


def _arch(config):
  from jaxmatch.models.transreid.model import TransReIDModel
  return TransReIDModel(config.model, img_size=config.data.img_size).arch


def _reduced(config) -> bool:
  m = config.model
  return any(float(m.get(k, 0) or 0) for k in ("embed_dim", "depth", "num_heads", "mlp_ratio"))


def _neck_names(jpm: bool) -> list[tuple[str, str]]:
  names = [("bottleneck", "classifier")]
  return names + ([(f"bottleneck_{k}", f"classifier_{k}") for k in range(1, OFFICIAL_PARTS + 1)] if jpm else [])


def _branch_labels(jpm: bool) -> list[str]:
  return ["global"] + ([f"local{k}" for k in range(1, OFFICIAL_PARTS + 1)] if jpm else [])


class TransReIDAdapter:
  name = "transreid"
  repository = "github.com/heshuting555/TransReID"
  modules = ("config.defaults", "model.backbones.vit_pytorch", "model.make_model")
  entry_points = {"config.defaults": ("_C",),
                  "model.backbones.vit_pytorch": ("TransReID",) + tuple(sorted(set(TRANSFORMER_TYPES.values())
                                                                               - {"deit_base_patch16_224_TransReID"})),
                  "model.make_model": ("make_model", "build_transformer", "build_transformer_local")}
  install_hint = "install the official code's dependencies: pip install yacs (config/defaults.py imports yacs.config)"

  # ------------------------------------------------------------------ importing
  @contextlib.contextmanager
  def import_context(self):
    """Provides torch._six (container_abcs, string_classes, int_classes) while the repository is imported."""
    import torch
    if importlib.util.find_spec("torch._six") is not None:
      yield
      return
    shim = types.ModuleType("torch._six")
    shim.container_abcs, shim.string_classes, shim.int_classes, shim.inf = collections.abc, (str, bytes), int, math.inf
    sys.modules["torch._six"], torch._six = shim, shim
    try:
      yield
    finally:
      sys.modules.pop("torch._six", None)
      del torch._six

  # ------------------------------------------------------------------ config and model
  def check_config(self, config) -> list[str]:
    from jaxmatch.models.transreid.model import sie_layout
    m = config.model
    problems = []
    if m.get("backbone", "vit_base") not in TRANSFORMER_TYPES:
      problems.append(f"backbone={m.get('backbone')!r}: the official factory table has {sorted(TRANSFORMER_TYPES)}")
    if not m.get("num_classes") or int(m.num_classes) < 2:
      problems.append(f"num_classes={m.get('num_classes')}: the official classifiers need the number of training "
                      "identities (pass --config.model.num_classes=N, N >= 2)")
    try:
      sie_layout(int(m.get("num_cameras", 0) or 0), int(m.get("num_views", 0) or 0), bool(m.get("sie_camera", True)),
                 bool(m.get("sie_view", False)))
    except ValueError as e:
      problems.append(f"{e} (the official model cannot run it either)")
    jpm = bool(m.get("jpm", True))
    if jpm and int(m.get("num_parts", 4)) != OFFICIAL_PARTS:
      problems.append(f"num_parts={m.num_parts}: the official build_transformer_local hard-codes {OFFICIAL_PARTS} "
                      "local branches")
    if jpm and m.get("feature_form", "code") != "code":
      problems.append(f"feature_form={m.feature_form!r}: the official eval feature divides the local features "
                      "by 4 (pass --config.model.feature_form=code)")
    if jpm and not m.get("local_at_inference", True):
      problems.append("local_at_inference=False: the official eval feature always appends the local features")
    eps = float(m.get("label_smoothing", 0.0))
    if eps not in (0.0, OFFICIAL_SMOOTHING):
      problems.append(f"label_smoothing={eps}: the official loss has none (IF_LABELSMOOTH off) or "
                      f"{OFFICIAL_SMOOTHING} (on)")
    if m.get("neck_feat", "before") not in ("before", "after"):
      problems.append(f"neck_feat={m.neck_feat!r}: the official TEST.NECK_FEAT is 'before' or 'after'")
    if not problems and jpm and not _reduced(config) and _arch(config).embed_dim != OFFICIAL_NECK_WIDTH:
      problems.append(f"backbone={m.backbone!r} with JPM: the official build_transformer_local hard-codes "
                      f"{OFFICIAL_NECK_WIDTH}-wide BNNecks, so it cannot build a {_arch(config).embed_dim}-wide "
                      "backbone with JPM")
    return problems

  def official_cfg(self, modules: dict, config):
    """A clone of the official `_C` merged with this config."""
    m, (h, w) = config.model, _pair(config.data.img_size)
    stride = list(_pair(m.get("stride", 12)))
    margin = float(m.get("triplet_margin", 0.0))
    pairs = {
        "MODEL.NAME": "transformer", "MODEL.TRANSFORMER_TYPE": TRANSFORMER_TYPES[m.get("backbone", "vit_base")],
        "MODEL.PRETRAIN_CHOICE": "none", "MODEL.STRIDE_SIZE": stride, "MODEL.DROP_PATH": 0.0,
        "MODEL.DROP_OUT": 0.0, "MODEL.ATT_DROP_RATE": 0.0, "MODEL.NECK": "bnneck", "MODEL.ID_LOSS_TYPE": "softmax",
        "MODEL.SIE_CAMERA": bool(m.get("sie_camera", True)), "MODEL.SIE_VIEW": bool(m.get("sie_view", False)),
        "MODEL.SIE_COE": float(m.get("sie_coe", 3.0)), "MODEL.JPM": bool(m.get("jpm", True)),
        "MODEL.RE_ARRANGE": bool(m.get("rearrange", True)), "MODEL.SHIFT_NUM": int(m.get("shift_num", 5)),
        "MODEL.SHUFFLE_GROUP": int(m.get("shuffle_groups", 2)), "MODEL.DEVIDE_LENGTH": OFFICIAL_PARTS,
        "MODEL.METRIC_LOSS_TYPE": "triplet", "MODEL.NO_MARGIN": margin <= 0, "SOLVER.MARGIN": max(margin, 0.3),
        "MODEL.IF_LABELSMOOTH": "on" if float(m.get("label_smoothing", 0.0)) else "off",
        "MODEL.ID_LOSS_WEIGHT": float(m.get("id_loss_weight", 1.0)),
        "MODEL.TRIPLET_LOSS_WEIGHT": float(m.get("triplet_weight", 1.0)),
        "INPUT.SIZE_TRAIN": [h, w], "INPUT.SIZE_TEST": [h, w], "TEST.NECK_FEAT": m.get("neck_feat", "before")}
    cfg = modules["config.defaults"]._C.clone()
    cfg.defrost()
    try:
      cfg.merge_from_list([x for kv in pairs.items() for x in kv])
    except Exception as e:
      raise ParityError(f"the official config/defaults.py does not take these options: {type(e).__name__}: {e}") from e
    cfg.freeze()
    return cfg

  def build_reference(self, modules: dict, config):
    cfg = self.official_cfg(modules, config)
    m = config.model
    args = (int(m.num_classes), int(m.get("num_cameras", 0) or 0), int(m.get("num_views", 0) or 0))
    patch = _reduced_size(modules, cfg, _arch(config)) if _reduced(config) else contextlib.nullcontext()
    try:
      with patch, contextlib.redirect_stdout(io.StringIO()):  # the official builders print their settings
        return modules["model.make_model"].make_model(cfg, *args)
    except ParityError:
      raise
    except Exception as e:
      raise ParityError(f"the official make_model(cfg, {', '.join(map(str, args))}) failed: "
                        f"{type(e).__name__}: {e}") from e

  def check_reference(self, model, modules: dict, config) -> list[str]:
    from jaxmatch.convert.transreid import check_checkpoint
    sd = {k: np.empty(tuple(v.shape), np.float32) for k, v in model.state_dict().items()}
    width = sd["bottleneck.weight"].shape[0] if "bottleneck.weight" in sd else None
    d = _arch(config).embed_dim
    if width is not None and width != d:
      return [f"the official BNNecks are {width} wide, the backbone {d}: build_transformer_local hard-codes "
              f"self.in_planes = {OFFICIAL_NECK_WIDTH}"]
    try:
      check_checkpoint(sd, config.model, config.data.img_size)
    except ValueError as e:
      return [str(e)]
    return []

  def convert(self, state_dict: dict, config) -> dict:
    from jaxmatch.convert.transreid import from_torch
    return from_torch(config, state_dict)

  # ------------------------------------------------------------------ inputs
  def make_inputs(self, config, batch_size: int, seed: int) -> dict:
    m = config.model
    rng = np.random.default_rng(seed)
    ids = max(2, -(-batch_size // INSTANCES))
    n, (h, w) = ids * INSTANCES, _pair(config.data.img_size)
    images = ((rng.uniform(0.0, 1.0, (n, h, w, 3)) - 0.5) / 0.5).astype(np.float32)
    labels = np.repeat(rng.choice(int(m.num_classes), ids, replace=False), INSTANCES).astype(np.int64)
    camera = rng.integers(0, max(int(m.get("num_cameras", 0) or 0), 1), n).astype(np.int64)
    view = rng.integers(0, max(int(m.get("num_views", 0) or 0), 1), n).astype(np.int64)
    size = (f"reduced official backbone ({_arch(config).embed_dim}-d, {_arch(config).depth} blocks, "
            f"{_arch(config).num_heads} heads)" if _reduced(config) else "full-size official backbone")
    return {"image": images, "label": labels, "camera": camera, "view": view, "size": size}

  def describe_inputs(self, inputs: dict) -> str:
    n, h, w, _ = inputs["image"].shape
    return (f"{n} seeded random {h}x{w} images ({n // INSTANCES} identities x {INSTANCES}, mean / std 0.5), "
            f"random camera / view ids; {inputs['size']}")

  # ------------------------------------------------------------------ stages
  def stages(self, config) -> tuple[Stage, ...]:
    jpm = bool(config.model.get("jpm", True))
    out = [Stage("patch_embed", "overlapping patch embedding [B, N, D]", RTOL_BACKBONE),
           Stage("tokens", "cls + patches + pos_embed + SIE [B, 1+N, D]", RTOL_BACKBONE),
           Stage("blocks", "backbone block outputs", RTOL_BACKBONE)]
    if jpm:
      out += [Stage("b1", "global branch b1 (last block + LayerNorm) [B, 1+N, D]", RTOL_BACKBONE),
              Stage("b2", "JPM branch b2 on the four shifted / shuffled groups [B, 1+L, D]", RTOL_BACKBONE)]
    out.append(Stage("global_feat", "global feature before its BNNeck [B, D]", RTOL_HEAD))
    if jpm:
      out.append(Stage("local_feats", "JPM local features before their BNNecks [B, D]", RTOL_HEAD))
    out += [Stage("bn_feats", "eval-mode BNNeck outputs [B, D]", RTOL_HEAD),
            Stage("eval_feature", "eval forward output (before L2 normalisation)", RTOL_HEAD),
            Stage("train_logits", "train-mode classifier outputs [B, classes]", RTOL_HEAD),
            Stage("loss", "train loss [total, ID, triplet], official formula", RTOL_LOSS)]
    return tuple(out)

  # ------------------------------------------------------------------ sensitivity
  def parameter_groups(self, shapes: dict, config) -> dict[str, list]:
    jpm = bool(config.model.get("jpm", True))
    depth = 1 + max(int(k.split(".")[2]) for k in shapes if k.startswith("base.blocks."))
    live = depth - 1 if jpm else depth
    prefixes = {"patch_embed": ("base.patch_embed.",), "pos_embed": ("base.pos_embed",),
                "cls_token": ("base.cls_token",), "sie_embed": ("base.sie_embed",)}
    prefixes.update({f"block{i}": (f"base.blocks.{i}.",) for i in range(live)})
    prefixes.update({"b1": ("b1.",), "b2": ("b2.",)} if jpm else {"norm": ("base.norm.",)})
    for label, (bn, cls) in zip(_branch_labels(jpm), _neck_names(jpm)):
      prefixes[f"neck.{label}"] = (f"{bn}.",)
      prefixes[f"classifier.{label}"] = (f"{cls}.",)
    groups = {name: [k for k in shapes if k.startswith(p) and shapes[k]] for name, p in prefixes.items()}
    return {name: keys for name, keys in groups.items() if keys}

  def unused_parameters(self, shapes: dict, config) -> dict[str, str]:
    out = {k: why for k in shapes for prefix, why in UNUSED.items() if k.startswith(prefix)}
    if bool(config.model.get("jpm", True)):
      last = max(int(k.split(".")[2]) for k in shapes if k.startswith("base.blocks."))
      out.update({k: UNUSED_JPM for k in shapes if k.startswith((f"base.blocks.{last}.", "base.norm."))})
    return out

  def sharpen(self, model, modules: dict, inputs: dict, config) -> str:
    base = _submodule(model, "base")
    coe = float(config.model.get("sie_coe", 3.0))
    attns = [blk.attn for blk in _live_blocks(model, config)]
    if bool(config.model.get("jpm", True)):
      attns += [_submodule(model, "b1.0.attn"), _submodule(model, "b2.0.attn")]
    handles = [base.patch_embed.register_forward_hook(_calibrate_embeddings(base, coe))]
    handles += [a.qkv.register_forward_hook(_calibrate_logits(a)) for a in attns]
    necks = [_submodule(model, bn) for bn, _ in _neck_names(bool(config.model.get("jpm", True)))]
    handles += [bn.register_forward_pre_hook(_calibrate_neck()) for bn in necks]
    images, _, camera, view = _torch_inputs(inputs)
    try:
      model.eval()
      model(images, cam_label=camera, view_label=view)
    finally:
      for h in handles:
        h.remove()
    for _, cls in _neck_names(bool(config.model.get("jpm", True))):
      w = _submodule(model, cls).weight
      w.mul_(CLASSIFIER_LOGIT_STD / (math.sqrt(w.shape[1]) * float(w.std())))
    return (f"sharpened (cls / pos / SIE embeddings scaled to the patch tokens' spread, attention logits to std "
            f"{LOGIT_STD:g}, BNNeck statistics from the batch, classifier logits to std {CLASSIFIER_LOGIT_STD:g}, "
            "on these inputs)")

  # ------------------------------------------------------------------ running
  def run_reference(self, model, modules: dict, inputs: dict, config) -> dict:
    import torch
    jpm = bool(config.model.get("jpm", True))
    images, labels, camera, view = _torch_inputs(inputs)
    captured: dict[str, list] = {}

    def keep(key, use_input=False):
      def hook(module, args, output):
        captured.setdefault(key, []).append((args[0] if use_input else output).detach().clone().numpy())
      return hook

    taps = [("patch_embed", "base.patch_embed"), ("tokens", "base.pos_drop")]
    taps += [("b1", "b1"), ("b2", "b2")] if jpm else []
    handles = [_submodule(model, path).register_forward_hook(keep(key)) for key, path in taps]
    handles += [blk.register_forward_hook(keep("blocks")) for blk in _live_blocks(model, config)]
    for bn, _ in _neck_names(jpm):
      handles += [_submodule(model, bn).register_forward_hook(keep("feats", True)),
                  _submodule(model, bn).register_forward_hook(keep("bn_feats"))]
    try:
      model.eval()
      eval_feature = model(images, cam_label=camera, view_label=view).numpy()
    finally:
      for h in handles:
        h.remove()
    scores, feats = _train_forward(model, images, labels, camera, view, jpm)
    out = {k: captured[k][0] for k in ("patch_embed", "tokens")}
    out.update(blocks=captured["blocks"], global_feat=captured["feats"][0], bn_feats=captured["bn_feats"],
               eval_feature=eval_feature, train_logits=[s.numpy() for s in scores],
               loss=official_loss(scores, feats, labels, config.model).numpy())
    if jpm:
      out.update(b1=captured["b1"][0], b2=captured["b2"], local_feats=captured["feats"][1:])
    return out

  def run_ours(self, variables: dict, inputs: dict, config) -> dict:
    import jax
    from jaxmatch.models.transreid.model import TransReIDModel
    cfg = config.model.copy_and_resolve_references()
    cfg.dtype, cfg.drop_path = "float32", 0.0
    model = TransReIDModel(cfg, img_size=config.data.img_size)
    params = jax.tree.map(np.asarray, variables["params"])
    state = {"batch_stats": jax.tree.map(np.asarray, variables["batch_stats"])}
    batch = {k: np.asarray(inputs[k], np.int32) for k in ("label", "camera", "view")}
    batch["image"] = inputs["image"]
    ev, _ = model.apply(params, state, batch, train=False)
    tr, _ = model.apply(params, state, batch, train=True)
    terms = model.losses(tr, batch["label"])
    arr = lambda x: np.asarray(x)  # noqa: E731
    out = {"patch_embed": arr(ev["patch_embed"]), "tokens": arr(ev["tokens"]), "blocks": [arr(b) for b in ev["blocks"]],
           "global_feat": arr(ev["feats"][0]), "bn_feats": [arr(f) for f in ev["bn_feats"]],
           "eval_feature": arr(model.test_feature(ev)), "train_logits": [arr(lg) for lg in tr["logits"]],
           "loss": np.array([terms["total"], terms["id_loss"], terms["triplet_loss"]], np.float32)}
    if model.jpm:
      out.update(b1=arr(ev["b1_out"]), b2=[arr(b) for b in ev["b2_out"]], local_feats=[arr(f) for f in ev["feats"][1:]])
    return out


# ---------------------------------------------------------------------- the official loss formula
def official_loss(scores, feats, labels, model_cfg):
  """[total, ID, triplet] as loss/make_loss.py combines them (sampler softmax_triplet, loss 'triplet')."""
  import torch
  eps, margin = float(model_cfg.get("label_smoothing", 0.0)), float(model_cfg.get("triplet_margin", 0.0))
  ce = [_cross_entropy(s, labels, eps) for s in scores]
  tri = [_triplet(f, labels, margin) for f in feats]
  id_loss, tri_loss = _halves(ce), _halves(tri)
  total = float(model_cfg.get("id_loss_weight", 1.0)) * id_loss + float(model_cfg.get("triplet_weight", 1.0)) * tri_loss
  return torch.stack([total, id_loss, tri_loss])


def _halves(terms):
  return terms[0] if len(terms) == 1 else 0.5 * (sum(terms[1:]) / len(terms[1:])) + 0.5 * terms[0]


def _cross_entropy(logits, labels, eps: float):
  import torch
  import torch.nn.functional as F
  if not eps:
    return F.cross_entropy(logits, labels)
  # CrossEntropyLabelSmooth: (1 - eps) one-hot + eps / classes, summed over classes, mean over the batch
  target = torch.zeros_like(logits).scatter_(1, labels[:, None], 1.0) * (1 - eps) + eps / logits.shape[1]
  return (-target * F.log_softmax(logits, dim=1)).mean(0).sum()


def _triplet(x, labels, margin: float):
  """Batch-hard triplet (TripletLoss): sqrt(clamp(|a|^2 + |b|^2 - 2ab, 1e-12)), hardest positive / negative."""
  import torch
  sq = (x * x).sum(1, keepdim=True)
  dist = (sq + sq.t() - 2 * x @ x.t()).clamp(min=1e-12).sqrt()
  same = labels[:, None] == labels[None, :]
  dist_ap = torch.where(same, dist, torch.full_like(dist, -math.inf)).max(1).values
  dist_an = torch.where(same, torch.full_like(dist, math.inf), dist).min(1).values
  if margin > 0:
    return torch.relu(dist_ap - dist_an + margin).mean()
  return torch.nn.functional.softplus(dist_ap - dist_an).mean()  # SoftMarginLoss(an - ap, 1)


# ---------------------------------------------------------------------- helpers
def _pair(x) -> tuple[int, int]:
  return (int(x), int(x)) if np.isscalar(x) else tuple(int(v) for v in x)


def _torch_inputs(inputs: dict):
  import torch
  images = torch.from_numpy(np.ascontiguousarray(inputs["image"].transpose(0, 3, 1, 2)))
  return images, torch.from_numpy(inputs["label"]), torch.from_numpy(inputs["camera"]), torch.from_numpy(inputs["view"])


def _submodule(model, dotted: str):
  try:
    return model.get_submodule(dotted)
  except AttributeError as e:
    raise ParityError(f"the official model has no submodule {dotted!r} ({e}); is this the official TransReID "
                      "code?") from e


def _live_blocks(model, config) -> list:
  blocks = list(_submodule(model, "base.blocks"))
  return blocks[:-1] if bool(config.model.get("jpm", True)) else blocks


def _train_forward(model, images, labels, camera, view, jpm: bool):
  """The train-mode forward (lists of logits and pre-BN features); the BNNecks' running statistics are put
  back afterwards, so the comparison (and every later sensitivity run) sees the same weights."""
  necks = [_submodule(model, bn) for bn, _ in _neck_names(jpm)]
  saved = [(b, b.running_mean.clone(), b.running_var.clone(), b.num_batches_tracked.clone()) for b in necks]
  model.train()
  try:
    scores, feats = model(images, labels, cam_label=camera, view_label=view)
  finally:
    model.eval()
    for b, mean, var, count in saved:
      b.running_mean.copy_(mean)
      b.running_var.copy_(var)
      b.num_batches_tracked.copy_(count)
  as_list = lambda x: list(x) if isinstance(x, (list, tuple)) else [x]  # noqa: E731
  return [s.detach() for s in as_list(scores)], [f.detach() for f in as_list(feats)]


@contextlib.contextmanager
def _reduced_size(modules: dict, cfg, arch):
  """make_model at the config's reduced dims: the factory entry calls the official TransReID class with
  them, and the builders' neck width follows the backbone (the official literal is 768)."""
  import torch.nn as nn
  vit, make = modules["model.backbones.vit_pytorch"], modules["model.make_model"]
  table = getattr(make, "__factory_T_type", None)
  if not isinstance(table, dict):
    raise ParityError("model/make_model.py has no __factory_T_type table to build the reduced-size backbone from")

  def factory(img_size=(256, 128), stride_size=16, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1, camera=0,
              view=0, local_feature=False, sie_xishu=1.5, **kwargs):
    return vit.TransReID(img_size=img_size, patch_size=16, stride_size=stride_size, embed_dim=arch.embed_dim,
                         depth=arch.depth, num_heads=arch.num_heads, mlp_ratio=arch.mlp_ratio, qkv_bias=arch.qkv_bias,
                         qk_scale=arch.qk_scale, camera=camera, view=view, drop_path_rate=drop_path_rate,
                         drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                         sie_xishu=sie_xishu, local_feature=local_feature, **kwargs)

  key = cfg.MODEL.TRANSFORMER_TYPE
  saved = {"table": table.get(key), "build_transformer": make.build_transformer,
           "build_transformer_local": make.build_transformer_local}
  table[key] = factory
  for name in ("build_transformer", "build_transformer_local"):
    setattr(make, name, _fixed_width(saved[name], arch.embed_dim))
  try:
    yield
  finally:
    table[key] = saved["table"]
    for name in ("build_transformer", "build_transformer_local"):
      setattr(make, name, saved[name])


def _fixed_width(cls, width: int):
  """A subclass whose in_planes is `width` whatever the official constructor assigns."""
  def get(self):
    return width

  def ignore(self, value):
    del value

  return type(cls.__name__, (cls,), {"in_planes": property(get, ignore), "__module__": cls.__module__})


def _calibrate_embeddings(base, coe: float):
  """Hook on the patch embedding: cls / pos to the patch tokens' std, the SIE term to SIE_SHARE of it
  (applied before the forward adds them)."""
  def hook(module, args, output):
    spread = float(output.std())
    for name, target in (("cls_token", spread), ("pos_embed", spread), ("sie_embed", SIE_SHARE * spread / coe)):
      p = getattr(base, name, None)
      if p is not None and float(p.std()) > 0:
        p.mul_(target / float(p.std()))
  return hook


def _calibrate_logits(attn):
  """Hook on attn.qkv: scales the query and key rows so the attention logits have std LOGIT_STD (once: b2
  runs four times), and passes the rescaled output on so later blocks calibrate on it."""
  state = {"done": False}

  def hook(module, args, output):
    if state["done"]:
      return output
    state["done"] = True
    b, n, three_d = output.shape
    d, h = three_d // 3, attn.num_heads
    q, k = output[..., :d].reshape(b, n, h, -1), output[..., d:2 * d].reshape(b, n, h, -1)
    spread = float((q.transpose(1, 2) @ k.permute(0, 2, 3, 1) * attn.scale).std())
    if not spread > 0:
      raise ParityError("cannot sharpen the attention: its logits do not vary")
    factor = math.sqrt(LOGIT_STD / spread)
    module.weight[:2 * d].mul_(factor)
    if module.bias is not None:
      module.bias[:2 * d].mul_(factor)
    out = output.clone()
    out[..., :2 * d] *= factor
    return out
  return hook


def _calibrate_neck():
  """Pre-hook on a BNNeck (eval mode): running statistics from this batch, weight in [0.5, 1.5], bias
  N(0, 0.1^2) (seeded torch draws), as trained necks have; then the forward uses them."""
  import torch

  def hook(module, args):
    x = args[0]
    module.running_mean.copy_(x.mean(0))
    var = x.var(0)
    module.running_var.copy_(var + 0.1 * var.mean())  # no near-zero variance to amplify rounding
    module.weight.copy_(0.5 + torch.rand_like(module.weight))
    module.bias.copy_(0.1 * torch.randn_like(module.bias))
  return hook


ADAPTER = TransReIDAdapter()
