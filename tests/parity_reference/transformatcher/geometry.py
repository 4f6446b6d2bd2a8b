"""Stand-in for the official `geometry.py`: `Geometry` holds the grids (class state set by `initialize`)
and the correlation, 4-D upsampling and keypoint-transfer functions the model and the evaluator call."""
import torch
import torch.nn.functional as F

import utils


class Geometry:

  @classmethod
  def initialize(cls, imside: int, device) -> None:
    cls.imside = imside
    side = int(imside / 8)               # output grid: twice the correlation grid
    cls.upsample_size = [side, side]
    cls.spatial_side = side
    # The official code resizes every feature map to a hard-coded 15x15 (= 240 / 16); the stand-in derives
    # it from the image size unless it imitates the official limits.
    cls.corr_side = 15 if utils.standin_variant() == "official_limits" else imside // 16
    line = torch.linspace(-1, 1, side).to(device)
    cls.grid_x = line.repeat(side).view(1, 1, -1)                 # x of cell y*side + x
    cls.grid_y = line.repeat_interleave(side).view(1, 1, -1)      # y of cell y*side + x
    cls.x = torch.arange(side, dtype=torch.float32, device=device)
    cls.y = torch.arange(side, dtype=torch.float32, device=device)
    cls.grid = torch.stack([cls.grid_x.view(side, side), cls.grid_y.view(side, side)], dim=-1)  # [y, x, (x, y)]

  @classmethod
  def normalize_kps(cls, kps: torch.Tensor) -> torch.Tensor:
    half = cls.imside // 2
    return torch.where(kps != -2, (kps - half) / half, kps)

  @classmethod
  def unnormalize_kps(cls, kps: torch.Tensor) -> torch.Tensor:
    half = cls.imside // 2
    return torch.where(kps != -2, kps * half + half, kps)

  @classmethod
  def attentive_indexing(cls, kps: torch.Tensor, thres: float = 0.1) -> torch.Tensor:
    """Soft sampler: kps [N, 2] normalised (x, y) -> weights [N, side, side], each row summing to ~1."""
    dist = ((cls.grid.unsqueeze(0) - kps.view(-1, 1, 1, 2)) ** 2).sum(dim=-1)
    weight = (thres - (dist + 1e-5).sqrt()).clamp(min=0).flatten(1)
    weight = weight / (weight.sum(dim=1, keepdim=True) + 1e-5)
    return weight.view(-1, cls.spatial_side, cls.spatial_side)

  @classmethod
  def apply_gaussian_kernel(cls, corr: torch.Tensor, sigma: float = 10) -> torch.Tensor:
    """Multiplies each source row by a Gaussian (in cells) centred on its argmax target cell."""
    side = cls.spatial_side
    centre = corr.argmax(dim=2)
    dy = cls.y.view(1, 1, side, 1) - (centre // side).unsqueeze(-1).unsqueeze(-1)
    dx = cls.x.view(1, 1, 1, side) - (centre % side).unsqueeze(-1).unsqueeze(-1)
    kernel = torch.exp(-(dx ** 2 + dy ** 2) / (2 * sigma ** 2))
    return (kernel.flatten(2) * corr)

  @classmethod
  def transfer_kps_diff(cls, confidence_ts, src_kps, n_pts, normalized, is_train=False):
    """Soft-argmax flow then soft sampling at the source keypoints: [B, 2, K] normalised, pads -2."""
    thres = 0.1 if is_train or utils.standin_variant() == "perturb_keypoints" else 0.05
    if not normalized:
      src_kps = cls.normalize_kps(src_kps)
    pdf = F.softmax(cls.apply_gaussian_kernel(confidence_ts), dim=2)
    flow = torch.stack([(pdf * cls.grid_x).sum(dim=2), (pdf * cls.grid_y).sum(dim=2)], dim=-1)  # [B, S, 2]
    out = []
    for flow_b, kps_b, n in zip(flow, src_kps, n_pts):
      n = int(n)
      weights = cls.attentive_indexing(kps_b[:, :n].t(), thres).flatten(1)        # [n, S]
      pred = (weights @ flow_b).t()                                                # [2, n]
      pads = torch.full((2, kps_b.shape[1] - n), -2.0, dtype=pred.dtype)
      out.append(torch.cat([pred, pads], dim=1))
    return torch.stack(out)

  @staticmethod
  def interpolate4d(tensor4d: torch.Tensor, size) -> torch.Tensor:
    """[B, h1, w1, h2, w2] -> [B, S, S, S, S]: bilinear (align_corners) over (h1, w1), then over (h2, w2)."""
    b, h1, w1, h2, w2 = tensor4d.shape
    x = tensor4d.reshape(b, h1, w1, h2 * w2).permute(0, 3, 1, 2)
    x = F.interpolate(x, size, mode="bilinear", align_corners=True)               # [B, h2 w2, S, S]
    x = x.reshape(b, h2, w2, size[0] * size[1]).permute(0, 3, 1, 2)
    x = F.interpolate(x, size, mode="bilinear", align_corners=True)               # [B, S S, S, S]
    return x.reshape(b, size[0], size[1], size[0], size[1])

  @classmethod
  def cosine_similarity(cls, src_feats, trg_feats):
    """One [B, 1, s, s, s, s] correlation per tap pair: normalise, resize to s x s, dot products."""
    side = cls.corr_side
    align = utils.standin_variant() != "perturb_correlation"
    out = []
    for src, trg in zip(src_feats, trg_feats):
      src = F.interpolate(utils.l2normalize(src, dim=1), side, mode="bilinear", align_corners=align)
      trg = F.interpolate(utils.l2normalize(trg, dim=1), side, mode="bilinear", align_corners=align)
      b = src.shape[0]
      corr = torch.einsum("bcs,bct->bst", src.flatten(2), trg.flatten(2))
      out.append(corr.reshape(b, 1, side, side, side, side))
    return out
