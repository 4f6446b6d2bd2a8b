"""The layering of the code base: every import (including those inside functions) points down, and no
module-level import cycle exists. Static (ast), so it also covers modules no other test imports."""
from __future__ import annotations

import ast
import pathlib

from conftest import REPO

PACKAGES = ("jaxmatch", "input_pipeline")

# (importer prefix, imported prefix) pairs that must not occur: upward or sideways dependencies.
FORBIDDEN = [
    ("jaxmatch.train", "jaxmatch.models"), ("jaxmatch.train", "jaxmatch.evaluation"),
    ("jaxmatch.train", "input_pipeline"), ("jaxmatch.train", "jaxmatch.tasks"),
    ("jaxmatch.train", "jaxmatch.convert"),
    ("jaxmatch.models", "jaxmatch.convert"), ("jaxmatch.models", "jaxmatch.tasks"),
    ("jaxmatch.models", "jaxmatch.parity"), ("jaxmatch.models", "jaxmatch.train"),
    ("jaxmatch.models", "jaxmatch.evaluation"), ("jaxmatch.models", "input_pipeline"),
    ("jaxmatch.evaluation", "jaxmatch.train"), ("jaxmatch.evaluation", "jaxmatch.models"),
    ("jaxmatch.evaluation", "jaxmatch.tasks"), ("jaxmatch.evaluation", "input_pipeline"),
    ("jaxmatch.convert", "jaxmatch.tasks"), ("jaxmatch.convert", "jaxmatch.parity"),
    ("jaxmatch.parallel", "jaxmatch."), ("jaxmatch.numerics", "jaxmatch."),
    ("jaxmatch.param_groups", "jaxmatch."),
    ("input_pipeline", "jaxmatch"),
]


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
  if not node.level:
    return node.module or ""
  base = module.split(".") if is_package else module.split(".")[:-1]
  base = base[:len(base) - (node.level - 1)]
  return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: pathlib.Path, top_level_only: bool) -> set[str]:
  """Project modules `module` imports (`from a import b` counts as a.b when that is a module)."""
  tree = ast.parse(path.read_text(), str(path))
  nodes = tree.body if top_level_only else list(ast.walk(tree))
  if top_level_only:  # statements under `if`/`try` at module level still run at import
    nodes = [n for stmt in tree.body for n in ast.walk(stmt)
             if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
  known, out = _modules(), set()
  for node in nodes:
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = _absolute(module, node, path.name == "__init__.py")
      out.add(base)
      out.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known)
  return {m for m in out if m.split(".")[0] in PACKAGES}


def _within(name: str, prefix: str) -> bool:
  return name == prefix.rstrip(".") or name.startswith(prefix if prefix.endswith(".") else prefix + ".")


def test_imports_point_down():
  bad = []
  for module, path in sorted(_modules().items()):
    for imported in sorted(_imports(module, path, top_level_only=False)):
      for importer, target in FORBIDDEN:
        if _within(module, importer) and _within(imported, target) and not _within(imported, importer):
          bad.append(f"{module} imports {imported} ({importer} must not depend on {target})")
  assert not bad, "upward imports:\n  " + "\n  ".join(bad)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_no_import_cycles():
  modules = _modules()
  # A module imports its parent packages first; those edges are not cycles of the code's making.
  graph = {m: {i for i in _imports(m, p, top_level_only=True) if i in modules and not _within(m, i)}
           for m, p in modules.items()}
  cycle = _cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_a_cycle_and_an_upward_import():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None
  path = REPO / "jaxmatch" / "models" / "registry.py"
  assert "jaxmatch.models.registry" in _modules()
  assert _absolute("jaxmatch.models.registry", ast.parse("from ..convert import keys").body[0], False) == \
      "jaxmatch.convert"
  assert path.exists()
