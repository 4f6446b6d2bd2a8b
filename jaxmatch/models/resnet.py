"""Bottleneck ResNet (50/101/152) with torchvision's layout, NHWC, usable as a feature backbone.

torchvision v1.5: the stride of a block sits on its 3x3 convolution (and on the 1x1 downsample).
Every padding is the explicit symmetric padding PyTorch uses, the stem max-pool pads with -inf, and the
initialisation is torchvision's, so converted weights reproduce torchvision outputs and fresh models
start from the same distribution. Variable names mirror torchvision so conversion is mechanical:

  'stem'        -> {'conv1', 'bn1'}                       (torchvision conv1.*, bn1.*)
  'layer{s}_{i}' -> {'conv1','bn1','conv2','bn2','conv3','bn3','downsample_conv','downsample_bn'}
                                                          (torchvision layer{s}.{i}.*, downsample.0/.1)
  'fc'                                                    (torchvision fc.*; only when num_classes)

`dtype` is the compute dtype; parameters and BatchNorm statistics stay float32. The forward returns the
stem output and every bottleneck output (after its final ReLU) so callers can tap any block.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxmatch.models.layers import (TorchBatchNorm, conv_kaiming_fan_out, linear_torch_bias,
                                    linear_torch_kernel)

RESNET_STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STEM_FEATURES = 64
EXPANSION = 4


def _conv(features: int, kernel: int, strides: int, dtype, name: str) -> nn.Conv:
  pad = (kernel - 1) // 2  # PyTorch padding for 1x1 (0), 3x3 (1), 7x7 (3)
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=((pad, pad), (pad, pad)),
                 use_bias=False, dtype=dtype, param_dtype=jnp.float32, kernel_init=conv_kaiming_fan_out,
                 name=name)


def stage_features(stage: int) -> int:
  """The 'planes' of stage 1..4 (64, 128, 256, 512); the stage outputs 4x as many channels."""
  return STEM_FEATURES * 2 ** (stage - 1)


class Stem(nn.Module):
  """conv1 7x7/2 pad 3 (no bias) -> bn1 -> ReLU -> max-pool 3/2 pad 1 (padding never wins: -inf).

  relu=False is the re-ID strong-baseline code's stem (BoT / NFormer), whose ReLU line is commented out.
  """
  dtype: Any = jnp.float32
  relu: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = _conv(STEM_FEATURES, 7, 2, self.dtype, "conv1")(x)
    x = TorchBatchNorm(dtype=self.dtype, name="bn1")(x, train=train)
    if self.relu:
      x = nn.relu(x)
    # reduce_window pads with the init value of max, -inf, as torch's max_pool2d does.
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class Bottleneck(nn.Module):
  """torchvision Bottleneck: 1x1 -> 3x3 (stride) -> 1x1 (4*features), residual, ReLU."""
  features: int  # torchvision 'planes'
  strides: int = 1
  downsample: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    out_features = self.features * EXPANSION
    y = _conv(self.features, 1, 1, self.dtype, "conv1")(x)
    y = nn.relu(TorchBatchNorm(dtype=self.dtype, name="bn1")(y, train=train))
    y = _conv(self.features, 3, self.strides, self.dtype, "conv2")(y)
    y = nn.relu(TorchBatchNorm(dtype=self.dtype, name="bn2")(y, train=train))
    y = _conv(out_features, 1, 1, self.dtype, "conv3")(y)
    y = TorchBatchNorm(dtype=self.dtype, name="bn3")(y, train=train)
    if self.downsample:
      x = _conv(out_features, 1, self.strides, self.dtype, "downsample_conv")(x)
      x = TorchBatchNorm(dtype=self.dtype, name="downsample_bn")(x, train=train)
    return nn.relu(y + x)


class ResNet(nn.Module):
  """Bottleneck ResNet; returns {'stem', 'blocks': per stage, per block outputs, 'logits' if num_classes}."""
  stage_sizes: Sequence[int]
  last_stride: int = 2  # re-ID baselines use 1 (stride of layer4)
  num_stages: int = 4   # run only stages 1..num_stages
  num_classes: int | None = None  # torchvision fc head after global average pooling
  dtype: Any = jnp.float32
  stem_relu: bool = True  # False: the BoT / NFormer re-ID encoders' stem

  @nn.compact
  def __call__(self, x, train: bool = False) -> dict:
    self._check_config()
    x = Stem(dtype=self.dtype, relu=self.stem_relu, name="stem")(x, train=train)
    out = {"stem": x}
    stages = []
    for s in range(1, self.num_stages + 1):
      blocks = []
      for i in range(self.stage_sizes[s - 1]):
        x = Bottleneck(stage_features(s), strides=self._block_stride(s, i), downsample=(i == 0),
                       dtype=self.dtype, name=f"layer{s}_{i}")(x, train=train)
        blocks.append(x)
      stages.append(tuple(blocks))
    out["blocks"] = tuple(stages)
    if self.num_classes is not None:
      out["logits"] = self._head(x)
    return out

  def _block_stride(self, stage: int, index: int) -> int:
    if index > 0 or stage == 1:
      return 1
    return self.last_stride if stage == 4 else 2

  def _head(self, x):
    # Pool in float32: a mean over many bf16 values loses precision.
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
    fan_in = pooled.shape[-1]
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=linear_torch_kernel, bias_init=linear_torch_bias(fan_in), name="fc")(pooled)

  def _check_config(self):
    if not 1 <= self.num_stages <= len(self.stage_sizes):
      raise ValueError(f"num_stages={self.num_stages} needs 1..{len(self.stage_sizes)} stages "
                       f"(stage_sizes={tuple(self.stage_sizes)})")
    if self.num_classes is not None and self.num_stages != 4:
      raise ValueError("the classification head (num_classes) needs all 4 stages")


def resnet(depth: int, **kw) -> ResNet:
  """ResNet-50/101/152 with torchvision's stage sizes; keyword arguments go to ResNet."""
  if depth not in RESNET_STAGES:
    raise ValueError(f"unsupported ResNet depth {depth}; choose one of {sorted(RESNET_STAGES)}")
  return ResNet(stage_sizes=RESNET_STAGES[depth], **kw)
