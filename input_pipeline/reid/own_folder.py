"""Layout reader for a user's own re-ID crops, for training or evaluating on data of your own.

Put the crops in up to three subfolders of one folder, each file named `<pid>_c<cam>_<anything>`
with a .jpg, .jpeg or .png suffix:

    my_data/
      train/    0001_c1_000123.jpg  0001_c2_frame9.jpg  0002_c1_a.png ...   (optional)
      query/    0101_c1_x.jpg ...                                          (optional, with gallery)
      gallery/  0101_c2_y.jpg  0102_c3_z.jpg ...                           (optional, with query)

`<pid>` is a non-negative integer identity and `<cam>` a non-negative integer camera; both are
stored as written. Evaluation drops gallery entries with the query's pid and camera, so crops from
one camera only cannot match each other: give different cameras different numbers. A folder needs
`train/`, or `query/` together with `gallery/`, or all three. Every image file whose name does not
parse is listed in the error, so a typo is found before anything is built.
"""
from __future__ import annotations

import pathlib
import re

from input_pipeline.reid.market1501 import image_files, layout_error
from input_pipeline.reid.records import ReidRecord

SPLITS = ('train', 'query', 'gallery')
EXPECTED_LAYOUT = """\
<your folder>/
  train/<pid>_c<cam>_<anything>.jpg      optional (training crops)
  query/<pid>_c<cam>_<anything>.jpg      optional, needs gallery/
  gallery/<pid>_c<cam>_<anything>.jpg    optional, needs query/
  (.jpeg and .png are read too; pid and cam are non-negative integers)"""
_NAME = re.compile(r'^(\d+)_c(\d+)_.+$')


def parse_own_name(name: str) -> tuple[int, int] | None:
  """'<pid>_c<cam>_<anything>.<ext>' -> (pid, cam), or None."""
  match = _NAME.match(pathlib.PurePosixPath(name).stem)
  return (int(match.group(1)), int(match.group(2))) if match else None


def _read_split(root: pathlib.Path, split: str, problems: list[str]) -> list[ReidRecord]:
  records, bad = [], []
  for path in image_files(root / split):
    parsed = parse_own_name(path.name)
    if parsed is None:
      bad.append(f'{split}/{path.name}')
    else:
      records.append(ReidRecord(str(path), f'{split}/{path.name}', *parsed))
  if bad:
    more = f' and {len(bad) - 20} more' if len(bad) > 20 else ''
    problems.append(f'{len(bad)} file(s) not named <pid>_c<cam>_<anything>: {bad[:20]}{more}')
  elif not records:
    problems.append(f'{split}/ has no .jpg/.jpeg/.png images')
  return records


def read_own_folder(root) -> dict[str, list[ReidRecord]]:
  """Returns the splits among 'train', 'query', 'gallery' that the folder has."""
  root = pathlib.Path(root).expanduser()
  present = [s for s in SPLITS if (root / s).is_dir()]
  problems = []
  if not root.is_dir():
    problems.append('folder does not exist')
  elif not present:
    problems.append('none of train/, query/, gallery/ exists')
  elif ('query' in present) != ('gallery' in present):
    problems.append('query/ and gallery/ come together: '
                    f"only {'query' if 'query' in present else 'gallery'}/ exists")
  if problems:
    raise layout_error('re-ID image folder', root, EXPECTED_LAYOUT, problems)
  splits = {split: _read_split(root, split, problems) for split in present}
  if problems:
    raise layout_error('re-ID image folder', root, EXPECTED_LAYOUT, problems)
  return splits
