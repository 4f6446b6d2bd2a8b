"""Stand-in for the official `backbone.py`: one ResNet whose every conv has groups=2 and doubled widths.

Feeding [source RGB | target RGB] (6 channels) runs two independent ResNets side by side; every feature
map holds the source in its first channel half and the target in the second. Parameter names follow
torchvision (conv1, bn1, layerK.i.convJ / bnJ / downsample.{0,1}, fc), each tensor doubled on dim 0.
"""
import torch
from torch import nn

__all__ = ["Backbone", "Bottleneck", "resnet50", "resnet101"]

STREAMS = 2


def grouped_conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, kernel_size=kernel, stride=stride, padding=kernel // 2, groups=STREAMS, bias=False)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
    super().__init__()
    self.conv1 = grouped_conv(inplanes, planes, 1)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = grouped_conv(planes, planes, 3, stride)  # torchvision v1.5: stride on the 3x3
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = grouped_conv(planes, planes * self.expansion, 1)
    self.bn3 = nn.BatchNorm2d(planes * self.expansion)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    shortcut = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.relu(y + shortcut)


class Backbone(nn.Module):
  def __init__(self, block, layers):
    super().__init__()
    width = 64 * STREAMS
    self.conv1 = nn.Conv2d(3 * STREAMS, width, kernel_size=7, stride=2, padding=3, groups=STREAMS, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    self.inplanes = width
    for i, (blocks, stride) in enumerate(zip(layers, (1, 2, 2, 2))):
      setattr(self, f"layer{i + 1}", self._stage(block, width * 2 ** i, blocks, stride))
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(512 * block.expansion, 1000)  # single-stream and never called, as in the official
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)

  def _stage(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
    out = planes * block.expansion
    downsample = None
    if stride != 1 or self.inplanes != out:
      downsample = nn.Sequential(grouped_conv(self.inplanes, out, 1, stride), nn.BatchNorm2d(out))
    layers = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = out
    layers += [block(out, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _build(layers, pretrained: bool) -> Backbone:
  if pretrained:
    # The official code downloads torchvision's ImageNet file here; the tests have no network, and the
    # parity tool must never take this path.
    raise RuntimeError("stand-in backbone: pretrained=True would download ImageNet weights")
  return Backbone(Bottleneck, layers)


def resnet50(pretrained: bool = False, **kwargs) -> Backbone:
  return _build([3, 4, 6, 3], pretrained)


def resnet101(pretrained: bool = False, **kwargs) -> Backbone:
  return _build([3, 4, 23, 3], pretrained)
