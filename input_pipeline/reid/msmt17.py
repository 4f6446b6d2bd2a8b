"""Layout reader for MSMT17 (Wei et al. 2018), versions V1 and V2, read from its list files.

The images sit in one folder per identity; four list files assign them to subsets, one image per
line as `<pid folder>/<file>.jpg <pid>`. V1 and V2 differ only in folder names (V2 blurs faces):

* 'train' = list_train.txt + list_val.txt (1,041 ids, 32,621 images), as the TransReID and
  TransMatcher code train on MSMT17; 'query' and 'gallery' from their lists (3,060 test ids).
* `msmt17all=True` ("MSMT17all"): every image of all four lists becomes training data in one 'train'
  split (4,101 ids, 126,441 images). Test pids restart at 0 in the list files, so they are shifted
  by (largest training pid + 1) to stay distinct from the training identities.

File names are `<pid>_<index>_<cam>_<date><time>_<frame>_<...>.jpg`; the camera field is 1-based
(01..15) and is stored as written (1..15). Models that want 0-based cameras subtract 1 (the official
loaders do exactly that). Record names are paths relative to the dataset folder, e.g.
'train/0000/0000_000_01_0303morning_0015_0.jpg'.
"""
from __future__ import annotations

import pathlib

from input_pipeline.reid.market1501 import find_dataset_root, layout_error
from input_pipeline.reid.records import ReidRecord

VERSIONS = {'V1': ('train', 'test'), 'V2': ('mask_train_v2', 'mask_test_v2')}
LIST_FOLDERS = {'train': 0, 'val': 0, 'query': 1, 'gallery': 1}   # list -> index into VERSIONS
EXPECTED_LAYOUT = """\
MSMT17_V1/  or  MSMT17_V2/              (this folder, or a folder that contains it)
  train/<pid>/<pid>_<n>_<cam>_<time>_<frame>_<k>.jpg     V1 (V2: mask_train_v2/)
  test/<pid>/<pid>_<n>_<cam>_<time>_<frame>_<k>.jpg      V1 (V2: mask_test_v2/)
  list_train.txt, list_val.txt           lines '<pid>/<file>.jpg <pid>', images under train/
  list_query.txt, list_gallery.txt       lines '<pid>/<file>.jpg <pid>', images under test/"""


def _camera(file_name: str) -> int | None:
  fields = pathlib.PurePosixPath(file_name).name.split('_')
  return int(fields[2]) if len(fields) > 3 and fields[2].isdigit() else None


def _read_list(root: pathlib.Path, list_name: str, folder: str,
               problems: list[str]) -> list[ReidRecord]:
  """Parses list_<list_name>.txt; appends malformed lines and missing images to `problems`."""
  list_path = root / f'list_{list_name}.txt'
  records, malformed, missing = [], [], []
  for number, line in enumerate(list_path.read_text().splitlines(), start=1):
    if not line.strip():
      continue
    parts = line.split()
    cam = _camera(parts[0]) if len(parts) == 2 else None
    if cam is None or not parts[1].lstrip('-').isdigit():
      malformed.append(f'line {number}: {line!r}')
      continue
    path = root / folder / parts[0]
    if not path.is_file():
      missing.append(f'{folder}/{parts[0]}')
      continue
    records.append(ReidRecord(str(path), f'{folder}/{parts[0]}', int(parts[1]), cam))
  if malformed:
    problems.append(f"{list_path.name}: {len(malformed)} line(s) not of the form '<pid>/<file>.jpg "
                    f"<pid>' with a camera field in the file name: {malformed[:3]}")
  if missing:
    problems.append(f'{list_path.name} lists {len(missing)} image(s) that do not exist: '
                    f'{missing[:3]}')
  if not records and not malformed and not missing:
    problems.append(f'{list_path.name} is empty')
  return records


def _shift_pids(records: list[ReidRecord], offset: int) -> list[ReidRecord]:
  return [ReidRecord(r.path, r.name, r.pid + offset, r.camid, r.viewid) for r in records]


def read_msmt17(root, version: str = 'V1', msmt17all: bool = False) -> dict[str, list[ReidRecord]]:
  """MSMT17 `version` ('V1' or 'V2'): 'train' (train+val), 'query', 'gallery'; or with
  `msmt17all=True` a single 'train' split holding every image (test pids shifted)."""
  if version not in VERSIONS:
    raise ValueError(f"MSMT17 version must be one of {sorted(VERSIONS)}, got {version!r}")
  folders = VERSIONS[version]
  lists = tuple(f'list_{name}.txt' for name in LIST_FOLDERS)
  root = find_dataset_root(root, folders + lists)
  problems = [f'missing folder {f}/ (MSMT17 {version})' for f in folders
              if not (root / f).is_dir()]
  problems += [f'missing file {name}' for name in lists if not (root / name).is_file()]
  other = VERSIONS['V2' if version == 'V1' else 'V1']
  if problems and all((root / f).is_dir() for f in other):
    problems.append(f"this looks like the other release: pass version="
                    f"'{'V2' if version == 'V1' else 'V1'}'")
  if problems:
    raise layout_error(f'MSMT17 {version}', root, EXPECTED_LAYOUT, problems)
  subsets = {name: _read_list(root, name, folders[index], problems)
             for name, index in LIST_FOLDERS.items()}
  if problems:
    raise layout_error(f'MSMT17 {version}', root, EXPECTED_LAYOUT, problems)
  train = subsets['train'] + subsets['val']
  if not msmt17all:
    return {'train': train, 'query': subsets['query'], 'gallery': subsets['gallery']}
  offset = max(r.pid for r in train) + 1
  return {'train': train + _shift_pids(subsets['query'] + subsets['gallery'], offset)}
