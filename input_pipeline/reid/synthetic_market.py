"""A small synthetic Market-1501, written in the real layout: the embedded default of the re-ID recipes.

Each identity is a person-like figure whose identity lives in its appearance: skin and hair (colour,
long or short), a top (colour, second colour, pattern: plain, horizontal or vertical stripes, two-tone,
chest logo; short or long sleeves), a bottom (colour; trousers, shorts or skirt), shoes, an optional
backpack or shoulder bag, and a body build. Colours come from a shared clothing palette with a small
per-identity jitter, so many identities share their main colours and differ in the details.

Every image is taken by one of six cameras, each with its own background (wall and floor colours,
horizon height, clutter), colour cast and brightness, and its own typical scale of the person. Per
image the pose changes (leg stride, arm swing, front or back view, which hides the logo and shows the
backpack, mirrored left/right), the figure shifts and rescales, a random box occludes part of it
(another pedestrian or an object), and blur, noise and the JPEG quality vary. Identity therefore has
to be recognised across illumination, scale, pose, background and occlusion changes: a fixed colour
descriptor finds it far above chance but not always, and a trained network does better.

The folder follows Market-1501 exactly: `bounding_box_train/`, `bounding_box_test/` and `query/` of
128x64 JPEGs named `<pid>_c<cam>s<seq>_<frame>_<box>.jpg`; training and test identities are disjoint
(pids drawn from 1..1501); every identity appears in at least two cameras; each query has gallery
images of its identity from another camera; `bounding_box_test/` also holds distractors (pid 0000:
strangers and badly placed boxes) and junk boxes (pid -1: background and fragments). Deterministic
for a seed. Default size: 100 training ids x ~8 images, 50 test ids, about 1,600 images, ~2.5 MB.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HEIGHT, WIDTH = 128, 64
NUM_CAMERAS = 6
MARKET_FOLDER = 'Market-1501-v15.09.15'
_PALETTE = np.array([
    (20, 20, 22), (235, 235, 230), (128, 128, 128), (30, 40, 90), (40, 90, 190), (130, 170, 220),
    (200, 30, 35), (110, 20, 30), (40, 130, 60), (100, 110, 50), (230, 200, 40), (235, 120, 30),
    (230, 140, 170), (110, 50, 140), (100, 65, 40), (210, 190, 150)], np.float32)
_BOTTOM_COLOURS = (0, 2, 3, 4, 5, 9, 14, 15, 1)      # darker and denim-like palette entries
_SKIN = np.array([(240, 200, 170), (210, 160, 120), (160, 110, 75), (100, 65, 45)], np.float32)
_HAIR = np.array([(15, 12, 10), (70, 45, 25), (200, 170, 100), (150, 150, 150)], np.float32)
_PATTERNS = ('plain', 'hstripes', 'vstripes', 'twotone', 'logo')


@dataclasses.dataclass(frozen=True)
class Identity:
  skin: np.ndarray
  hair: np.ndarray
  long_hair: bool
  top: np.ndarray
  top2: np.ndarray
  pattern: str
  stripe_period: int
  long_sleeves: bool
  bottom: np.ndarray
  bottom_kind: str            # 'trousers' | 'shorts' | 'skirt'
  shoes: np.ndarray
  bag: str                    # 'none' | 'backpack' | 'shoulder'
  bag_colour: np.ndarray
  build: float                # body width factor


@dataclasses.dataclass(frozen=True)
class Camera:
  wall: np.ndarray
  floor: np.ndarray
  horizon: float              # fraction of the height where the floor starts
  gain: np.ndarray            # per-channel colour cast
  brightness: float
  scale: float                # typical person height / image height


# ----------------------------------------------------------------------------- sampling

def _colour(rng: np.random.Generator, choices, jitter: float = 14.0) -> np.ndarray:
  """A palette entry among `choices`, jittered so identities sharing an entry still differ."""
  base = _PALETTE[int(rng.choice(choices))]
  return np.clip(base + rng.normal(0, jitter, 3), 0, 255).astype(np.float32)


def sample_identity(rng: np.random.Generator) -> Identity:
  all_colours = np.arange(len(_PALETTE))
  return Identity(
      skin=_SKIN[rng.integers(len(_SKIN))] + rng.normal(0, 6, 3).astype(np.float32),
      hair=_HAIR[rng.integers(len(_HAIR))].copy(), long_hair=bool(rng.random() < 0.35),
      top=_colour(rng, all_colours), top2=_colour(rng, all_colours),
      pattern=str(rng.choice(_PATTERNS, p=(0.36, 0.16, 0.12, 0.18, 0.18))),
      stripe_period=int(rng.integers(5, 10)), long_sleeves=bool(rng.random() < 0.5),
      bottom=_colour(rng, _BOTTOM_COLOURS),
      bottom_kind=str(rng.choice(('trousers', 'shorts', 'skirt'), p=(0.65, 0.2, 0.15))),
      shoes=_colour(rng, (0, 1, 2, 14), 10),
      bag=str(rng.choice(('none', 'backpack', 'shoulder'), p=(0.5, 0.3, 0.2))),
      bag_colour=_colour(rng, all_colours), build=float(rng.uniform(0.85, 1.2)))


def sample_cameras(rng: np.random.Generator) -> list[Camera]:
  cameras = []
  for _ in range(NUM_CAMERAS):
    gain = rng.uniform(0.8, 1.2, 3).astype(np.float32)
    cameras.append(Camera(
        wall=rng.uniform(40, 220, 3).astype(np.float32),
        floor=rng.uniform(50, 200, 3).astype(np.float32),
        horizon=float(rng.uniform(0.45, 0.8)), gain=gain / gain.mean() * rng.uniform(0.9, 1.1),
        brightness=float(rng.uniform(0.8, 1.15)), scale=float(rng.uniform(0.78, 0.95))))
  return cameras


# ----------------------------------------------------------------------------- drawing

def _background(rng: np.random.Generator, cam: Camera) -> Image.Image:
  img = np.empty((HEIGHT, WIDTH, 3), np.float32)
  horizon = int(HEIGHT * (cam.horizon + rng.uniform(-0.05, 0.05)))
  img[:horizon] = cam.wall + rng.normal(0, 8, 3)
  img[horizon:] = cam.floor + rng.normal(0, 8, 3)
  img *= np.linspace(0.85, 1.1, HEIGHT, dtype=np.float32)[:, None, None]   # light falls off
  for _ in range(int(rng.integers(1, 4))):        # clutter: doors, windows, signs, bins
    x0, y0 = int(rng.integers(-10, WIDTH)), int(rng.integers(0, HEIGHT - 10))
    w, h = int(rng.integers(6, 30)), int(rng.integers(6, 50))
    img[y0:y0 + h, max(x0, 0):x0 + w] = rng.uniform(30, 230, 3)
  return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _rgb(colour) -> tuple[int, int, int]:
  return tuple(int(v) for v in np.clip(colour, 0, 255))


def _top_texture(person: Identity, front: bool, box: tuple) -> Image.Image:
  """The top's pattern as an image (only its torso region is pasted)."""
  x0, y0, x1, y1 = box
  ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
  tex = np.broadcast_to(person.top, (HEIGHT, WIDTH, 3)).copy()
  step = person.stripe_period // 2 + 1
  if person.pattern == 'hstripes':
    tex[((ys - int(y0)) // step) % 2 == 1] = person.top2
  elif person.pattern == 'vstripes':
    tex[((xs - int(x0)) // step) % 2 == 1] = person.top2
  elif person.pattern == 'twotone':
    tex[ys > (y0 + y1) / 2] = person.top2
  elif person.pattern == 'logo' and front:
    cx, cy, r = (x0 + x1) / 2, y0 + (y1 - y0) * 0.35, max(2.0, (x1 - x0) * 0.2)
    tex[(np.abs(xs - cx) < r) & (np.abs(ys - cy) < r)] = person.top2
  return Image.fromarray(np.clip(tex, 0, 255).astype(np.uint8))


def _draw_person(canvas: Image.Image, rng: np.random.Generator, person: Identity, cam: Camera,
                 front: bool, scale_jitter: float = 0.06, shift: float = 5.0) -> None:
  """Draws the figure back to front: legs and bottom, shoes, arms, torso, bag, head and hair."""
  draw = ImageDraw.Draw(canvas)
  height = HEIGHT * float(np.clip(cam.scale + rng.normal(0, scale_jitter), 0.6, 1.05))
  top = HEIGHT - height + rng.uniform(-3, 2) - (HEIGHT - height) * rng.uniform(0.2, 0.8)
  cx = WIDTH / 2 + rng.normal(0, shift)
  y = lambda f: top + f * height                     # body-relative height -> pixel row
  half = 0.13 * height * person.build                # half shoulder width
  stride, swing = rng.uniform(0.0, 0.09) * height, rng.uniform(-0.05, 0.05) * height
  skin = _rgb(person.skin)

  leg_colour = _rgb(person.bottom) if person.bottom_kind == 'trousers' else skin
  for sign in (-1, 1):
    draw.polygon([(cx + sign * 0.02 * height, y(0.5)), (cx + sign * half * 0.75, y(0.5)),
                  (cx + sign * (half * 0.6 + stride), y(0.95)),
                  (cx + sign * (0.03 * height + stride), y(0.95))], fill=leg_colour)
  if person.bottom_kind == 'shorts':
    draw.rectangle([cx - half * 0.8, y(0.5), cx + half * 0.8, y(0.66)], fill=_rgb(person.bottom))
  elif person.bottom_kind == 'skirt':
    draw.polygon([(cx - half * 0.8, y(0.5)), (cx + half * 0.8, y(0.5)), (cx + half * 1.15, y(0.72)),
                  (cx - half * 1.15, y(0.72))], fill=_rgb(person.bottom))
  for sign in (-1, 1):
    fx = cx + sign * (half * 0.45 + stride)
    draw.ellipse([fx - 0.05 * height, y(0.94), fx + 0.05 * height, y(1.0)],
                 fill=_rgb(person.shoes))

  sleeve_end = 0.55 if person.long_sleeves else 0.3
  for sign in (-1, 1):                               # arms, sleeves in the top colour
    ax = cx + sign * half
    hand = (ax + sign * 0.02 * height + swing * sign, y(0.55))
    draw.line([(ax, y(0.17)), hand], fill=skin, width=max(2, int(0.06 * height)))
    elbow = (ax + (hand[0] - ax) * sleeve_end / 0.55, y(sleeve_end))
    draw.line([(ax, y(0.17)), elbow], fill=_rgb(person.top), width=max(2, int(0.065 * height)))
  torso = Image.new('L', (WIDTH, HEIGHT), 0)
  ImageDraw.Draw(torso).polygon([(cx - half, y(0.16)), (cx + half, y(0.16)),
                                 (cx + half * 0.8, y(0.53)), (cx - half * 0.8, y(0.53))], fill=255)
  canvas.paste(_top_texture(person, front, (cx - half, y(0.15), cx + half, y(0.53))), mask=torso)

  bag = _rgb(person.bag_colour)
  if person.bag == 'backpack' and front:             # from the front only the straps show
    for sign in (-1, 1):
      sx = cx + sign * half * 0.55
      draw.line([(sx, y(0.16)), (sx, y(0.4))], fill=bag, width=max(1, int(0.025 * height)))
  elif person.bag == 'backpack':
    draw.rectangle([cx - half * 0.7, y(0.19), cx + half * 0.7, y(0.45)], fill=bag)
  elif person.bag == 'shoulder':
    bx = cx + (1 if front else -1) * half * 1.05     # the same shoulder seen from either side
    draw.rectangle([bx - 0.06 * height, y(0.42), bx + 0.06 * height, y(0.55)], fill=bag)

  head_r, hy, hair = 0.065 * height, y(0.08), _rgb(person.hair)
  if person.long_hair:
    draw.rectangle([cx - head_r * 1.1, hy, cx + head_r * 1.1, y(0.27)], fill=hair)
  draw.ellipse([cx - head_r * 0.85, hy - head_r, cx + head_r * 0.85, hy + head_r], fill=skin)
  hair_bottom = hy + head_r if not front else hy - head_r * 0.2
  draw.chord([cx - head_r * 0.95, hy - head_r * 1.15, cx + head_r * 0.95,
              2 * hair_bottom - hy + head_r * 0.15], 180, 360, fill=hair)
  if not front:                                      # seen from behind, hair hides the face
    draw.rectangle([cx - head_r * 0.9, hy - head_r * 0.2, cx + head_r * 0.9, hy + head_r * 0.7],
                   fill=hair)


def _occlude(canvas: Image.Image, rng: np.random.Generator) -> None:
  """A box in front of the person: a passer-by's body or an object, covering 10-40% of the crop."""
  w = int(rng.integers(WIDTH // 4, WIDTH * 3 // 4))
  h = int(rng.integers(HEIGHT // 6, HEIGHT // 2))
  x0 = int(rng.integers(-w // 3, WIDTH - w // 2))
  y0 = int(rng.integers(HEIGHT // 6, HEIGHT - h // 2))
  ImageDraw.Draw(canvas).rectangle([x0, y0, x0 + w - 1, y0 + h - 1],
                                   fill=_rgb(rng.uniform(20, 235, 3)))


def _finish(canvas: Image.Image, rng: np.random.Generator, cam: Camera) -> Image.Image:
  """Camera colour cast and brightness, per-image light change, blur and sensor noise."""
  gain = cam.gain * cam.brightness * rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3)
  img = np.asarray(canvas, np.float32) * gain.astype(np.float32)
  img += rng.standard_normal(img.shape, dtype=np.float32) * 4.0
  pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
  radius = float(rng.choice((0.0, 0.5, 0.8)))
  return pil.filter(ImageFilter.GaussianBlur(radius)) if radius else pil


def render_person(rng: np.random.Generator, person: Identity, cam: Camera,
                  occlusion: float = 0.3) -> Image.Image:
  """One crop of `person` seen by `cam`, occluded with probability `occlusion`."""
  canvas = _background(rng, cam)
  _draw_person(canvas, rng, person, cam, front=bool(rng.random() < 0.5))
  if rng.random() < occlusion:
    _occlude(canvas, rng)
  pil = _finish(canvas, rng, cam)
  return pil.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else pil


def _render_bad_box(rng: np.random.Generator, cam: Camera, person: Identity | None) -> Image.Image:
  """A detector's mistake: background only, or a fragment of a person (shifted far, too large)."""
  canvas = _background(rng, cam)
  if person is not None:
    big = dataclasses.replace(cam, scale=float(rng.uniform(1.2, 1.8)))
    _draw_person(canvas, rng, person, big, bool(rng.random() < 0.5), shift=WIDTH * 0.6)
  return _finish(canvas, rng, cam)


# ----------------------------------------------------------------------------- writing

class _Namer:
  """Market names '<pid>_c<cam>s<seq>_<frame>_<box>.jpg' with frames increasing per camera."""

  def __init__(self, rng: np.random.Generator):
    self._rng = rng
    self._frame = [0] * (NUM_CAMERAS + 1)

  def __call__(self, pid: int, cam: int) -> str:
    self._frame[cam] += int(self._rng.integers(1, 60))
    seq = 1 + self._frame[cam] // 20000
    box = int(self._rng.integers(0, 4))
    pid_text = '-1' if pid < 0 else f'{pid:04d}'
    return f'{pid_text}_c{cam}s{seq}_{self._frame[cam]:06d}_{box:02d}.jpg'


def _save(img: Image.Image, path: pathlib.Path, rng: np.random.Generator) -> None:
  img.save(path, format='JPEG', quality=int(rng.integers(70, 86)))


def _camera_counts(rng: np.random.Generator, total: int) -> dict[int, int]:
  """Spreads `total` images over 2-6 cameras (1-based), each camera getting at least one."""
  n = int(rng.integers(2, min(NUM_CAMERAS, max(total, 2)) + 1))
  cams = sorted(int(c) + 1 for c in rng.choice(NUM_CAMERAS, n, replace=False))
  counts = {c: 1 for c in cams}
  for c in rng.choice(cams, max(total - n, 0)):
    counts[int(c)] += 1
  return counts


def write_synthetic_market(root, num_train_ids: int = 100, num_test_ids: int = 50, seed: int = 0,
                           *, images_per_id: int = 8, num_distractors: int = 100,
                           num_junk: int = 30, occlusion: float = 0.3) -> str:
  """Writes `<root>/Market-1501-v15.09.15` (see module docstring); returns that folder's path.

  Training ids get `images_per_id` +- 2 images each; test ids get 1-2 queries (each from a
  different camera) and `images_per_id` +- 2 gallery images covering all cameras the id was seen in.
  """
  if num_train_ids < 1 or num_test_ids < 1 or images_per_id < 2:
    raise ValueError('need at least one training and one test identity and images_per_id >= 2, '
                     f'got {num_train_ids}, {num_test_ids}, {images_per_id}')
  if num_train_ids + num_test_ids > 1501:
    raise ValueError(f'Market pids run from 1 to 1501: {num_train_ids} + {num_test_ids} ids do not '
                     'fit')
  rng = np.random.default_rng(seed)
  out = pathlib.Path(root) / MARKET_FOLDER
  folders = {name: out / name for name in ('bounding_box_train', 'bounding_box_test', 'query')}
  for folder in folders.values():
    folder.mkdir(parents=True, exist_ok=True)
  cameras = sample_cameras(rng)
  pids = rng.choice(np.arange(1, 1502), num_train_ids + num_test_ids, replace=False)
  train_pids, test_pids = sorted(pids[:num_train_ids]), sorted(pids[num_train_ids:])
  name = _Namer(rng)

  def write(folder: str, pid: int, cam: int, img: Image.Image) -> None:
    _save(img, folders[folder] / name(pid, cam), rng)

  for pid in train_pids:
    person = sample_identity(rng)
    total = images_per_id + int(rng.integers(-2, 3))
    for cam, count in _camera_counts(rng, total).items():
      for _ in range(count):
        write('bounding_box_train', int(pid), cam, render_person(rng, person, cameras[cam - 1],
                                                                 occlusion))
  for pid in test_pids:
    person = sample_identity(rng)
    counts = _camera_counts(rng, images_per_id + int(rng.integers(-2, 3)))
    query_cams = rng.choice(sorted(counts), min(int(rng.integers(1, 3)), len(counts) - 1),
                            replace=False)
    for cam in query_cams:
      write('query', int(pid), int(cam), render_person(rng, person, cameras[cam - 1], occlusion))
    for cam, count in counts.items():
      for _ in range(count):
        write('bounding_box_test', int(pid), cam,
              render_person(rng, person, cameras[cam - 1], occlusion))
  for i in range(num_distractors):           # strangers and badly placed boxes, pid 0000
    cam = int(rng.integers(1, NUM_CAMERAS + 1))
    stranger = sample_identity(rng)
    img = (render_person(rng, stranger, cameras[cam - 1], occlusion) if i % 2 == 0
           else _render_bad_box(rng, cameras[cam - 1], stranger))
    write('bounding_box_test', 0, cam, img)
  for i in range(num_junk):                  # junk, pid -1: background or a fragment
    cam = int(rng.integers(1, NUM_CAMERAS + 1))
    write('bounding_box_test', -1, cam,
          _render_bad_box(rng, cameras[cam - 1], sample_identity(rng) if i % 2 else None))
  return str(out)
