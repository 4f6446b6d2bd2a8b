"""The TransReID backbone as the official model/backbones/vit_pytorch.py defines it: a pre-LN ViT with
overlapping 16x16 patches and side information embeddings (SIE). Same class / factory names, constructor
arguments, submodule names and state_dict keys; written for the parity tests."""
import math
import os
from functools import partial
from itertools import repeat

import torch
import torch.nn as nn
# The official file imports this (gone from PyTorch >= 1.9); the parity tool provides it while importing.
from torch._six import container_abcs


def _variant():
  return os.environ.get("JAXMATCH_PARITY_STANDIN", "")


def to_2tuple(x):
  return x if isinstance(x, container_abcs.Iterable) else tuple(repeat(x, 2))


def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
  return nn.init.trunc_normal_(tensor, mean, std, a, b)


def drop_path(x, drop_prob=0.0, training=False):
  if drop_prob == 0.0 or not training:
    return x
  keep = 1 - drop_prob
  mask = (keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)).floor_()
  return x.div(keep) * mask


class DropPath(nn.Module):
  def __init__(self, drop_prob=None):
    super().__init__()
    self.drop_prob = drop_prob

  def forward(self, x):
    return drop_path(x, self.drop_prob, self.training)


class Mlp(nn.Module):
  def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0):
    super().__init__()
    self.fc1 = nn.Linear(in_features, hidden_features or in_features)
    self.act = act_layer()
    self.fc2 = nn.Linear(hidden_features or in_features, out_features or in_features)
    self.drop = nn.Dropout(drop)

  def forward(self, x):
    return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
  def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
    super().__init__()
    self.num_heads = num_heads
    self.scale = qk_scale or (dim // num_heads) ** -0.5
    self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
    self.attn_drop = nn.Dropout(attn_drop)
    self.proj = nn.Linear(dim, dim)
    self.proj_drop = nn.Dropout(proj_drop)

  def forward(self, x):
    b, n, c = x.shape
    q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
    weights = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
    return self.proj_drop(self.proj((weights @ v).transpose(1, 2).reshape(b, n, c)))


class Block(nn.Module):
  def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, drop=0.0, attn_drop=0.0,
               drop_path=0.0, act_layer=nn.GELU, norm_layer=nn.LayerNorm):
    super().__init__()
    self.norm1 = norm_layer(dim)
    self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
    self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
    self.norm2 = norm_layer(dim)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

  def forward(self, x):
    x = x + self.drop_path(self.attn(self.norm1(x)))
    return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed_overlap(nn.Module):
  def __init__(self, img_size=224, patch_size=16, stride_size=20, in_chans=3, embed_dim=768):
    super().__init__()
    self.img_size, self.patch_size = to_2tuple(img_size), to_2tuple(patch_size)
    stride = to_2tuple(stride_size)
    self.num_y = (self.img_size[0] - self.patch_size[0]) // stride[0] + 1
    self.num_x = (self.img_size[1] - self.patch_size[1]) // stride[1] + 1
    self.num_patches = self.num_x * self.num_y
    self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride_size)
    fan_out = self.patch_size[0] * self.patch_size[1] * embed_dim
    self.proj.weight.data.normal_(0, math.sqrt(2.0 / fan_out))

  def forward(self, x):
    assert tuple(x.shape[2:]) == tuple(self.img_size), f"input {tuple(x.shape[2:])} != model {self.img_size}"
    return self.proj(x).flatten(2).transpose(1, 2)


class TransReID(nn.Module):
  def __init__(self, img_size=224, patch_size=16, stride_size=16, in_chans=3, num_classes=1000, embed_dim=768,
               depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, drop_rate=0.0,
               attn_drop_rate=0.0, camera=0, view=0, drop_path_rate=0.0, hybrid_backbone=None,
               norm_layer=nn.LayerNorm, local_feature=False, sie_xishu=1.0):
    super().__init__()
    self.num_features = self.embed_dim = embed_dim
    self.local_feature = local_feature
    self.patch_embed = PatchEmbed_overlap(img_size, patch_size, stride_size, in_chans, embed_dim)
    n = self.patch_embed.num_patches
    self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
    self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, embed_dim))
    self.cam_num, self.view_num, self.sie_xishu = camera, view, sie_xishu
    # a table only for counts > 1 (the forward tests > 0: a single camera crashes, as in the official code)
    rows = camera * view if camera > 1 and view > 1 else camera if camera > 1 else view if view > 1 else 0
    if rows:
      self.sie_embed = nn.Parameter(torch.zeros(rows, 1, embed_dim))
      trunc_normal_(self.sie_embed, std=0.02)
    self.pos_drop = nn.Dropout(p=drop_rate)
    rates = [r.item() for r in torch.linspace(0, drop_path_rate, depth)]
    self.blocks = nn.ModuleList([
        Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, rates[i],
              norm_layer=norm_layer) for i in range(depth)])
    self.norm = norm_layer(embed_dim)
    self.fc = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
    trunc_normal_(self.cls_token, std=0.02)
    trunc_normal_(self.pos_embed, std=0.02)
    self.apply(self._init_weights)

  def _init_weights(self, m):
    if isinstance(m, nn.Linear):
      trunc_normal_(m.weight, std=0.02)
      if m.bias is not None:
        nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
      nn.init.constant_(m.bias, 0)
      nn.init.constant_(m.weight, 1.0)

  def _side(self, camera_id, view_id):
    coe = self.sie_xishu * (1.01 if _variant() == "perturb_sie_coe" else 1.0)
    if self.cam_num > 0 and self.view_num > 0:
      return coe * self.sie_embed[camera_id * self.view_num + view_id]
    if self.cam_num > 0:
      return coe * self.sie_embed[camera_id]
    if self.view_num > 0:
      return coe * self.sie_embed[view_id]
    return 0.0

  def forward_features(self, x, camera_id, view_id):
    x = self.patch_embed(x)
    x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
    x = self.pos_drop(x + self.pos_embed + self._side(camera_id, view_id))
    if self.local_feature:
      for blk in self.blocks[:-1]:
        x = blk(x)
      return x
    for blk in self.blocks:
      x = blk(x)
    return self.norm(x)[:, 0]

  def forward(self, x, cam_label=None, view_label=None):
    return self.forward_features(x, cam_label, view_label)


def _factory(embed_dim, depth, num_heads, mlp_ratio, qkv_bias, **fixed):
  def build(img_size=(256, 128), stride_size=16, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1, camera=0,
            view=0, local_feature=False, sie_xishu=1.5, **kwargs):
    for k, v in fixed.items():
      kwargs.setdefault(k, v)
    return TransReID(img_size=img_size, patch_size=16, stride_size=stride_size, embed_dim=embed_dim, depth=depth,
                     num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, camera=camera, view=view,
                     drop_path_rate=drop_path_rate, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                     norm_layer=partial(nn.LayerNorm, eps=1e-6), sie_xishu=sie_xishu, local_feature=local_feature,
                     **kwargs)
  return build


vit_base_patch16_224_TransReID = _factory(768, 12, 12, 4, True)
vit_small_patch16_224_TransReID = _factory(768, 8, 8, 3.0, False, qk_scale=768 ** -0.5)
deit_small_patch16_224_TransReID = _factory(384, 12, 6, 4, True)
