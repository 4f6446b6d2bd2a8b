"""Errors raised by the input pipeline for bad user data.

Both carry a message a user can act on without reading the code: a wrong dataset folder says which
layout was expected and which parts are missing, and an undecodable image names the file (or the
record) it came from.
"""
from __future__ import annotations


class DatasetLayoutError(ValueError):
  """A dataset folder does not have the on-disk layout its owner distributes."""


class CorruptImageError(ValueError):
  """An image file or an encoded image record cannot be decoded."""
