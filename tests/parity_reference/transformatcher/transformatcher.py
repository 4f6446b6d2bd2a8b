"""Stand-in for the official `transformatcher.py`: TransforMatcher = doubled ResNet taps -> Match2Match.

Same constructor (`TransforMatcher(backbone, luse, device, imside=240)`), forward (`(corr, None)`), feature
extractor (`extract_bottleneck_features`) and submodule / state_dict names as the official model. The
rotary embedding (the official code imports it from rotary-embedding-torch <= 0.4.0) is written out here:
a 1-D RoPE over the flattened token index with 'pixel' frequencies [pi, 5 pi] on interleaved pairs.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

import backbone as resnet
import utils
from geometry import Geometry

OFFICIAL_CHANNELS = 26


class RotaryEmbedding(nn.Module):
  """freqs = linspace(1, max_freq / 2, dim / 2) * pi in float32 (a stored buffer, key `freqs`)."""

  def __init__(self, dim: int, max_freq: float = 10):
    super().__init__()
    self.register_buffer("freqs", torch.linspace(1.0, max_freq / 2, dim // 2) * math.pi)

  def forward(self, positions: torch.Tensor) -> torch.Tensor:
    angles = positions.to(self.freqs.dtype)[:, None] * self.freqs   # float32 products, as the library
    return angles.repeat_interleave(2, dim=-1)                      # [n, dim]: (a, a, b, b)


def rotate(angles: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
  """Rotates interleaved channel pairs (x0, x1) by their angle."""
  pairs = t.unflatten(-1, (-1, 2))
  swapped = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
  return t * angles.cos() + swapped * angles.sin()


class Tokens(nn.Module):
  """[B, C, h1, w1, h2, w2] -> [B, h1 w1 h2 w2, C] (the official uses an einops Rearrange layer here)."""

  def forward(self, x):
    return x.flatten(2).transpose(1, 2)


class Grid4d(nn.Module):
  """[B, h1 w1 h2 w2, C] -> [B, C, side, side, side, side]."""

  def __init__(self, side: int):
    super().__init__()
    self.side = side

  def forward(self, x):
    return x.transpose(1, 2).unflatten(2, (self.side,) * 4)


class PreNorm(nn.Module):
  def __init__(self, dim, fn):
    super().__init__()
    self.norm = nn.LayerNorm(dim)
    self.fn = fn

  def forward(self, x):
    return self.fn(self.norm(x))


def FeedForward(dim, mult=4):
  return nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU(), nn.Linear(dim * mult, dim))


class FastAttention(nn.Module):
  """Additive attention: a global query, then a global key, each a softmax-weighted sum over all tokens."""

  def __init__(self, dim, *, heads=8, dim_head=4, max_seq_len=15 ** 4, pos_emb=None):
    super().__init__()
    self.heads = heads
    self.scale = dim_head ** -0.5
    if utils.standin_variant() == "perturb_attention_scale":
      self.scale *= 1.01
    self.max_seq_len = max_seq_len
    self.pos_emb = pos_emb
    self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
    self.to_q_attn_logits = nn.Linear(dim_head, 1, bias=False)
    self.to_k_attn_logits = nn.Linear(dim_head // 2, 1, bias=False)
    self.to_r = nn.Linear(dim_head // 2, dim_head)
    self.to_out = nn.Linear(heads * dim_head, dim)

  def forward(self, x):
    b, n, _ = x.shape
    q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
    angles = self.pos_emb(torch.arange(self.max_seq_len))[:n]
    q_rot, k_rot = rotate(angles, q), rotate(angles, k)
    if utils.standin_variant() == "perturb_match2match":
      v = rotate(angles, v)
    pair_sum = lambda t: t.unflatten(-1, (-1, 2)).sum(-1)  # noqa: E731  channels (2j, 2j+1)
    q_weights = (self.to_q_attn_logits(q).squeeze(-1) * self.scale).softmax(dim=-1)
    global_q = torch.einsum("bhn,bhnd->bhd", q_weights, q_rot).unsqueeze(2)
    keys = pair_sum(k * global_q)
    k_weights = (self.to_k_attn_logits(keys).squeeze(-1) * self.scale / key_temperature()).softmax(dim=-1)
    global_k = torch.einsum("bhn,bhnd->bhd", k_weights, k_rot).unsqueeze(2)
    r = self.to_r(pair_sum(v * global_k)) + q
    return self.to_out(r.transpose(1, 2).flatten(2))


def key_temperature() -> float:
  """1 in the faithful stand-in; 1.05 in `perturb_key_temperature` (a subtle change of the key softmax)."""
  return 1.05 if utils.standin_variant() == "perturb_key_temperature" else 1.0


class Match2Match(nn.Module):

  def __init__(self, feat_dims, luse, side=15):
    super().__init__()
    width = 16
    channels = OFFICIAL_CHANNELS if utils.standin_variant() == "official_limits" else len(feat_dims)
    self.to_embedding = nn.Sequential(Tokens(), nn.Linear(channels, width))
    self.posenc = nn.Parameter(torch.randn(15, 15, 15, 15, width))  # unused, as in the official model
    rotary = RotaryEmbedding(dim=4)
    self.to_original = nn.Sequential(nn.Linear(width, 1), Grid4d(side))
    self.trans_nc = nn.ModuleList([
        nn.ModuleList([PreNorm(width, FastAttention(width, heads=8, dim_head=4, max_seq_len=side ** 4,
                                                    pos_emb=rotary)),
                       PreNorm(width, FeedForward(width))])
        for _ in range(6)])
    self.relu = nn.ReLU(inplace=True)

  def forward(self, src_feats, trg_feats):
    corr = torch.stack(Geometry.cosine_similarity(src_feats, trg_feats), dim=1).squeeze(2)
    corr = self.relu(corr)
    b = corr.shape[0]
    x = self.to_embedding(corr)
    for attn, ff in self.trans_nc:
      x = attn(x) + x
      x = ff(x) + x
    refined = self.to_original(x).squeeze(1)
    up = Geometry.interpolate4d(refined, Geometry.upsample_size)
    cells = Geometry.upsample_size[0] * Geometry.upsample_size[1]
    return up.reshape(b, cells, cells)


class TransforMatcher(nn.Module):

  def __init__(self, backbone, luse, device, imside=240):
    super().__init__()
    builders = {"resnet50": (resnet.resnet50, [3, 4, 6, 3]), "resnet101": (resnet.resnet101, [3, 4, 23, 3])}
    if backbone not in builders:
      raise Exception(f"Unavailable backbone: {backbone}")
    make, self.nbottlenecks = builders[backbone]
    self.backbone = make(pretrained=True).to(device)   # the official constructor asks for ImageNet weights
    self.luse = luse
    self.feature_extractor = self.extract_bottleneck_features
    with torch.no_grad():  # like the official constructor: one train-mode pass (BN statistics move once)
      dummy = torch.randn((2, 3, imside, imside)).to(device)
      feat_dim = [f.size(1) for f in self.feature_extractor(dummy, dummy)[0]]
    Geometry.initialize(imside, device)
    self.match2match = Match2Match(feat_dim, luse, Geometry.corr_side).to(device)

  def forward(self, src_img, trg_img):
    src_feats, trg_feats = self.feature_extractor(src_img, trg_img)
    return self.match2match(src_feats, trg_feats), None

  def extract_bottleneck_features(self, src_img, trg_img):
    """Outputs of every bottleneck block of the `luse` stages, split into source and target halves."""
    net = self.backbone
    feat = net.maxpool(net.relu(net.bn1(net.conv1(torch.cat([src_img, trg_img], dim=1)))))
    src_feats, trg_feats = [], []
    for idx in range(1, max(self.luse) + 1):
      for block in getattr(net, f"layer{idx}"):
        feat = block(feat)
        if idx in self.luse:
          half = feat.shape[1] // 2
          src_feats.append(feat[:, :half].clone())
          trg_feats.append(feat[:, half:].clone())
    return src_feats, trg_feats
