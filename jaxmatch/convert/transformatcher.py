"""Official TransforMatcher state_dict -> jaxmatch variables.

Head part: `match2match_from_torch` maps every `match2match.*` key of the official checkpoint
(reference/transformatcher.md section 5) onto `jaxmatch.models.transformatcher.Match2Match`.
One table (`match2match_tensors`) lists each tensor with its torch key, torch shape and flax path;
the converter and the parity tests (which map gradients back to torch names) both walk it.

Keys that are accounted for without becoming parameters:
* `match2match.posenc` [15,15,15,15,16]: a leftover absolute position embedding that the official
  forward never reads (ignored with that reason);
* `match2match.trans_nc.L.0.fn.pos_emb.freqs` [2]: the rotary frequencies (one RotaryEmbedding
  buffer shared by all layers). The port builds its rotary table from the constant float32
  [pi, float32(5) * float32(pi)]; the checkpoint values are checked to be exactly that (a
  ValueError names any key that differs) and then recorded as consumed.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import numpy as np

from jaxmatch.convert.keys import KeyAccountant, get_path, set_path, torch_linear_to_flax  # noqa: F401 (get_path re-exported for tests)
from jaxmatch.models.transformatcher.rotary import ROTARY_FREQS

POSENC_REASON = ("never used in the official forward (leftover learnable absolute position "
                 "embedding; receives no gradient)")
FREQS_REASON = ("rotary frequencies (shared non-learnable RotaryEmbedding buffer): verified equal to "
                "float32 [pi, 5*pi]; the port's rotary table is a constant built from these values")


class Tensor(NamedTuple):
  torch_key: str
  torch_shape: tuple[int, ...]
  path: tuple[str, ...]    # location inside the flax 'params' collection
  kind: str                # 'linear' (transpose [out, in] -> [in, out]) | 'vector' (as is)


def _linear(key: str, path: tuple, out_f: int, in_f: int, bias: bool = True) -> list[Tensor]:
  t = [Tensor(f"{key}.weight", (out_f, in_f), path + ("kernel",), "linear")]
  if bias:
    t.append(Tensor(f"{key}.bias", (out_f,), path + ("bias",), "vector"))
  return t


def _layer_norm(key: str, path: tuple, dim: int) -> list[Tensor]:
  return [Tensor(f"{key}.weight", (dim,), path + ("scale",), "vector"),
          Tensor(f"{key}.bias", (dim,), path + ("bias",), "vector")]


def match2match_tensors(prefix: str = "match2match.", depth: int = 6, in_channels: int = 26,
                        width: int = 16, heads: int = 8, head_dim: int = 4,
                        mlp_ratio: int = 4) -> list[Tensor]:
  """Every learnable official match2match tensor with its flax location (posenc/freqs excluded)."""
  inner = heads * head_dim
  hidden = width * mlp_ratio
  t = _linear(f"{prefix}to_embedding.1", ("to_embedding",), width, in_channels)
  for i in range(depth):
    blk, path = f"{prefix}trans_nc.{i}", (f"block_{i}",)
    attn = path + ("attn",)
    t += _layer_norm(f"{blk}.0.norm", path + ("norm_attn",), width)
    t += _linear(f"{blk}.0.fn.to_qkv", attn + ("to_qkv",), 3 * inner, width, bias=False)
    t += _linear(f"{blk}.0.fn.to_q_attn_logits", attn + ("to_q_attn_logits",), 1, head_dim,
                 bias=False)
    t += _linear(f"{blk}.0.fn.to_k_attn_logits", attn + ("to_k_attn_logits",), 1, head_dim // 2,
                 bias=False)
    t += _linear(f"{blk}.0.fn.to_r", attn + ("to_r",), head_dim, head_dim // 2)
    t += _linear(f"{blk}.0.fn.to_out", attn + ("to_out",), width, inner)
    t += _layer_norm(f"{blk}.1.norm", path + ("norm_mlp",), width)
    t += _linear(f"{blk}.1.fn.0", path + ("mlp_fc1",), hidden, width)
    t += _linear(f"{blk}.1.fn.2", path + ("mlp_fc2",), width, hidden)
  t += _linear(f"{prefix}to_original.0", ("to_original",), 1, width)
  return t


def match2match_from_torch(acc: KeyAccountant, prefix: str = "match2match.", depth: int = 6,
                           in_channels: int = 26, width: int = 16, heads: int = 8,
                           head_dim: int = 4, mlp_ratio: int = 4) -> dict[str, Any]:
  """Maps the official match2match keys held by `acc` -> {'params': numpy tree} for Match2Match.

  Shape problems and missing keys are recorded in `acc` (the caller's `acc.finish()` raises one
  CheckpointMismatchError naming them all, together with any unexpected keys). Rotary `freqs`
  that differ from float32 [pi, 5*pi] raise ValueError naming the keys at once.
  """
  params: dict[str, Any] = {}
  for t in match2match_tensors(prefix, depth, in_channels, width, heads, head_dim, mlp_ratio):
    value = acc.take(t.torch_key, t.torch_shape)
    if value is None:
      continue
    value = np.asarray(value, np.float32)
    set_path(params, t.path, torch_linear_to_flax(value) if t.kind == "linear" else value)

  acc.ignore(f"{prefix}posenc", POSENC_REASON)
  bad = []
  for i in range(depth):
    key = f"{prefix}trans_nc.{i}.0.fn.pos_emb.freqs"
    freqs = acc.take(key, ROTARY_FREQS.shape)
    if freqs is None:
      continue
    freqs = np.asarray(freqs)
    if freqs.dtype != np.float32 or not np.array_equal(freqs.view(np.uint32),
                                                       ROTARY_FREQS.view(np.uint32)):
      bad.append(f"{key} = {freqs.tolist()} ({freqs.dtype})")
    else:
      acc.ignore(key, FREQS_REASON)
  if bad:
    raise ValueError("rotary frequencies differ from the float32 [pi, 5*pi] the port is built "
                     f"for (expected {ROTARY_FREQS.tolist()}):\n  " + "\n  ".join(bad))
  return {"params": params}


def match2match_params_from_state_dict(state_dict: Mapping[str, np.ndarray],
                                       prefix: str = "match2match.", **kwargs) -> dict[str, Any]:
  """Converts a state dict holding only match2match keys; raises on any mismatch."""
  acc = KeyAccountant(state_dict, what="TransforMatcher match2match state_dict")
  variables = match2match_from_torch(acc, prefix, **kwargs)
  acc.finish()
  return variables


BACKBONE_FC_REASON = ("backbone.fc is not doubled and never called (the official forward stops after "
                      "layer4's last block)")
NUM_BATCHES_REASON = ("BatchNorm num_batches_tracked: one scalar shared by both streams; irrelevant with "
                      "momentum 0.1")


OFFICIAL_VARIANT = {"attention": "additive", "position": "rotary", "correlation": "multi"}


def check_official_variant(model_cfg) -> None:
  """The official checkpoint layout exists only for the official variant (additive, rotary, multi)."""
  other = {k: model_cfg.get(k, v) for k, v in OFFICIAL_VARIANT.items() if model_cfg.get(k, v) != v}
  if other:
    raise ValueError(f"official TransforMatcher checkpoints hold only the official variant {OFFICIAL_VARIANT}; "
                     f"config.model asks for {other}, which the official code does not implement")


def transformatcher_from_torch(state_dict: Mapping[str, np.ndarray], model_cfg) -> dict[str, Any]:
  """A whole official TransforMatcher state_dict -> {'params', 'batch_stats'} of TransforMatcher.

  The official backbone is one ResNet with groups=2 and every tensor doubled on dim 0: the first half of
  each tensor is the source stream, the second half the target stream (two separate parameter sets here).
  """
  check_official_variant(model_cfg)
  from jaxmatch.convert.resnet import resnet_from_torch
  from jaxmatch.convert.torch_io import strip_prefix
  from jaxmatch.models.resnet import RESNET_STAGES

  acc = KeyAccountant(strip_prefix(state_dict), what="TransforMatcher checkpoint")
  stages = RESNET_STAGES[model_cfg.backbone_depth]
  num_stages = max(model_cfg.tap_stages)
  streams = {name: resnet_from_torch(acc, stages, prefix="backbone.", split=(i, 2), num_stages=num_stages)
             for i, name in enumerate(("source_backbone", "target_backbone"))}
  in_channels = sum(stages[s - 1] for s in model_cfg.tap_stages)
  head = match2match_from_torch(acc, "match2match.", depth=model_cfg.depth, in_channels=in_channels,
                                width=model_cfg.width, heads=model_cfg.heads, head_dim=model_cfg.head_dim,
                                mlp_ratio=model_cfg.mlp_ratio)
  acc.ignore_matching(lambda k: k.startswith("backbone.fc."), BACKBONE_FC_REASON)
  acc.ignore_matching(lambda k: k.endswith("num_batches_tracked"), NUM_BATCHES_REASON)
  acc.finish()
  params = {name: v["params"] for name, v in streams.items()}
  params["match2match"] = head["params"]
  return {"params": params, "batch_stats": {name: v["batch_stats"] for name, v in streams.items()}}


def from_torch(config, state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """The model contract's converter: an official checkpoint for the recipe `config`."""
  return transformatcher_from_torch(state_dict, config.model)


def imagenet_start(config, state_dict: Mapping[str, np.ndarray], variables: Mapping) -> dict:
  """The official start: one torchvision ResNet file (e.g. resnet101) in both streams, the head random."""
  from jaxmatch.convert.resnet import backbones_from_torchvision
  return backbones_from_torchvision(state_dict, int(config.model.backbone_depth), variables)


def transformatcher_to_torch(variables: Mapping, model_cfg) -> dict[str, np.ndarray]:
  """Inverse of `transformatcher_from_torch`: jaxmatch variables -> an official-layout state_dict.

  The two streams are concatenated on dim 0 (the official doubled backbone); the never-used tensors
  (`posenc`, `backbone.fc`) are written as zeros of their official shapes and `freqs` as the constants,
  so the result loads strictly into the official module (for the parity tool and round-trip tests).
  """
  check_official_variant(model_cfg)
  from jaxmatch.convert.resnet import resnet_to_torch
  from jaxmatch.models.resnet import RESNET_STAGES

  stages = RESNET_STAGES[model_cfg.backbone_depth]
  halves = [resnet_to_torch({c: variables[c][name] for c in ("params", "batch_stats")}, stages, "backbone.")
            for name in ("source_backbone", "target_backbone")]
  sd = {k: np.concatenate([halves[0][k], halves[1][k]], axis=0) for k in halves[0]}
  for key in [k for k in sd if k.endswith("running_var")]:
    sd[key.replace("running_var", "num_batches_tracked")] = np.array(0, np.int64)
  sd["backbone.fc.weight"] = np.zeros((1000, 2048), np.float32)
  sd["backbone.fc.bias"] = np.zeros((1000,), np.float32)
  in_channels = sum(stages[s - 1] for s in model_cfg.tap_stages)
  head = variables["params"]["match2match"]
  for t in match2match_tensors("match2match.", model_cfg.depth, in_channels, model_cfg.width,
                               model_cfg.heads, model_cfg.head_dim, model_cfg.mlp_ratio):
    value = np.asarray(get_path(head, t.path), np.float32)
    sd[t.torch_key] = torch_linear_to_flax(value) if t.kind == "linear" else value  # transpose is its own inverse
  for i in range(model_cfg.depth):
    sd[f"match2match.trans_nc.{i}.0.fn.pos_emb.freqs"] = ROTARY_FREQS.copy()
  grid = 15  # the official posenc shape is fixed by the code, whatever the input size
  sd["match2match.posenc"] = np.zeros((grid,) * 4 + (model_cfg.width,), np.float32)
  return sd
