"""VeRi-776 layout reader: vehicle id, camera and (optionally) viewpoint per image.

Images are named `<vehicle>_c<camera>_<frame>_<n>.jpg` (e.g. `0002_c002_00030600_0.jpg`: vehicle 2,
camera 2); splits 'train' (image_train/), 'query' (image_query/), 'gallery' (image_test/). Ids keep
the dataset's numbers (cameras 1..20; TransReID subtracts one later, so does our input pipeline).

Viewpoints are not part of the VeRi release. TransReID reads them from two extra files,
`keypoint_train.txt` and `keypoint_test.txt` (the VeRi key-point/orientation annotations), one line
per image: the image path first, its orientation class (0..7) last. As there, an image is looked up
by file name in the train file first, then in the test file, and images found in neither are left
out (TransReID drops them; SIE needs a view for every image). Without the two files every viewid is
NO_VIEW (-1) and a warning says so.
"""
from __future__ import annotations

import pathlib
import re
import warnings

from input_pipeline.errors import DatasetLayoutError
from input_pipeline.reid.records import NO_VIEW, ReidRecord

FOLDERS = {'train': 'image_train', 'query': 'image_query', 'gallery': 'image_test'}
KEYPOINT_FILES = ('keypoint_train.txt', 'keypoint_test.txt')
EXPECTED_LAYOUT = """\
VeRi/  (the folder or its parent)
  image_train/<vehicle>_c<camera>_<frame>_<n>.jpg   e.g. 0002_c002_00030600_0.jpg
  image_query/   (same naming)
  image_test/    (same naming; the gallery)
  keypoint_train.txt, keypoint_test.txt    optional, here or in keypoint_dir: one line per image,
                                           '<image path> ... <orientation 0-7>'"""
_NAME = re.compile(r'^(-?\d+)_c(\d+)')


def _layout_error(root, problems: list[str]) -> DatasetLayoutError:
  listed = '\n'.join(f'  - {p}' for p in problems)
  return DatasetLayoutError(f'{root} is not a VeRi-776 folder as distributed.\n'
                            f'Expected layout:\n{EXPECTED_LAYOUT}\nProblems:\n{listed}')


def _resolve_root(root) -> pathlib.Path:
  root = pathlib.Path(root).expanduser()
  if not (root / FOLDERS['train']).is_dir():
    for child in ('VeRi', 'VeRi-776', 'VeRi776'):
      if (root / child / FOLDERS['train']).is_dir():
        return root / child
  return root


def parse_veri_name(name: str) -> tuple[int, int]:
  """'0002_c002_00030600_0.jpg' -> (vehicle 2, camera 2)."""
  match = _NAME.match(name)
  if not match:
    raise ValueError(f"image name {name!r} is not '<vehicle>_c<camera>_<frame>_<n>.jpg'")
  return int(match.group(1)), int(match.group(2))


def read_view_file(path: pathlib.Path) -> dict[str, int]:
  """File name -> orientation class, from one keypoint_*.txt."""
  views = {}
  for number, line in enumerate(path.read_text().splitlines(), start=1):
    fields = line.split()
    if not fields:
      continue
    try:
      views[pathlib.PurePosixPath(fields[0].replace('\\', '/')).name] = int(fields[-1])
    except ValueError:
      raise DatasetLayoutError(f'{path}:{number}: expected the image path first and an integer '
                               f'orientation last, got {line.strip()!r}') from None
  return views


def _view_maps(root: pathlib.Path, keypoint_dir) -> list[dict[str, int]] | None:
  """[train map, test map], or None when neither file exists."""
  folder = pathlib.Path(keypoint_dir).expanduser() if keypoint_dir is not None else root
  paths = [folder / name for name in KEYPOINT_FILES]
  present = [p.is_file() for p in paths]
  if not any(present):
    if keypoint_dir is not None:
      raise _layout_error(root, [f'keypoint_dir {folder} has neither of {KEYPOINT_FILES}'])
    return None
  if not all(present):
    missing = [p.name for p, ok in zip(paths, present) if not ok]
    raise _layout_error(root, [f'{folder} has only one viewpoint file; missing {missing}'])
  return [read_view_file(p) for p in paths]


def _folder_records(root: pathlib.Path, folder: str, problems: list[str]) -> list[ReidRecord]:
  # Dot files (e.g. macOS '._*' archive residue) are not images of the dataset.
  files = sorted(p for p in (root / folder).iterdir()
                 if p.suffix.lower() == '.jpg' and not p.name.startswith('.'))
  if not files:
    problems.append(f'{folder}/ has no .jpg images')
  records, bad = [], []
  for path in files:
    try:
      pid, camid = parse_veri_name(path.name)
    except ValueError:
      bad.append(path.name)
      continue
    records.append(ReidRecord(path=str(path), name=f'{folder}/{path.name}', pid=pid, camid=camid))
  if bad:
    problems.append(f'{folder}/ has {len(bad)} names not like 0002_c002_00030600_0.jpg, '
                    f'e.g. {bad[:3]}')
  return records


def _with_views(records: list[ReidRecord], maps: list[dict[str, int]]) -> tuple[list, int]:
  kept, dropped = [], 0
  for record in records:
    file_name = record.name.rsplit('/', 1)[-1]
    view = next((m[file_name] for m in maps if file_name in m), None)
    if view is None:
      dropped += 1
      continue
    kept.append(ReidRecord(record.path, record.name, record.pid, record.camid, view))
  return kept, dropped


def read_veri776(root, keypoint_dir=None) -> dict[str, list[ReidRecord]]:
  """VeRi-776 splits 'train', 'query', 'gallery' (viewpoints as described in the module docstring)."""
  root = _resolve_root(root)
  missing = [f'missing folder {f}/' for f in FOLDERS.values() if not (root / f).is_dir()]
  if missing:
    raise _layout_error(root, missing)
  problems: list[str] = []
  splits = {split: _folder_records(root, folder, problems) for split, folder in FOLDERS.items()}
  if problems:
    raise _layout_error(root, problems)
  maps = _view_maps(root, keypoint_dir)
  if maps is None:
    warnings.warn(f'VeRi-776 at {root}: no {" / ".join(KEYPOINT_FILES)}; viewid is {NO_VIEW} for '
                  'every image (pass keypoint_dir to use viewpoints)', stacklevel=2)
    return splits
  for split, records in splits.items():
    splits[split], dropped = _with_views(records, maps)
    if dropped:
      warnings.warn(f'VeRi-776 {split}: {dropped} of {len(records)} images have no viewpoint '
                    'annotation and are left out, as TransReID does', stacklevel=2)
    if not splits[split]:
      raise _layout_error(root, [f'no {split} image has a viewpoint in {KEYPOINT_FILES}'])
  return splits
