"""grain pipeline of image pairs for semantic correspondence (the sources of `spair_sources`,
`pfpascal_sources` or `pfwillow_sources`: an 'images' split plus pair splits, see
input_pipeline/correspondence/pair_builder.py).

Per pair, as the official loaders: both images resized (or, when augmenting, photometrically changed and
cropped around the keypoints) to S x S; keypoints and boxes rescaled into that frame; records with
flip = 1 (PF-PASCAL trn) mirrored afterwards, x -> S - x as the official code does (not S - 1 - x).
No PCK threshold is computed here: evaluation derives it from trg_kps, kp_mask and trg_bbox.

Sampling: for training, every epoch is a fresh permutation of the split (seeded by (seed, epoch)),
cut into global batches with the remainder dropped, repeated `num_epochs` times or forever. For
evaluation the split is read once in order and the last global batch is padded with rows whose
'valid' is False, so every batch has the same shape. Sharding over processes: `batch_size` is the
number of rows each process gets (the host-local batch); the global batch has batch_size *
shard_count rows and process `shard_index` receives its contiguous rows [shard_index * batch_size,
(shard_index + 1) * batch_size). Every process therefore sees the same number of batches (no
multi-host step-count mismatch) and the union of the shards is exactly the batch a single process
with batch_size * shard_count rows would get, augmentation included. Augmentation randomness comes from
a NumPy generator keyed by (seed, epoch, position in the global epoch order), i.e. per record and
independent of the process count and of worker scheduling, so any iterator state resumes exactly.
Batches are built inside the MapDataset (one element = one batch) before any worker prefetch.
"""
from __future__ import annotations

from collections.abc import Mapping

import grain
import numpy as np

from input_pipeline.errors import DatasetLayoutError
from input_pipeline.correspondence.geometry import (random_keypoint_crop, resize_image, scale_bbox,
                                                    scale_points)
from input_pipeline.images import IMAGENET_MEAN, IMAGENET_STD, decode_image
from input_pipeline.iterators import make_iterator  # noqa: F401  (the checkpointable iterator)
from input_pipeline.correspondence.photometric import photometric_augment

_MEAN = np.asarray(IMAGENET_MEAN, np.float32)
_STD = np.asarray(IMAGENET_STD, np.float32)
FLAG_KEYS = ('vpvar', 'scvar', 'trncn', 'occln')


def normalize_image(img: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] -> float32 ImageNet-normalised (ToTensor then Normalize)."""
  return np.ascontiguousarray((img.astype(np.float32) / 255.0 - _MEAN) / _STD)


def steps_per_epoch(num_records: int, batch_size: int, train: bool) -> int:
  """Global batches per pass: floor for training (drop remainder), ceil for evaluation (padded)."""
  return num_records // batch_size if train else -(-num_records // batch_size)


class PairPlan(grain.transforms.MapWithIndex):
  """Index in this process's stream -> {'record', 'epoch', 'position'}; record -1 means padding."""

  def __init__(self, num_records: int, batch_size: int, shard_index: int, shard_count: int,
               train: bool, seed: int):
    self._n, self._train, self._seed = num_records, train, seed
    self._local, self._batch = batch_size, batch_size * shard_count
    self._offset = shard_index * batch_size
    self._epoch_len = steps_per_epoch(num_records, self._batch, train) * batch_size
    self._orders: dict[int, np.ndarray] = {}

  def __getstate__(self):
    return {**self.__dict__, '_orders': {}}        # permutations are cheap to recompute

  def __len__(self) -> int:
    return self._epoch_len

  def _order(self, epoch: int) -> np.ndarray:
    order = self._orders.get(epoch)
    if order is None:   # keep only the latest epoch; rebinding (not mutating) is thread-safe
      order = np.random.default_rng([self._seed, epoch]).permutation(self._n)
      self._orders = {epoch: order}
    return order

  def map_with_index(self, index: int, _):
    epoch, local = divmod(index, self._epoch_len)
    step, row = divmod(local, self._local)
    position = step * self._batch + self._offset + row
    if self._train:
      record = int(self._order(epoch)[position])
    else:
      record = position if position < self._n else -1
    return {'record': record, 'epoch': epoch, 'position': position}


class LoadPair(grain.transforms.Map):
  """Plan -> one example: decodes both images, augments or resizes, rescales keypoints and boxes."""

  def __init__(self, pairs, images, *, img_size: int, max_kps: int, augment: bool, seed: int):
    self._pairs, self._images = pairs, images
    self._size, self._max_kps, self._augment, self._seed = img_size, max_kps, augment, seed
    # SPair's difficulty flags exist only where the dataset has them (not in PF-PASCAL/WILLOW).
    self._flags = tuple(k for k in FLAG_KEYS if len(pairs) and k in pairs[0])

  def map(self, plan: Mapping[str, int]) -> dict:
    if plan['record'] < 0:
      return self._padding()
    rec = self._pairs[plan['record']]
    rng = np.random.default_rng([self._seed, plan['epoch'], plan['position']])
    n = len(rec['src_kps'])
    if n > self._max_kps:
      raise ValueError(f"pair {_text(rec['name'])} has {n} keypoints > max_kps={self._max_kps}")
    if self._augment:    # photometric draws for both images first, then both crops
      src_img = photometric_augment(rng, self._image(rec, 'src'))
      trg_img = photometric_augment(rng, self._image(rec, 'trg'))
      src = random_keypoint_crop(rng, src_img, rec['src_kps'], rec['src_bbox'], self._size)
      trg = random_keypoint_crop(rng, trg_img, rec['trg_kps'], rec['trg_bbox'], self._size)
    else:
      src, trg = self._resized(rec, 'src'), self._resized(rec, 'trg')
    if 'flip' in rec and int(rec['flip']):
      src, trg = mirror(src, self._size), mirror(trg, self._size)
    return self._assemble(rec, plan['record'], src, trg)

  def _image(self, rec, side: str) -> np.ndarray:
    row, name = int(rec[f'{side}_image']), _text(rec[f'{side}_name'])
    entry = self._images[row]
    if _text(entry['name']) != name:
      raise DatasetLayoutError(f"images row {row} is {_text(entry['name'])!r}, pair "
                               f"{_text(rec['name'])} expects {name!r}; rebuild the dataset")
    return decode_image(entry['image'], name)

  def _resized(self, rec, side: str):
    """Plain path: PIL bilinear resize; keypoints and box rescaled by S/W, S/H."""
    img = self._image(rec, side)
    wh = (img.shape[1], img.shape[0])
    return (resize_image(img, self._size), scale_points(rec[f'{side}_kps'], wh, self._size),
            scale_bbox(rec[f'{side}_bbox'], wh, self._size))

  def _pad_points(self, points: np.ndarray) -> np.ndarray:
    out = np.zeros((self._max_kps, 2), np.float32)
    out[:len(points)] = points
    return out

  def _assemble(self, rec, index: int, src, trg) -> dict:
    n = len(rec['src_kps'])
    mask = np.arange(self._max_kps) < n
    example = {'src_img': normalize_image(src[0]), 'trg_img': normalize_image(trg[0]),
               'src_kps': self._pad_points(src[1]), 'trg_kps': self._pad_points(trg[1]),
               'kp_mask': mask, 'n_pts': np.int32(n),
               'src_bbox': src[2].astype(np.float32), 'trg_bbox': trg[2].astype(np.float32),
               'category': np.int32(rec['category']), 'pair_index': np.int32(index),
               'valid': np.bool_(True)}
    example.update({k: np.int32(rec[k]) for k in self._flags})
    return example

  def _padding(self) -> dict:
    s, k = self._size, self._max_kps
    example = {'src_img': np.zeros((s, s, 3), np.float32), 'trg_img': np.zeros((s, s, 3), np.float32),
               'src_kps': np.zeros((k, 2), np.float32), 'trg_kps': np.zeros((k, 2), np.float32),
               'kp_mask': np.zeros((k,), bool), 'n_pts': np.int32(0),
               'src_bbox': np.zeros((4,), np.float32), 'trg_bbox': np.zeros((4,), np.float32),
               'category': np.int32(0), 'pair_index': np.int32(-1), 'valid': np.bool_(False)}
    example.update({key: np.int32(0) for key in self._flags})
    return example


def mirror(view, img_size: int):
  """Horizontal flip of (image [S, S, 3], keypoints [n, 2], box [4]) as PF-PASCAL's official flip:
  x -> S - x for keypoints, box (x1, x2) -> (S - x2, S - x1)."""
  img, kps, box = view
  size = np.float32(img_size)
  kps = np.stack([size - kps[:, 0], kps[:, 1]], axis=1).astype(np.float32)
  box = np.array([size - box[2], box[1], size - box[0], box[3]], np.float32)
  return np.ascontiguousarray(img[:, ::-1]), kps, box


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def pair_dataset(sources, split: str, *, img_size: int = 240, batch_size: int, train: bool,
                 augment: bool, seed: int = 0, max_kps: int = 40, shard_index: int = 0,
                 shard_count: int = 1, num_epochs: int | None = None) -> grain.MapDataset:
  """Batched pairs of `sources[split]` (images looked up in `sources['images']`).

  Each element is a dict of numpy arrays with batch_size rows (this process's share, see module doc):
  src_img/trg_img [b, S, S, 3] float32 normalised; src_kps/trg_kps [b, K, 2] float32 (x, y) in the
  S frame, zero where kp_mask [b, K] is False; n_pts, category, pair_index [b] int32 (plus vpvar,
  scvar, trncn, occln where the records have them, i.e. SPair); src_bbox/trg_bbox [b, 4] float32;
  valid [b] bool. Evaluation ignores num_epochs (one pass).
  """
  if batch_size < 1 or not 0 <= shard_index < shard_count:
    raise ValueError(f'need batch_size >= 1 (got {batch_size}) and 0 <= shard_index '
                     f'({shard_index}) < shard_count ({shard_count})')
  pairs = sources[split]
  n = len(pairs)
  if steps_per_epoch(n, batch_size * shard_count, train) == 0:
    raise ValueError(f'split {split!r} has {n} pairs, fewer than one global batch of '
                     f'{batch_size * shard_count}')
  plan = PairPlan(n, batch_size, shard_index, shard_count, train, seed)
  ds = grain.MapDataset.range(len(plan))
  ds = ds.repeat(num_epochs) if train else ds
  ds = ds.map_with_index(plan).map(
      LoadPair(pairs, sources['images'], img_size=img_size, max_kps=max_kps, augment=augment,
               seed=seed))
  return ds.batch(batch_size, drop_remainder=True)
