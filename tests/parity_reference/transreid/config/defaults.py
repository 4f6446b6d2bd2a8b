"""The option tree of the official config/defaults.py: the keys and defaults the model and loss read."""
try:
  from yacs.config import CfgNode as CN
except ImportError:  # the stand-in runs without yacs; the official code needs it
  from .cfgnode import CfgNode as CN

_C = CN()

_C.MODEL = CN()
_C.MODEL.DEVICE = "cuda"
_C.MODEL.NAME = "resnet50"
_C.MODEL.LAST_STRIDE = 1
_C.MODEL.PRETRAIN_PATH = ""
_C.MODEL.PRETRAIN_CHOICE = "imagenet"
_C.MODEL.NECK = "bnneck"
_C.MODEL.ID_LOSS_TYPE = "softmax"
_C.MODEL.ID_LOSS_WEIGHT = 1.0
_C.MODEL.TRIPLET_LOSS_WEIGHT = 1.0
_C.MODEL.METRIC_LOSS_TYPE = "triplet"
_C.MODEL.NO_MARGIN = False
_C.MODEL.IF_LABELSMOOTH = "on"
_C.MODEL.COS_LAYER = False
_C.MODEL.DROP_PATH = 0.1
_C.MODEL.DROP_OUT = 0.0
_C.MODEL.ATT_DROP_RATE = 0.0
_C.MODEL.TRANSFORMER_TYPE = "None"
_C.MODEL.STRIDE_SIZE = [16, 16]
_C.MODEL.JPM = False
_C.MODEL.SHIFT_NUM = 5
_C.MODEL.SHUFFLE_GROUP = 2
_C.MODEL.DEVIDE_LENGTH = 4
_C.MODEL.RE_ARRANGE = True
_C.MODEL.SIE_COE = 3.0
_C.MODEL.SIE_CAMERA = False
_C.MODEL.SIE_VIEW = False

_C.INPUT = CN()
_C.INPUT.SIZE_TRAIN = [384, 128]
_C.INPUT.SIZE_TEST = [384, 128]

_C.DATALOADER = CN()
_C.DATALOADER.SAMPLER = "softmax"
_C.DATALOADER.NUM_INSTANCE = 16

_C.SOLVER = CN()
_C.SOLVER.MARGIN = 0.3
_C.SOLVER.COSINE_MARGIN = 0.5
_C.SOLVER.COSINE_SCALE = 30
_C.SOLVER.IMS_PER_BATCH = 64

_C.TEST = CN()
_C.TEST.NECK_FEAT = "after"
_C.TEST.FEAT_NORM = "yes"
