"""A pre-LN Vision Transformer backbone (ViT / DeiT) with overlapping patches, as TransReID builds it.

Patch embedding: one 16x16 convolution with stride s (16 = the usual ViT, 14 / 12 / 11 overlap), padding
0, tokens flattened row-major over the grid ((H - 16) // s + 1, (W - 16) // s + 1). Then the class token
is prepended, the learnable position embedding added (and, for TransReID, a side-information embedding
after it), and the pre-LN blocks run:
  x = x + DropPath(Attn(LN1(x)));  x = x + DropPath(MLP(LN2(x)))
with LayerNorm eps 1e-6, a single qkv Linear (q, k, v row blocks, heads major inside each), logits
(q k^T) * scale, exact erf GELU. Parameters are float32; `dtype` is the compute dtype (softmax and
LayerNorm statistics always run in float32).

Drop path reproduces the official arithmetic: mask = floor(keep + u), out = x / keep * mask with u
uniform per sample, drawn from the 'droppath' rng stream. A caller may prescribe u instead through the
'drop_path_u' variable collection ({<module path>: {'u': [B]}}), which is how parity tests replay a
recorded run.

`resize_pos_embed` is the official ImageNet -> re-ID grid resize (bilinear, half-pixel centres, no
antialias; cls token kept; DeiT's distillation slot dropped).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmatch.numerics import divide

PATCH = 16
LN_EPS = 1e-6


class ViTArch(NamedTuple):
  embed_dim: int
  depth: int
  num_heads: int
  mlp_ratio: float
  qkv_bias: bool = True
  qk_scale: float | None = None  # None: head_dim ** -0.5


# "vit_small" is the old timm ViT-S that TransReID ships (dim 768, no qkv bias, scale 768^-0.5).
ARCHS = {
    "vit_base": ViTArch(768, 12, 12, 4.0),
    "deit_base": ViTArch(768, 12, 12, 4.0),
    "vit_small": ViTArch(768, 8, 8, 3.0, qkv_bias=False, qk_scale=768 ** -0.5),
    "deit_small": ViTArch(384, 12, 6, 4.0),
}

trunc_normal_02 = nn.initializers.truncated_normal(0.02, lower=-100.0, upper=100.0)  # cut at +-2 abs


def arch_of(name: str, **overrides) -> ViTArch:
  """The table entry for `name`, with any non-zero override (embed_dim, depth, ...) applied."""
  if name not in ARCHS:
    raise ValueError(f"unknown ViT backbone {name!r}; choose one of {sorted(ARCHS)}")
  return ARCHS[name]._replace(**{k: v for k, v in overrides.items() if v})


def pair(x) -> tuple[int, int]:
  return (int(x), int(x)) if np.isscalar(x) else tuple(int(v) for v in x)


def patch_grid(img_size, stride) -> tuple[int, int]:
  """(rows, cols) of 16x16 patches at `stride`; ValueError where the stride cannot tile the image."""
  (h, w), (sh, sw) = pair(img_size), pair(stride)
  if not (0 < sh <= PATCH and 0 < sw <= PATCH):
    raise ValueError(f"patch stride must be in 1..{PATCH} (overlapping or touching patches), got {(sh, sw)}")
  if h < PATCH or w < PATCH:
    raise ValueError(f"image size {(h, w)} is smaller than one {PATCH}x{PATCH} patch")
  return (h - PATCH) // sh + 1, (w - PATCH) // sw + 1


def drop_path_rates(rate: float, depth: int) -> list[float]:
  """Per-block rates, linearly 0 -> rate as float32 values (torch.linspace), as Python floats."""
  return [float(r) for r in np.linspace(0.0, rate, depth, dtype=np.float32)]


# ------------------------------------------------------------------ position embedding resize

def _bilinear_axis(n_in: int, n_out: int):
  """Source indices and weights of align_corners=False bilinear sampling (float32, as torch's CPU kernel)."""
  scale = np.float32(n_in / n_out)
  src = np.maximum(scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5),
                   np.float32(0.0))
  i0 = np.floor(src).astype(np.int64)
  i0 = np.minimum(i0, n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  lam = (src - i0.astype(np.float32)).astype(np.float32)
  return i0, i1, lam


def bilinear_resize(grid: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
  """[h, w, D] -> [H, W, D] like F.interpolate(mode='bilinear', align_corners=False), no antialias."""
  grid = np.asarray(grid, np.float32)
  r0, r1, lr = _bilinear_axis(grid.shape[0], out_hw[0])
  c0, c1, lc = _bilinear_axis(grid.shape[1], out_hw[1])
  lr, lc = lr[:, None, None], lc[None, :, None]
  one = np.float32(1.0)
  top = (one - lc) * grid[r0][:, c0] + lc * grid[r0][:, c1]
  bottom = (one - lc) * grid[r1][:, c0] + lc * grid[r1][:, c1]
  return ((one - lr) * top + lr * bottom).astype(np.float32)


def resize_pos_embed(pos_embed: np.ndarray, grid_hw: tuple[int, int], distilled: bool = False) -> np.ndarray:
  """ImageNet [1, 1 (+1 dist) + g*g, D] -> [1, 1 + H*W, D]: cls kept, dist slot dropped, grid resized."""
  pos_embed = np.asarray(pos_embed, np.float32)
  if distilled:
    pos_embed = np.concatenate([pos_embed[:, :1], pos_embed[:, 2:]], axis=1)
  cls, grid = pos_embed[:, :1], pos_embed[0, 1:]
  side = int(math.isqrt(grid.shape[0]))
  if side * side != grid.shape[0]:
    raise ValueError(f"position embedding grid of {grid.shape[0]} tokens is not square"
                     + ("" if distilled else " (a DeiT distilled checkpoint? pass distilled=True)"))
  resized = bilinear_resize(grid.reshape(side, side, -1), grid_hw)
  return np.concatenate([cls, resized.reshape(1, -1, grid.shape[-1])], axis=1)


# ------------------------------------------------------------------ layers

def layer_norm(dtype, name: str) -> nn.LayerNorm:
  # Two-pass variance in float32, as torch.
  return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False, name=name)


def dense(features: int, dtype, name: str, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=trunc_normal_02, bias_init=nn.initializers.zeros, name=name)


class DropPath(nn.Module):
  """Per-sample stochastic depth with the official floor(keep + u) mask and x / keep scaling."""
  rate: float

  @nn.compact
  def __call__(self, x, train: bool):
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    if self.has_variable("drop_path_u", "u"):
      u = self.get_variable("drop_path_u", "u")
    else:
      u = jax.random.uniform(self.make_rng("droppath"), x.shape[:1], jnp.float32)
    mask = jnp.floor(jnp.float32(keep) + u.astype(jnp.float32)).astype(x.dtype)
    scaled = divide(x, jnp.asarray(keep, x.dtype))
    return scaled * mask.reshape((-1,) + (1,) * (x.ndim - 1))


class Attention(nn.Module):
  num_heads: int
  qkv_bias: bool = True
  qk_scale: float | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, n, d = x.shape
    head_dim = d // self.num_heads
    scale = self.qk_scale or head_dim ** -0.5
    qkv = dense(3 * d, self.dtype, "qkv", self.qkv_bias)(x).reshape(b, n, 3, self.num_heads, head_dim)
    q, k, v = (jnp.moveaxis(qkv[:, :, i], 2, 1) for i in range(3))  # [B, heads, N, head_dim]
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) * jnp.asarray(scale, x.dtype)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bhkd->bqhd", weights, v).reshape(b, n, d)
    return dense(d, self.dtype, "proj")(out)


class Mlp(nn.Module):
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.gelu(dense(self.hidden, self.dtype, "fc1")(x), approximate=False)
    return dense(x.shape[-1], self.dtype, "fc2")(h)


class Block(nn.Module):
  """Pre-LN transformer block; variables norm1, attn/{qkv, proj}, norm2, mlp/{fc1, fc2} (timm names)."""
  num_heads: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  qk_scale: float | None = None
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    d = x.shape[-1]
    attn = Attention(self.num_heads, self.qkv_bias, self.qk_scale, self.dtype, name="attn")
    x = x + DropPath(self.drop_path, name="drop_path_attn")(attn(layer_norm(self.dtype, "norm1")(x)), train)
    mlp = Mlp(int(d * self.mlp_ratio), self.dtype, name="mlp")
    return x + DropPath(self.drop_path, name="drop_path_mlp")(mlp(layer_norm(self.dtype, "norm2")(x)), train)


class PatchEmbed(nn.Module):
  """[B, H, W, 3] -> [B, rows * cols, D] (row-major over the patch grid)."""
  embed_dim: int
  stride: tuple[int, int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    fan_in = images.shape[-1] * PATCH * PATCH
    bound = 1.0 / math.sqrt(fan_in)
    conv = nn.Conv(self.embed_dim, (PATCH, PATCH), strides=self.stride, padding="VALID", dtype=self.dtype,
                   param_dtype=jnp.float32,
                   kernel_init=nn.initializers.normal(math.sqrt(2.0 / (PATCH * PATCH * self.embed_dim))),
                   bias_init=lambda k, s, d=jnp.float32: jax.random.uniform(k, s, d, -bound, bound),
                   name="proj")
    x = conv(images.astype(self.dtype))
    return x.reshape(x.shape[0], -1, self.embed_dim)


class VisionTransformer(nn.Module):
  """images [B, H, W, 3] -> {'patch_embed', 'tokens' (input of block 0), 'blocks' (each output), 'out'}.

  `num_blocks` (default depth) runs only the first blocks, while the drop-path rates stay those of the
  full depth (TransReID's JPM runs blocks 0..depth-2 and copies the last one). `final_norm` applies the
  closing LayerNorm 'norm' to 'out'. `side` [B, 1, D] (or [B, N, D]) is added after the position
  embedding (TransReID's SIE term, already scaled).
  """
  img_size: Sequence[int]
  arch: ViTArch
  stride: Sequence[int] = (16, 16)
  drop_path_rate: float = 0.0
  num_blocks: int | None = None
  final_norm: bool = True
  dtype: Any = jnp.float32

  @property
  def grid(self) -> tuple[int, int]:
    return patch_grid(self.img_size, self.stride)

  def block_kwargs(self, drop_path: float) -> dict:
    a = self.arch
    return dict(num_heads=a.num_heads, mlp_ratio=a.mlp_ratio, qkv_bias=a.qkv_bias, qk_scale=a.qk_scale,
                drop_path=drop_path, dtype=self.dtype)

  @nn.compact
  def __call__(self, images, side=None, train: bool = False) -> dict:
    self._check_input(images)
    d, (rows, cols) = self.arch.embed_dim, self.grid
    patches = PatchEmbed(d, pair(self.stride), self.dtype, name="patch_embed")(images)
    cls = self.param("cls_token", trunc_normal_02, (1, 1, d), jnp.float32)
    pos = self.param("pos_embed", trunc_normal_02, (1, 1 + rows * cols, d), jnp.float32)
    cls = jnp.broadcast_to(cls.astype(self.dtype), (patches.shape[0], 1, d))
    x = jnp.concatenate([cls, patches], axis=1) + pos.astype(self.dtype)
    if side is not None:
      x = x + side.astype(self.dtype)
    out = {"patch_embed": patches, "tokens": x, "blocks": []}
    rates = drop_path_rates(self.drop_path_rate, self.arch.depth)
    for i in range(self.arch.depth if self.num_blocks is None else self.num_blocks):
      x = Block(**self.block_kwargs(rates[i]), name=f"blocks_{i}")(x, train=train)
      out["blocks"].append(x)
    out["out"] = layer_norm(self.dtype, "norm")(x) if self.final_norm else x
    return out

  def _check_input(self, images):
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be [batch, height, width, 3], got shape {images.shape}")
    if tuple(images.shape[1:3]) != pair(self.img_size):
      # The position embedding is laid out for one grid, as the official model asserts.
      raise ValueError(f"the ViT is built for {pair(self.img_size)} images, got {tuple(images.shape[1:3])}")
