"""A TransReID config at the stand-in test size (`python -m jaxmatch.parity --config` with
tests/parity_reference/transreid): 32-d, 3 blocks, 64x48 images (15 patches at stride 12, so the JPM pads),
camera x view SIE."""
import ml_collections


def get_config():
  return ml_collections.ConfigDict(dict(
      model=dict(name="transreid", backbone="vit_base", embed_dim=32, depth=3, num_heads=4, mlp_ratio=4.0, stride=12,
                 drop_path=0.1, sie_camera=True, sie_view=True, sie_coe=3.0, num_cameras=3, num_views=2, jpm=True,
                 rearrange=True, shift_num=5, shuffle_groups=2, num_parts=4, num_classes=8, neck_feat="before",
                 local_at_inference=True, feature_form="code", label_smoothing=0.0, triplet_margin=0.0,
                 id_loss_weight=1.0, triplet_weight=1.0, dtype="float32"),
      data=dict(img_size=(64, 48))))
