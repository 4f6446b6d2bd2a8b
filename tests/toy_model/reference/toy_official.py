"""The toy model's 'official' PyTorch code, as a user's clone of an official repository would hold it."""
import torch
from torch import nn

CAMERA_SCALE = 1.0  # a constant the perturbed copies in the tests change by 1%


class ToyReid(nn.Module):
  def __init__(self, num_classes: int, num_cameras: int, dim: int = 16):
    super().__init__()
    self.embed = nn.Linear(6, dim)
    self.camera = nn.Embedding(num_cameras, dim)
    self.classifier = nn.Linear(dim, num_classes, bias=False)

  def forward(self, images, camera):  # images [B, 3, H, W]
    pooled = torch.cat([images.mean(dim=(2, 3)), images.std(dim=(2, 3), unbiased=False)], dim=1)
    feat = self.embed(pooled) + CAMERA_SCALE * self.camera(camera)
    return feat, self.classifier(feat)
