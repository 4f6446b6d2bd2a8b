"""A small stand-in for yacs.config.CfgNode (used only when yacs is not installed): attribute access,
clone, freeze / defrost and merge_from_list with yacs' type check."""
import ast
import copy


class CfgNode(dict):
  def __init__(self, init=None):
    super().__init__(init or {})
    object.__setattr__(self, "_frozen", False)

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError as e:
      raise AttributeError(name) from e

  def __setattr__(self, name, value):
    if self._frozen:
      raise AttributeError(f"attempted to set {name} = {value!r}, but the CfgNode is frozen")
    self[name] = value

  def freeze(self, frozen=True):
    object.__setattr__(self, "_frozen", frozen)
    for v in self.values():
      if isinstance(v, CfgNode):
        v.freeze(frozen)

  def defrost(self):
    self.freeze(False)

  def is_frozen(self):
    return self._frozen

  def clone(self):
    return copy.deepcopy(self)

  def merge_from_list(self, pairs):
    if len(pairs) % 2:
      raise ValueError(f"merge_from_list needs key / value pairs, got {len(pairs)} items")
    for key, value in zip(pairs[0::2], pairs[1::2]):
      *parents, leaf = key.split(".")
      node = self
      for p in parents:
        node = node[p]
      if leaf not in node:
        raise KeyError(f"non-existent config key: {key}")
      node[leaf] = _coerce(_decode(value), node[leaf], key)


def _decode(value):
  if not isinstance(value, str):
    return value
  try:
    return ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return value


def _coerce(value, old, key):
  if type(value) is type(old) or old is None:
    return value
  if isinstance(old, (list, tuple)) and isinstance(value, (list, tuple)):
    return type(old)(value)
  raise ValueError(f"type mismatch for {key}: {type(old).__name__} expected, got {type(value).__name__}")
