"""PKU VehicleID layout reader: training list plus one test list split into query and gallery.

`train_test_split/train_list.txt` and `test_list_<size>.txt` hold `<image stem> <vehicle id>` per
line; images are `image/<stem>.jpg`. TransReID uses the 800 / 1,600 / 2,400-vehicle test lists (the
paper's small / medium / large sets); the other distributed sizes are accepted too.

Query / gallery follow TransReID (the common VehicleID protocol): for every test vehicle, in the
order the test list first names it, ONE random image goes to the gallery and the rest to the query.
TransReID draws with Python's global `random`; here `random.Random(seed)` makes the draw
reproducible, and the reported protocol (mean over 10 draws) is seeds 0..9. The extra split 'test'
lists every test image, so an evaluator can redraw without re-reading the layout.

VehicleID has no cameras and no viewpoints. As in TransReID, query images get camid 0 and gallery
images camid 1 (so the same-camera filter of the evaluation removes nothing), training images
camid 0; viewid is NO_VIEW (-1).
"""
from __future__ import annotations

import collections
import pathlib
import random

from input_pipeline.errors import DatasetLayoutError
from input_pipeline.reid.records import NO_VIEW, ReidRecord

TEST_SIZES = (800, 1600, 2400, 3200, 6000, 13164)
QUERY_CAMERA, GALLERY_CAMERA, TRAIN_CAMERA = 0, 1, 0
EXPECTED_LAYOUT = """\
VehicleID_V1.0/  (the folder or its parent)
  image/<stem>.jpg                         e.g. 0000001.jpg
  train_test_split/train_list.txt          '<image stem> <vehicle id>' per line
  train_test_split/test_list_{800,1600,2400}.txt   (also 3200, 6000, 13164) same format
  attribute/                               optional here (not read)"""


def _layout_error(root, problems: list[str]) -> DatasetLayoutError:
  listed = '\n'.join(f'  - {p}' for p in problems)
  return DatasetLayoutError(f'{root} is not a VehicleID folder as distributed.\n'
                            f'Expected layout:\n{EXPECTED_LAYOUT}\nProblems:\n{listed}')


def _resolve_root(root) -> pathlib.Path:
  root = pathlib.Path(root).expanduser()
  if not (root / 'train_test_split').is_dir():
    for child in ('VehicleID_V1.0', 'VehicleID'):
      if (root / child / 'train_test_split').is_dir():
        return root / child
  return root


def read_list(path: pathlib.Path) -> list[tuple[str, int]]:
  """[(image stem, vehicle id)] in file order."""
  entries = []
  for number, line in enumerate(path.read_text().splitlines(), start=1):
    fields = line.split()
    if not fields:
      continue
    if len(fields) != 2 or not fields[1].lstrip('-').isdigit():
      raise DatasetLayoutError(f'{path}:{number}: expected "<image stem> <vehicle id>", '
                               f'got {line.strip()!r}')
    entries.append((fields[0], int(fields[1])))
  if not entries:
    raise DatasetLayoutError(f'{path} lists no images; expected "<image stem> <vehicle id>" lines')
  return entries


def split_query_gallery(entries: list[tuple[str, int]], seed: int):
  """One random image per vehicle to the gallery, the others to the query (TransReID's rule)."""
  by_vehicle = collections.defaultdict(list)
  for entry in entries:
    by_vehicle[entry[1]].append(entry)   # dicts keep first-appearance order, as in TransReID
  rng = random.Random(seed)
  query, gallery = [], []
  for images in by_vehicle.values():
    chosen = rng.randrange(len(images))
    gallery.append(images[chosen])
    query.extend(images[:chosen] + images[chosen + 1:])
  return query, gallery


def _records(root: pathlib.Path, entries, camid: int) -> list[ReidRecord]:
  return [ReidRecord(path=str(root / 'image' / f'{stem}.jpg'), name=f'image/{stem}.jpg', pid=pid,
                     camid=camid, viewid=NO_VIEW) for stem, pid in entries]


def _missing_images(root: pathlib.Path, lists: dict[str, list]) -> list[str]:
  present = {p.name for p in (root / 'image').iterdir()}   # one listing, not a stat per image
  problems = []
  for name, entries in lists.items():
    missing = [stem for stem, _ in entries if f'{stem}.jpg' not in present]
    if missing:
      problems.append(f'{name} names {len(missing)} images missing from image/, '
                      f'e.g. {[m + ".jpg" for m in missing[:3]]}')
  return problems


def read_vehicleid(root, test_size: int = 800, seed: int = 0) -> dict[str, list[ReidRecord]]:
  """VehicleID splits 'train', 'query', 'gallery' and 'test' (all test images, list order)."""
  if test_size not in TEST_SIZES:
    raise ValueError(f'VehicleID test_size must be one of {TEST_SIZES}, got {test_size!r}')
  root = _resolve_root(root)
  split_dir = root / 'train_test_split'
  files = {'train_list.txt': split_dir / 'train_list.txt',
           f'test_list_{test_size}.txt': split_dir / f'test_list_{test_size}.txt'}
  problems = ([] if (root / 'image').is_dir() else ['missing folder image/'])
  problems += [f'missing file train_test_split/{n}' for n, p in files.items() if not p.is_file()]
  if problems:
    raise _layout_error(root, problems)
  lists = {name: read_list(path) for name, path in files.items()}
  problems = _missing_images(root, lists)
  if problems:
    raise _layout_error(root, problems)
  train, test = lists.values()
  query, gallery = split_query_gallery(test, seed)
  return {'train': _records(root, train, TRAIN_CAMERA),
          'query': _records(root, query, QUERY_CAMERA),
          'gallery': _records(root, gallery, GALLERY_CAMERA),
          'test': _records(root, test, QUERY_CAMERA)}
