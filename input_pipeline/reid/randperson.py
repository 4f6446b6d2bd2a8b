"""Layout reader for the RandPerson subset (Wang et al. 2020), the synthetic set TransMatcher trains on.

The released subset is one flat folder of crops (8,000 identities, 132,145 images) named
`<pid>_s<scene>_c<cam>_f<frame>.jpg`: person, scene (0..10), camera within that scene, frame. The
dataset's README writes the scene and camera fields the other way round (`000000_c00_s00_f000264.jpg`),
so the fields are found by their letter, not by position. There is no query/gallery: the reader
returns one 'train' split.

Cameras are numbered per scene in the file names. The stored camid is the global camera index
(0..18) that the QAConv/TransMatcher loader uses: the scene's first camera plus the camera within the
scene, the 11 scenes having 2, 2, 2, 2, 1, 1, 2, 1, 1, 1 and 4 cameras. Pids are the raw six-digit
numbers. Record names are paths relative to the folder that was passed.
"""
from __future__ import annotations

import pathlib
import re

from input_pipeline.reid.market1501 import image_files, layout_error
from input_pipeline.reid.records import ReidRecord

SCENE_FIRST_CAMERA = (0, 2, 4, 6, 8, 9, 10, 12, 13, 14, 15)
NUM_CAMERAS = 19
FOLDER = 'randperson_subset'
EXPECTED_LAYOUT = """\
randperson_subset/                     (this folder or one containing it; the archive extracts to
                                        randperson_subset/randperson_subset/, both levels accepted)
  <pid>_s<scene>_c<cam>_f<frame>.jpg   e.g. 000000_s00_c00_f000264.jpg (field order s/c may swap)"""
_FIELD = re.compile(r'^([a-z])(\d+)$')


def _cameras_in_scene(scene: int) -> int:
  following = SCENE_FIRST_CAMERA[scene + 1] if scene + 1 < len(SCENE_FIRST_CAMERA) else NUM_CAMERAS
  return following - SCENE_FIRST_CAMERA[scene]


def parse_randperson_name(name: str) -> tuple[int, int] | None:
  """'<pid>_s<scene>_c<cam>_f<frame>.jpg' (s/c in either order) -> (pid, global camera) or None."""
  stem = pathlib.PurePosixPath(name).stem
  pid, *rest = stem.split('_')
  fields = {}
  for part in rest:
    match = _FIELD.match(part)
    if match is None:
      return None
    fields[match.group(1)] = int(match.group(2))
  if not pid.isdigit() or set(fields) != {'s', 'c', 'f'}:
    return None
  scene, cam = fields['s'], fields['c']
  if scene >= len(SCENE_FIRST_CAMERA) or cam >= _cameras_in_scene(scene):
    return None
  return int(pid), SCENE_FIRST_CAMERA[scene] + cam


def _image_folder(root: pathlib.Path) -> pathlib.Path:
  """Descends through up to two nested `randperson_subset` folders (as the archive extracts)."""
  for _ in range(2):
    if (root / FOLDER).is_dir() and not any(image_files(root)):
      root = root / FOLDER
  return root


def read_randperson(root) -> dict[str, list[ReidRecord]]:
  """RandPerson subset: a single 'train' split with global camera ids (see module docstring)."""
  given = pathlib.Path(root).expanduser()
  if not given.is_dir():
    raise layout_error('RandPerson subset', given, EXPECTED_LAYOUT, ['folder does not exist'])
  folder = _image_folder(given)
  records, bad = [], []
  for path in image_files(folder):
    parsed = parse_randperson_name(path.name)
    if parsed is None:
      bad.append(path.name)
      continue
    records.append(ReidRecord(str(path), path.relative_to(given).as_posix(), *parsed))
  problems = []
  if bad:
    problems.append(f'{len(bad)} file(s) not named <pid>_s<scene>_c<cam>_f<frame>.jpg with a '
                    f'scene below {len(SCENE_FIRST_CAMERA)} and a camera that scene has: {bad[:5]}')
  elif not records:
    problems.append(f'no images in {folder}')
  if problems:
    raise layout_error('RandPerson subset', given, EXPECTED_LAYOUT, problems)
  return {'train': records}
