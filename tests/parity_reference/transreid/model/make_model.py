"""TransReID's model builders as the official model/make_model.py defines them: `make_model(cfg, num_class,
camera_num, view_num)` builds `build_transformer` (one branch) or, with MODEL.JPM, `build_transformer_local`
(global branch b1, jigsaw branch b2 shared by four patch groups, five BNNecks and classifiers) around a
backbone taken from the module's factory table. Like the official code the neck width is the literal 768
(384 for DeiT-S without JPM). Written for the parity tests; the ResNet and metric-learning heads are left out."""
import copy
import os

import torch
import torch.nn as nn

from .backbones.vit_pytorch import (deit_small_patch16_224_TransReID, vit_base_patch16_224_TransReID,
                                    vit_small_patch16_224_TransReID)


def _variant():
  return os.environ.get("JAXMATCH_PARITY_STANDIN", "")


def shuffle_unit(features, shift, group, begin=1):
  """Rotates the patch tokens left by shift - 1 (the slice starts at token `shift` of the cls-prefixed
  sequence), pads with token -2 when they do not split into `group` rows, then interleaves the rows."""
  b, d = features.size(0), features.size(-1)
  start = begin - 1 + shift + (1 if _variant() == "perturb_shift" else 0)
  x = torch.cat([features[:, start:], features[:, begin:start]], dim=1)
  if x.size(1) % group:
    x = torch.cat([x, x[:, -2:-1]], dim=1)
  return x.view(b, group, -1, d).transpose(1, 2).contiguous().view(b, -1, d)


def weights_init_kaiming(m):
  if m.__class__.__name__.find("BatchNorm") != -1 and m.affine:
    nn.init.constant_(m.weight, 1.0)
    nn.init.constant_(m.bias, 0.0)


def weights_init_classifier(m):
  if m.__class__.__name__.find("Linear") != -1:
    nn.init.normal_(m.weight, std=0.001)


def _neck(width):
  bn = nn.BatchNorm1d(width)
  bn.bias.requires_grad_(False)
  bn.apply(weights_init_kaiming)
  return bn


def _classifier(width, num_classes):
  fc = nn.Linear(width, num_classes, bias=False)
  fc.apply(weights_init_classifier)
  return fc


def _side_counts(cfg, camera_num, view_num):
  return (camera_num if cfg.MODEL.SIE_CAMERA else 0), (view_num if cfg.MODEL.SIE_VIEW else 0)


class build_transformer(nn.Module):
  def __init__(self, num_classes, camera_num, view_num, cfg, factory):
    super().__init__()
    self.neck_feat = cfg.TEST.NECK_FEAT
    self.in_planes = 768
    camera_num, view_num = _side_counts(cfg, camera_num, view_num)
    self.base = factory[cfg.MODEL.TRANSFORMER_TYPE](
        img_size=cfg.INPUT.SIZE_TRAIN, sie_xishu=cfg.MODEL.SIE_COE, camera=camera_num, view=view_num,
        stride_size=cfg.MODEL.STRIDE_SIZE, drop_path_rate=cfg.MODEL.DROP_PATH, drop_rate=cfg.MODEL.DROP_OUT,
        attn_drop_rate=cfg.MODEL.ATT_DROP_RATE)
    if cfg.MODEL.TRANSFORMER_TYPE == "deit_small_patch16_224_TransReID":
      self.in_planes = 384
    self.num_classes = num_classes
    self.classifier = _classifier(self.in_planes, num_classes)
    self.bottleneck = _neck(self.in_planes)

  def forward(self, x, label=None, cam_label=None, view_label=None):
    global_feat = self.base(x, cam_label=cam_label, view_label=view_label)
    feat = self.bottleneck(global_feat)
    if self.training:
      return self.classifier(feat), global_feat
    return feat if self.neck_feat == "after" else global_feat


class build_transformer_local(nn.Module):
  def __init__(self, num_classes, camera_num, view_num, cfg, factory, rearrange):
    super().__init__()
    self.neck_feat = cfg.TEST.NECK_FEAT
    self.in_planes = 768
    camera_num, view_num = _side_counts(cfg, camera_num, view_num)
    self.base = factory[cfg.MODEL.TRANSFORMER_TYPE](
        img_size=cfg.INPUT.SIZE_TRAIN, sie_xishu=cfg.MODEL.SIE_COE, local_feature=cfg.MODEL.JPM, camera=camera_num,
        view=view_num, stride_size=cfg.MODEL.STRIDE_SIZE, drop_path_rate=cfg.MODEL.DROP_PATH)
    last = nn.Sequential(self.base.blocks[-1], self.base.norm)
    self.b1 = copy.deepcopy(last)
    self.b2 = copy.deepcopy(last)
    self.num_classes = num_classes
    self.classifier = _classifier(self.in_planes, num_classes)
    for k in range(1, 5):
      setattr(self, f"classifier_{k}", _classifier(self.in_planes, num_classes))
    self.bottleneck = _neck(self.in_planes)
    for k in range(1, 5):
      setattr(self, f"bottleneck_{k}", _neck(self.in_planes))
    self.shuffle_groups = cfg.MODEL.SHUFFLE_GROUP
    self.shift_num = cfg.MODEL.SHIFT_NUM
    self.divide_length = cfg.MODEL.DEVIDE_LENGTH
    self.rearrange = rearrange

  def forward(self, x, label=None, cam_label=None, view_label=None):
    features = self.base(x, cam_label=cam_label, view_label=view_label)
    global_feat = self.b1(features)[:, 0]
    length = (features.size(1) - 1) // self.divide_length
    token = features[:, 0:1]
    x = shuffle_unit(features, self.shift_num, self.shuffle_groups) if self.rearrange else features[:, 1:]
    local = [self.b2(torch.cat((token, x[:, k * length:(k + 1) * length]), dim=1))[:, 0] for k in range(4)]
    feat = self.bottleneck(global_feat)
    local_bn = [getattr(self, f"bottleneck_{k + 1}")(f) for k, f in enumerate(local)]
    if self.training:
      scores = [self.classifier(feat)] + [getattr(self, f"classifier_{k + 1}")(f) for k, f in enumerate(local_bn)]
      return scores, [global_feat] + local
    divisor = 4.04 if _variant() == "perturb_local_divisor" else 4
    first, parts = (feat, local_bn) if self.neck_feat == "after" else (global_feat, local)
    return torch.cat([first] + [f / divisor for f in parts], dim=1)


__factory_T_type = {
    "vit_base_patch16_224_TransReID": vit_base_patch16_224_TransReID,
    "deit_base_patch16_224_TransReID": vit_base_patch16_224_TransReID,
    "vit_small_patch16_224_TransReID": vit_small_patch16_224_TransReID,
    "deit_small_patch16_224_TransReID": deit_small_patch16_224_TransReID,
}


def make_model(cfg, num_class, camera_num, view_num):
  if cfg.MODEL.NAME != "transformer":
    raise NotImplementedError("the stand-in builds the transformer models only")
  if cfg.MODEL.JPM:
    return build_transformer_local(num_class, camera_num, view_num, cfg, __factory_T_type,
                                   rearrange=cfg.MODEL.RE_ARRANGE)
  return build_transformer(num_class, camera_num, view_num, cfg, __factory_T_type)
