"""Parts the re-identification recipes share: the ResNet-50 strong baseline (BoT) model, data, optimiser
and evaluation sections, and its CPU schedule for the embedded data. Recipes load this file with
`jaxmatch.config_utils.load_common(__file__, "common_reid")`."""
from __future__ import annotations

import ml_collections


def _model() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name="baseline", depth=50, stage_sizes=(), last_stride=1, stem_relu=False, embed_dim=0,
      num_classes=0,  # set from the training identities
      neck="bnneck", neck_feat="after", feat_norm=True, id_loss_weight=1.0, label_smoothing=0.1,
      triplet_weight=1.0, triplet_margin=0.3, triplet_squared=False, triplet_normalize=False,
      center_loss_weight=5e-4, pretrained="", dtype="float32"))


def _data() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      dataset="market1501", data_dir="", img_size=(256, 128), num_instances=4, num_workers=2,
      folders=ml_collections.ConfigDict({"market1501": "", "msmt17": "", "dukemtmc_reid": "",
                                         "cuhk03_np": "", "cuhk03_classic": "", "veri776": "",
                                         "vehicleid": "", "randperson": "", "occluded_duke": "",
                                         "own_folder": ""}),
      options=ml_collections.ConfigDict({"msmt17": {"version": "V1", "msmt17all": False}}),
      augment=ml_collections.ConfigDict(dict(
          interpolation="bilinear", test_interpolation="bilinear", flip_prob=0.5, pad=10, rotation=0.0,
          erasing="bot", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))),
      embedded=ml_collections.ConfigDict(dict(num_train_ids=100, num_test_ids=50, images_per_id=8, seed=0)),
      # Set by the task from the training split: the cameras / views a side-information table covers.
      camera_ids=(), view_ids=()))


def _train() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      batch_size=64, num_epochs=120, num_steps=-1, seed=0,
      optimizer="adam", b1=0.9, b2=0.999, eps=1e-8, weight_decay=5e-4, momentum=0.0, grad_clip_norm=0.0,
      schedule="warmup_multistep_epochs", warmup_steps=0, warmup_epochs=10, warmup_factor=0.01,
      milestones=(40, 70), gamma=0.1,
      learning_rates=ml_collections.ConfigDict(dict(backbone=3.5e-4, head=3.5e-4, centers=0.5)),
      group_overrides=ml_collections.ConfigDict(dict(centers=dict(
          optimizer="sgd", momentum=0.0, weight_decay=0.0, schedule="constant", grad_scale=1.0 / 5e-4))),
      log_every=50, checkpoint_every=2000, keep_checkpoints=2, eval_every=0,
      eval_before_training=False, num_devices=0, tensorboard=True))


def _eval() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      datasets=(), batch_size=128, metric="euclidean", flip_average=False,
      rerank=False, k1=20, k2=6, lambda_value=0.3, rerank_float16_like_transreid=False,
      num_ranked_figures=6, figure_top_k=10,
      # Models with side information (TransReID's SIE): images whose camera / view is not in the training
      # table are an error, unless these name the table row to embed them with (>= 0).
      fixed_camera=-1, fixed_view=-1))


def _embedded_schedule() -> ml_collections.ConfigDict:
  """Applied (and printed) only when the training data is the embedded synthetic set."""
  return ml_collections.ConfigDict(dict(
      data=dict(img_size=(128, 64), augment=dict(erasing="none")),
      train=dict(batch_size=32, num_epochs=12, warmup_epochs=1, milestones=(), log_every=5,
                 checkpoint_every=100, learning_rates=dict(backbone=1e-3, head=1e-3)),
      eval=dict(batch_size=64)))


def baseline_config(dataset: str) -> ml_collections.ConfigDict:
  """The strong-baseline recipe trained on `dataset` (evaluated on it unless eval.datasets says more)."""
  config = ml_collections.ConfigDict()
  config.task = "reid"
  config.model = _model()
  config.data = _data()
  config.data.dataset = dataset
  config.train = _train()
  config.eval = _eval()
  config.embedded_schedule = _embedded_schedule()
  return config
