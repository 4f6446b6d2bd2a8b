"""timm ImageNet ViT / DeiT state_dicts -> jaxmatch.models.vit.VisionTransformer variables (and back).

Keys (timm naming, as the files TransReID loads): cls_token, pos_embed, patch_embed.proj.{weight,bias},
blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.{weight,bias}, norm.{weight,bias},
head.* ; DeiT distilled files add dist_token and head_dist.* (and a pos_embed slot for the dist token).

As the official `load_param`: `model` / `state_dict` containers unwrapped, head / dist keys skipped, a
flattened patch kernel reshaped to [D, 3, 16, 16], and a pos_embed of another length resized to the
model's grid (`resize_pos_embed`). The official code drops the distillation slot when the FILE NAME
contains "distilled"; here `distilled=None` decides by the presence of `dist_token` instead (same files).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from jaxmatch.convert.keys import KeyAccountant
from jaxmatch.convert.resnet import Tensor, tensors_from_torch, tensors_to_torch
from jaxmatch.convert.torch_io import strip_prefix, unwrap_state_dict
from jaxmatch.models.vit import PATCH, ViTArch, arch_of, patch_grid, resize_pos_embed

HEAD_REASON = "ImageNet classification head: not part of the backbone (the official loader skips 'head')"
DIST_REASON = "DeiT distillation token / head: the official loader skips every key containing 'dist'"
DEAD_REASON = "not run by this backbone configuration"

_BLOCK_LINEARS = (("attn.qkv", ("attn", "qkv")), ("attn.proj", ("attn", "proj")),
                  ("mlp.fc1", ("mlp", "fc1")), ("mlp.fc2", ("mlp", "fc2")))


def _ln(key: str, path: tuple, d: int) -> list[Tensor]:
  return [Tensor(f"{key}.weight", (d,), "params", path + ("scale",)),
          Tensor(f"{key}.bias", (d,), "params", path + ("bias",))]


def block_tensors(prefix: str, path: tuple, arch: ViTArch) -> list[Tensor]:
  """One block's tensors ('<prefix>norm1.weight', ...) <-> Block variables under `path`."""
  d = arch.embed_dim
  hidden = int(d * arch.mlp_ratio)
  shapes = {"attn.qkv": (3 * d, d), "attn.proj": (d, d), "mlp.fc1": (hidden, d), "mlp.fc2": (d, hidden)}
  tensors = _ln(f"{prefix}norm1", path + ("norm1",), d)
  for key, sub in _BLOCK_LINEARS:
    if key == "mlp.fc1":
      tensors += _ln(f"{prefix}norm2", path + ("norm2",), d)
    tensors.append(Tensor(f"{prefix}{key}.weight", shapes[key], "params", path + sub + ("kernel",)))
    if key != "attn.qkv" or arch.qkv_bias:
      tensors.append(Tensor(f"{prefix}{key}.bias", shapes[key][:1], "params", path + sub + ("bias",)))
  return tensors


def vit_tensors(arch: ViTArch, grid_hw: tuple[int, int], prefix: str = "", path: tuple = (),
                num_blocks: int | None = None, final_norm: bool = True) -> list[Tensor]:
  """Every tensor of a VisionTransformer with its official key, shape and flax location."""
  d = arch.embed_dim
  tensors = [Tensor(f"{prefix}cls_token", (1, 1, d), "params", path + ("cls_token",)),
             Tensor(f"{prefix}pos_embed", (1, 1 + grid_hw[0] * grid_hw[1], d), "params", path + ("pos_embed",)),
             Tensor(f"{prefix}patch_embed.proj.weight", (d, 3, PATCH, PATCH), "params",
                    path + ("patch_embed", "proj", "kernel")),
             Tensor(f"{prefix}patch_embed.proj.bias", (d,), "params", path + ("patch_embed", "proj", "bias"))]
  for i in range(arch.depth if num_blocks is None else num_blocks):
    tensors += block_tensors(f"{prefix}blocks.{i}.", path + (f"blocks_{i}",), arch)
  if final_norm:
    tensors += _ln(f"{prefix}norm", path + ("norm",), d)
  return tensors


def _imagenet_layout(sd: dict, arch: ViTArch, grid_hw, distilled: bool) -> dict:
  """The official load_param's adjustments: flat patch kernel reshaped, pos_embed resized."""
  sd = dict(sd)
  w = sd.get("patch_embed.proj.weight")
  if w is not None and np.ndim(w) < 4:
    sd["patch_embed.proj.weight"] = np.reshape(w, (arch.embed_dim, 3, PATCH, PATCH))
  pos = sd.get("pos_embed")
  if pos is not None and np.shape(pos)[1] != 1 + grid_hw[0] * grid_hw[1]:
    sd["pos_embed"] = resize_pos_embed(pos, grid_hw, distilled=distilled)
  return sd


def vit_from_timm(state_dict: Mapping, arch: ViTArch | str, img_size, stride=16,
                  distilled: bool | None = None, num_blocks: int | None = None,
                  final_norm: bool = True, path: tuple = ()) -> dict:
  """A timm ViT / DeiT state_dict -> {'params': ...} of VisionTransformer(img_size, arch, stride).

  Every key is mapped or ignored with a reason; raises CheckpointMismatchError otherwise.
  """
  acc, variables = imagenet_accountant(state_dict, arch, img_size, stride, distilled, num_blocks, final_norm, path)
  acc.finish()
  return variables


def imagenet_accountant(state_dict: Mapping, arch: ViTArch | str, img_size, stride=16,
                        distilled: bool | None = None, num_blocks: int | None = None,
                        final_norm: bool = True, path: tuple = ()):
  """(accountant, variables) before finish(): callers may claim further keys (e.g. as dead blocks)."""
  arch = arch_of(arch) if isinstance(arch, str) else arch
  sd = strip_prefix(dict(unwrap_state_dict(state_dict)))
  if distilled is None:
    distilled = "dist_token" in sd
  grid = patch_grid(img_size, stride)
  acc = KeyAccountant(_imagenet_layout(sd, arch, grid, distilled), what="timm ViT / DeiT state_dict")
  variables = tensors_from_torch(acc, vit_tensors(arch, grid, "", path, num_blocks, final_norm))
  acc.ignore_matching(lambda k: "head" in k, HEAD_REASON)
  acc.ignore_matching(lambda k: "dist" in k, DIST_REASON)  # head_dist.*: this reason wins
  run = arch.depth if num_blocks is None else num_blocks
  acc.ignore_matching(lambda k: any(k.startswith(f"blocks.{i}.") for i in range(run, arch.depth))
                      or (not final_norm and k.startswith("norm.")), DEAD_REASON)
  return acc, {"params": variables["params"]}


def vit_to_torch(params: Mapping, arch: ViTArch, grid_hw: Sequence[int], num_blocks: int | None = None,
                 final_norm: bool = True) -> dict:
  """Inverse of vit_from_timm for a model's own grid (no resize): flax params -> timm names / layouts."""
  return tensors_to_torch({"params": params}, vit_tensors(arch, tuple(grid_hw), num_blocks=num_blocks,
                                                          final_norm=final_norm))
