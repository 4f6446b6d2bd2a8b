"""torchvision ResNet state_dict <-> jaxmatch.models.resnet variables, both directions.

One table (`*_tensors`) lists every tensor of a stem, a bottleneck or a whole ResNet with its torch key,
torch shape and flax location; the converters in both directions walk that table, so they cannot
disagree. Conv weights go OIHW <-> HWIO, the fc weight [out, in] <-> [in, out], BN weight/bias ->
params scale/bias and running_mean/var -> batch_stats mean/var.

`split=(i, n)` reads the i-th of n equal slices along dim 0 of every tensor. The official TransforMatcher
checkpoint is one ResNet-101 with groups=2 everywhere and every tensor doubled on dim 0: split=(0, 2) is
its source stream, split=(1, 2) its target stream. Keys not taken here (num_batches_tracked, an unused
fc) are left for the caller's KeyAccountant to ignore with a reason.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import numpy as np

from jaxmatch.convert.keys import (KeyAccountant, assert_tree_matches, get_path, set_path,
                                   torch_conv_to_flax, torch_linear_to_flax)
from jaxmatch.convert.torch_io import to_numpy_tree
from jaxmatch.models.resnet import EXPANSION, RESNET_STAGES, STEM_FEATURES, stage_features

NUM_BATCHES_REASON = ("BatchNorm num_batches_tracked only matters for momentum=None (cumulative "
                      "average); torchvision uses momentum 0.1")
FC_REASON = "classification head not requested (include_fc=False)"

_BN_LEAVES = (("weight", "params", "scale"), ("bias", "params", "bias"),
              ("running_mean", "batch_stats", "mean"), ("running_var", "batch_stats", "var"))


class Tensor(NamedTuple):
  torch_key: str
  torch_shape: tuple[int, ...]
  collection: str         # 'params' | 'batch_stats'
  path: tuple[str, ...]   # location inside the collection


def _conv(key: str, path: tuple, out_c: int, in_c: int, k: int) -> list[Tensor]:
  return [Tensor(f"{key}.weight", (out_c, in_c, k, k), "params", path + ("kernel",))]


def _bn(key: str, path: tuple, c: int) -> list[Tensor]:
  return [Tensor(f"{key}.{t}", (c,), coll, path + (leaf,)) for t, coll, leaf in _BN_LEAVES]


def stem_tensors(prefix: str = "", path: tuple = ()) -> list[Tensor]:
  """torchvision conv1/bn1 <-> Stem's 'conv1'/'bn1'."""
  return (_conv(f"{prefix}conv1", path + ("conv1",), STEM_FEATURES, 3, 7)
          + _bn(f"{prefix}bn1", path + ("bn1",), STEM_FEATURES))


def bottleneck_tensors(prefix: str, in_features: int, features: int, downsample: bool,
                       path: tuple = ()) -> list[Tensor]:
  """torchvision layerS.I.* (prefix 'layerS.I.') <-> a Bottleneck's variables."""
  out = features * EXPANSION
  t = (_conv(f"{prefix}conv1", path + ("conv1",), features, in_features, 1)
       + _bn(f"{prefix}bn1", path + ("bn1",), features)
       + _conv(f"{prefix}conv2", path + ("conv2",), features, features, 3)
       + _bn(f"{prefix}bn2", path + ("bn2",), features)
       + _conv(f"{prefix}conv3", path + ("conv3",), out, features, 1)
       + _bn(f"{prefix}bn3", path + ("bn3",), out))
  if downsample:
    t += (_conv(f"{prefix}downsample.0", path + ("downsample_conv",), out, in_features, 1)
          + _bn(f"{prefix}downsample.1", path + ("downsample_bn",), out))
  return t


def resnet_tensors(stage_sizes: Sequence[int], prefix: str = "", num_stages: int = 4,
                   include_fc: bool = False, num_classes: int = 1000) -> list[Tensor]:
  """Every tensor of a torchvision bottleneck ResNet, in state_dict order."""
  tensors = stem_tensors(prefix, ("stem",))
  in_features = STEM_FEATURES
  for s in range(1, num_stages + 1):
    for i in range(stage_sizes[s - 1]):
      tensors += bottleneck_tensors(f"{prefix}layer{s}.{i}.", in_features, stage_features(s),
                                    downsample=(i == 0), path=(f"layer{s}_{i}",))
      in_features = stage_features(s) * EXPANSION
  if include_fc:
    tensors += [Tensor(f"{prefix}fc.weight", (num_classes, in_features), "params", ("fc", "kernel")),
                Tensor(f"{prefix}fc.bias", (num_classes,), "params", ("fc", "bias"))]
  return tensors


def _to_flax_layout(t: Tensor, value: np.ndarray) -> np.ndarray:
  if len(t.torch_shape) == 4:
    return torch_conv_to_flax(value)
  if len(t.torch_shape) == 2:
    return torch_linear_to_flax(value)
  return value


def _to_torch_layout(t: Tensor, value: np.ndarray) -> np.ndarray:
  value = np.asarray(value)
  if len(t.torch_shape) == 4:
    return np.transpose(value, (3, 2, 0, 1))  # HWIO -> OIHW
  if len(t.torch_shape) == 2:
    return np.transpose(value, (1, 0))
  return value


def _take(acc: KeyAccountant, t: Tensor, split: tuple[int, int] | None):
  if split is None:
    return acc.take(t.torch_key, t.torch_shape)
  i, n = split
  rows = t.torch_shape[0]
  value = acc.take(t.torch_key, (n * rows,) + t.torch_shape[1:])
  return None if value is None else value[i * rows:(i + 1) * rows]


def tensors_from_torch(acc: KeyAccountant, tensors: Sequence[Tensor],
                       split: tuple[int, int] | None = None) -> dict:
  """Reads `tensors` from the accountant's state_dict into {'params': ..., 'batch_stats': ...} (numpy).

  Missing or mis-shaped keys are recorded by the accountant (its finish() raises) and left out here.
  """
  variables: dict = {"params": {}, "batch_stats": {}}
  for t in tensors:
    value = _take(acc, t, split)
    if value is not None:
      set_path(variables, (t.collection,) + t.path, _to_flax_layout(t, value))
  return variables


def stem_from_torch(acc: KeyAccountant, prefix: str = "", split: tuple[int, int] | None = None) -> dict:
  """Variables of a standalone Stem from torchvision-named conv1/bn1 keys."""
  return tensors_from_torch(acc, stem_tensors(prefix), split)


def bottleneck_from_torch(acc: KeyAccountant, prefix: str, in_features: int, features: int,
                          downsample: bool, split: tuple[int, int] | None = None) -> dict:
  """Variables of a standalone Bottleneck from keys '<prefix>conv1.weight', ... (prefix e.g. 'layer2.0.')."""
  return tensors_from_torch(acc, bottleneck_tensors(prefix, in_features, features, downsample), split)


def resnet_from_torch(acc: KeyAccountant, stage_sizes, prefix: str = "",
                      split: tuple[int, int] | None = None, num_stages: int = 4,
                      include_fc: bool = False) -> dict:
  """Variables of `ResNet(stage_sizes, num_stages=...)`; the caller ignores leftover keys and finishes."""
  num_classes = 1000
  fc_shape = acc.shape_of(f"{prefix}fc.bias")
  if include_fc and fc_shape:
    num_classes = int(fc_shape[0])  # the head size comes from the file
  tensors = resnet_tensors(stage_sizes, prefix, num_stages, include_fc, num_classes)
  return tensors_from_torch(acc, tensors, split)


def load_torchvision_resnet(state_dict: Mapping, depth: int, include_fc: bool = True) -> dict:
  """A whole torchvision resnet{50,101,152} state_dict -> variables; raises CheckpointMismatchError."""
  if depth not in RESNET_STAGES:
    raise ValueError(f"unsupported ResNet depth {depth}; choose one of {sorted(RESNET_STAGES)}")
  acc = KeyAccountant(to_numpy_tree(state_dict), f"torchvision resnet{depth} state_dict")
  variables = resnet_from_torch(acc, RESNET_STAGES[depth], include_fc=include_fc)
  acc.ignore_matching(lambda k: k.endswith("num_batches_tracked"), NUM_BATCHES_REASON)
  if not include_fc:
    acc.ignore_matching(lambda k: k.startswith("fc."), FC_REASON)
  acc.finish()
  return variables


def _leaf_paths(tree: Mapping, prefix: tuple = ()) -> list[tuple]:
  paths = []
  for k, v in tree.items():
    paths += _leaf_paths(v, prefix + (k,)) if isinstance(v, Mapping) else [prefix + (k,)]
  return paths


def tensors_to_torch(variables: Mapping, tensors: Sequence[Tensor]) -> dict[str, np.ndarray]:
  """Inverse of tensors_from_torch for the collections present (e.g. gradients: only 'params').

  Raises ValueError if `variables` holds a leaf the table does not know (a model/table mismatch).
  """
  sd, known = {}, set()
  for t in tensors:
    location = (t.collection,) + t.path
    value = get_path(variables, location, None)
    if value is not None:
      sd[t.torch_key] = _to_torch_layout(t, value)
      known.add(location)
  stray = [".".join(p) for p in _leaf_paths(variables) if p not in known]
  if stray:
    raise ValueError(f"variables not in the torchvision layout: {stray[:20]}")
  return sd


def resnet_to_torch(variables: Mapping, stage_sizes, prefix: str = "") -> dict[str, np.ndarray]:
  """ResNet variables (or gradients shaped like them) -> torchvision names and layouts (numpy)."""
  collections = [c for c in ("params", "batch_stats") if c in variables]
  num_stages = sum(1 for s in range(1, len(stage_sizes) + 1)
                   if any(get_path(variables, (c, f"layer{s}_0"), None) is not None for c in collections))
  fc_bias = get_path(variables, ("params", "fc", "bias"), None)
  num_classes = 1000 if fc_bias is None else int(np.shape(fc_bias)[0])
  tensors = resnet_tensors(stage_sizes, prefix, num_stages, fc_bias is not None, num_classes)
  return tensors_to_torch(variables, tensors)


def backbones_from_torchvision(state_dict: Mapping, depth: int, variables: Mapping) -> dict:
  """`variables` with a torchvision resnet{depth} file in every top-level module named '*backbone' (the
  model's backbone may stop before layer4: only the part it has is taken); fc is never used."""
  tv = load_torchvision_resnet(state_dict, depth, include_fc=False)
  out = {c: dict(tree) for c, tree in variables.items()}
  names = [k for k in out["params"] if k.endswith("backbone")]
  if not names:
    raise ValueError("the model has no backbone to put the torchvision ResNet into")
  for name in names:
    for collection in ("params", "batch_stats"):
      sub = _take_matching(out[collection][name], tv[collection])
      assert_tree_matches(out[collection][name], sub, what=f"torchvision {collection} for {name}")
      out[collection][name] = sub
  return out


def _take_matching(expected: Mapping, source: Mapping) -> dict:
  """The part of `source` under `expected`'s keys."""
  return {k: (_take_matching(v, source[k]) if isinstance(v, Mapping) else source[k])
          for k, v in expected.items() if k in source}
