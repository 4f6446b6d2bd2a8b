"""Ranked-list pictures for re-identification: the query, then its top-k gallery matches in rank order.

Each tile gets a coloured border: the query grey, a gallery image green when it is a correct match (same
identity) and red otherwise, as in torchreid / fast-reid. Optional captions under the tiles show the
distance and a label (e.g. "pid 12 cam 3"). Gallery images of another size are resized to the query's.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jaxmatch.visualize.correspondence import as_rgb_uint8

QUERY = (128, 128, 128)
CORRECT = (0, 200, 0)
WRONG = (230, 0, 0)
BACKGROUND = (255, 255, 255)
GAP = 6             # white pixels between tiles
CAPTION_LINE = 12   # pixels per caption line (PIL's default bitmap font is 11 px high)


def _border(tile_h: int) -> int:
  return max(2, tile_h // 40)


def _caption_lines(i: int, distances, labels) -> list[str]:
  if i == 0:
    return ["query"]
  lines = [f"#{i}"]
  if distances is not None:
    lines[0] += f" d={distances[i - 1]:.3g}"
  if labels is not None:
    lines.append(str(labels[i - 1]))
  return lines


def ranked_list_figure(query_img, gallery_imgs: Sequence, correct: Sequence[bool],
                       distances: Sequence[float] | None = None,
                       labels: Sequence[str] | None = None) -> np.ndarray:
  """Query then the k gallery images (in rank order) with green / red borders; uint8 [H, W, 3].

  correct[i]: whether gallery_imgs[i] matches the query. distances / labels (length k) add captions.
  """
  k = len(gallery_imgs)
  if k == 0:
    raise ValueError("ranked_list_figure needs at least one gallery image")
  for name, seq in (("correct", correct), ("distances", distances), ("labels", labels)):
    if seq is not None and len(seq) != k:
      raise ValueError(f"{name} has {len(seq)} entries for {k} gallery images")
  query = as_rgb_uint8(query_img, "query_img")
  h, w = query.shape[:2]
  tiles = [query] + [_resized(as_rgb_uint8(g, f"gallery_imgs[{i}]"), h, w) for i, g in enumerate(gallery_imgs)]
  colours = [QUERY] + [CORRECT if bool(c) else WRONG for c in correct]
  b = _border(h)
  captions = distances is not None or labels is not None
  n_lines = (1 + (labels is not None)) if captions else 0
  tile_w, tile_h = w + 2 * b, h + 2 * b
  canvas = Image.new("RGB", (len(tiles) * tile_w + (len(tiles) - 1) * GAP, tile_h + n_lines * CAPTION_LINE),
                     BACKGROUND)
  draw = ImageDraw.Draw(canvas)
  font = ImageFont.load_default() if captions else None
  for i, (tile, colour) in enumerate(zip(tiles, colours)):
    x = i * (tile_w + GAP)
    draw.rectangle([x, 0, x + tile_w - 1, tile_h - 1], fill=colour)
    canvas.paste(Image.fromarray(tile), (x + b, b))
    if captions:
      for j, line in enumerate(_caption_lines(i, distances, labels)):
        draw.text((x + 1, tile_h + j * CAPTION_LINE), line, fill=(0, 0, 0), font=font)
  return np.asarray(canvas, dtype=np.uint8)


def _resized(img: np.ndarray, h: int, w: int) -> np.ndarray:
  if img.shape[:2] == (h, w):
    return img
  return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR), dtype=np.uint8)
