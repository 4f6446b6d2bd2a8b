"""What every re-ID layout reader returns: per split, a list of image records.

A layout reader is a function `read_<dataset>(root, **options) -> dict[split, list[ReidRecord]]` that
only lists files and parses names / list files; it never decodes images. It raises
`DatasetLayoutError` naming the expected layout when `root` does not match it. The TFDS builder turns
the records into stored examples; ids are kept as the dataset names them (training labels are made
contiguous later by the input pipeline, so several datasets can be merged).
"""
from __future__ import annotations

import dataclasses

NO_VIEW = -1  # viewid of datasets without viewpoint labels


@dataclasses.dataclass(frozen=True)
class ReidRecord:
  path: str          # file to read the encoded image from
  name: str          # path relative to the dataset root, as stored (unique within a split)
  pid: int           # identity as named by the dataset (Market: -1 junk, 0 distractor)
  camid: int         # camera index as named by the dataset (Market 'c3' -> 3)
  viewid: int = NO_VIEW


ReidSplits = dict  # dict[str, list[ReidRecord]]
