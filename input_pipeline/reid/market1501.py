"""Layout readers for Market-1501 and the datasets that share its naming (DukeMTMC-reID, Occluded-Duke).

All three are distributed as three flat folders of crops whose file names carry the identity and the
camera, `<pid>_c<cam>...jpg`:

* Market-1501 `0002_c1s1_000451_03.jpg`: pid 0002, camera 1, sequence 1, frame 000451, box 03.
  `bounding_box_test` also holds pid `0000` (distractors: kept in the gallery as negatives) and pid
  `-1` (junk boxes: dropped everywhere, as the official evaluation ignores them).
* DukeMTMC-reID and Occluded-Duke `0005_c2_f0046985.jpg`: pid, camera, frame.

Camera ids are stored as the names give them (Market c1..c6 -> 1..6, Duke c1..c8 -> 1..8); models
that want 0-based cameras subtract 1 themselves. Every record's `name` is its path relative to the
dataset folder, e.g. 'bounding_box_test/0001_c1s1_001051_00.jpg'. The helpers `find_dataset_root`,
`image_files` and `layout_error` are shared with the other re-ID readers.
"""
from __future__ import annotations

import pathlib
import re

from input_pipeline.errors import DatasetLayoutError
from input_pipeline.reid.records import ReidRecord

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
JUNK_PID = -1
DISTRACTOR_PID = 0
# Folder names accepted for Market's optional 500k distractor set: `images/` is where torchreid and
# fast-reid expect the extracted distractors, `distractors_500k/` is the archive's own name.
DISTRACTOR_FOLDERS = ('images', 'distractors_500k')
SPLIT_FOLDERS = {'train': 'bounding_box_train', 'query': 'query', 'gallery': 'bounding_box_test'}

_PID_CAM = re.compile(r'^(-?\d+)_c(\d+)')
# Full names, so that e.g. a Duke folder passed as Market fails instead of being read silently.
MARKET_NAME = re.compile(r'^-?\d+_c\d+s\d+_\d+_\d+\.jpg$')
DUKE_NAME = re.compile(r'^-?\d+_c\d+_f\d+\.jpg$')
_CAM_ONLY = re.compile(r'_c(\d+)')

MARKET_LAYOUT = """\
Market-1501-v15.09.15/                 (this folder, or a folder that contains it)
  bounding_box_train/<pid>_c<cam>s<seq>_<frame>_<box>.jpg   training crops (751 ids)
  bounding_box_test/<pid>_c<cam>s<seq>_<frame>_<box>.jpg    gallery (750 ids, pid 0000 distractors,
                                                            pid -1 junk)
  query/<pid>_c<cam>s<seq>_<frame>_<box>.jpg                queries (750 ids)
  images/ or distractors_500k/*.jpg      optional 500k distractor set (read with distractors_500k=True)
  gt_bbox/, gt_query/                    not read"""
DUKE_LAYOUT = """\
DukeMTMC-reID/                         (this folder, or a folder that contains it)
  bounding_box_train/<pid>_c<cam>_f<frame>.jpg   training crops (702 ids)
  bounding_box_test/<pid>_c<cam>_f<frame>.jpg    gallery (702 test ids + 408 distractor ids)
  query/<pid>_c<cam>_f<frame>.jpg                queries (702 ids)"""
OCCLUDED_DUKE_LAYOUT = """\
Occluded_Duke/                         (this folder, or a folder that contains it)
  bounding_box_train/<pid>_c<cam>_f<frame>.jpg   training crops (702 ids)
  bounding_box_test/<pid>_c<cam>_f<frame>.jpg    gallery
  query/<pid>_c<cam>_f<frame>.jpg                occluded queries (519 ids)"""


# ----------------------------------------------------------------------------- shared helpers

def layout_error(dataset: str, root, expected: str, problems: list[str]) -> DatasetLayoutError:
  """The error every re-ID reader raises: what was expected, then each concrete problem."""
  listed = '\n'.join(f'  - {p}' for p in problems)
  return DatasetLayoutError(f'{root} is not a {dataset} folder as distributed.\n'
                            f'Expected layout:\n{expected}\nProblems:\n{listed}')


def find_dataset_root(root, required: tuple[str, ...]) -> pathlib.Path:
  """`root` itself when it has every `required` entry, else its only subfolder that has them.

  Users pass either the extracted dataset folder or the folder they extracted the archive into;
  both are accepted. Returns `root` unchanged when neither matches, so the caller lists what is
  missing relative to what the user passed.
  """
  root = pathlib.Path(root).expanduser()
  if all((root / r).exists() for r in required) or not root.is_dir():
    return root
  matches = [d for d in sorted(root.iterdir())
             if d.is_dir() and all((d / r).exists() for r in required)]
  return matches[0] if len(matches) == 1 else root


def image_files(folder: pathlib.Path) -> list[pathlib.Path]:
  """Image files directly inside `folder`, sorted by name (other files such as Thumbs.db skipped)."""
  return sorted(p for p in folder.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith('.'))


def parse_pid_cam(name: str) -> tuple[int, int] | None:
  """'<pid>_c<cam>...' -> (pid, cam), or None when the name does not follow that pattern."""
  match = _PID_CAM.match(name)
  return (int(match.group(1)), int(match.group(2))) if match else None


# ----------------------------------------------------------------------------- readers

def _read_folder(root: pathlib.Path, folder: str, pattern: re.Pattern, example: str,
                 problems: list[str]) -> list[ReidRecord]:
  records, bad = [], []
  for path in image_files(root / folder):
    parsed = parse_pid_cam(path.name)
    if parsed is None or not pattern.match(path.name):
      bad.append(path.name)
      continue
    pid, cam = parsed
    if pid != JUNK_PID:
      records.append(ReidRecord(str(path), f'{folder}/{path.name}', pid, cam))
  if bad:
    problems.append(f'{folder}/ has {len(bad)} file(s) not named like {example}: {bad[:5]}')
  elif not records:
    problems.append(f'{folder}/ has no images')
  return records


def _read_distractors(root: pathlib.Path) -> list[ReidRecord]:
  """The 500k set: every image is a distractor (pid 0); the camera is kept when the name has one."""
  folder = next(f for f in DISTRACTOR_FOLDERS if (root / f).is_dir())
  records = []
  for path in image_files(root / folder):
    cam = _CAM_ONLY.search(path.name)
    records.append(ReidRecord(str(path), f'{folder}/{path.name}', DISTRACTOR_PID,
                              int(cam.group(1)) if cam else -1))
  return records


def _read_market_style(root, dataset: str, expected: str, pattern: re.Pattern, example: str,
                       distractors: bool = False) -> dict:
  root = find_dataset_root(root, tuple(SPLIT_FOLDERS.values()))
  problems = [f'missing folder {f}/' for f in SPLIT_FOLDERS.values() if not (root / f).is_dir()]
  if distractors and not any((root / f).is_dir() for f in DISTRACTOR_FOLDERS):
    problems.append(f'distractors_500k=True but none of {[f + "/" for f in DISTRACTOR_FOLDERS]} '
                    'exists')
  if problems:
    raise layout_error(dataset, root, expected, problems)
  splits = {split: _read_folder(root, folder, pattern, example, problems)
            for split, folder in SPLIT_FOLDERS.items()}
  if distractors:
    splits['distractors_500k'] = _read_distractors(root)
    if not splits['distractors_500k']:
      problems.append('the distractor folder has no images')
  if problems:
    raise layout_error(dataset, root, expected, problems)
  return splits


def read_market1501(root, distractors_500k: bool = False) -> dict[str, list[ReidRecord]]:
  """Market-1501: splits 'train', 'query', 'gallery' (+ 'distractors_500k' when asked for).

  Junk boxes (pid -1) are dropped; distractors (pid 0) stay in the gallery. The 500k distractors
  are a separate split so that evaluating with them is an explicit choice (gallery + distractors).
  """
  return _read_market_style(root, 'Market-1501', MARKET_LAYOUT, MARKET_NAME,
                            '0002_c1s1_000451_03.jpg', distractors_500k)


def read_dukemtmc(root) -> dict[str, list[ReidRecord]]:
  """DukeMTMC-reID as distributed (withdrawn by its owners; read only if a user has a copy)."""
  return _read_market_style(root, 'DukeMTMC-reID', DUKE_LAYOUT, DUKE_NAME,
                            '0005_c2_f0046985.jpg')


def read_occluded_duke(root) -> dict[str, list[ReidRecord]]:
  """Occluded-Duke (Miao et al. 2019): DukeMTMC-reID images re-split around occluded queries."""
  return _read_market_style(root, 'Occluded-Duke', OCCLUDED_DUKE_LAYOUT, DUKE_NAME,
                            '0005_c2_f0046985.jpg')
