"""The package layout keeps its promises: no import cycles, dependencies point one way."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(__file__), "..", "..", "ptft_jax")
ROOT = os.path.abspath(os.path.join(PACKAGE, ".."))


def _modules() -> dict[str, str]:
  """{"ptft_jax.train.loop": path} for every module (packages as their __init__)."""
  out = {}
  for dirpath, _, files in os.walk(os.path.abspath(PACKAGE)):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].replace(os.sep, ".")
        out[rel.removesuffix(".__init__")] = os.path.join(dirpath, f)
  return out


def _imports(path: str, name: str, modules: dict[str, str]) -> set[str]:
  """ptft_jax modules that `path` imports anywhere (module level or inside functions)."""
  is_package = path.endswith("__init__.py")
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("ptft_jax")}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative import
        parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
        base = ".".join(parts + ([node.module] if node.module else []))
      if not base.startswith("ptft_jax"):
        continue
      for alias in node.names:  # `from pkg import module` is an edge to the module itself
        target = f"{base}.{alias.name}"
        found.add(target if target in modules else base)
  return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imports(path, name, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_no_import_cycles():
  assert _cycles(_graph()) == []


def test_cycle_detector_finds_a_cycle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert _cycles(graph) == [["a", "b", "c"]]


# package -> the ptft_jax packages it may import (besides itself, errors and utils)
ALLOWED = {
    "config": {"train"},  # workdir.py asks train.checkpoint whether a run exists (late)
    "parallel": set(),
    "data": set(),
    # The transformer pins its activations to the batch split of the mesh in context
    # (parallel.sharding.constrain_batch), as MaxText's layers do.
    "models": {"parallel"},
    "tasks": {"models", "data"},
    "optim": {"models"},
    "train": {"config", "data", "models", "tasks", "optim", "parallel", "convert"},
    "inference": {"config", "data", "models", "tasks", "optim", "parallel", "train"},
    "convert": {"models", "train", "data"},
    "bench": {"config", "data", "models", "tasks", "optim", "parallel", "train", "convert"},
}


def _package(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_dependencies_point_one_way(package):
  graph = _graph()
  allowed = ALLOWED[package] | {package, "errors", "utils"}
  wrong = sorted(f"{m} imports {t}" for m, targets in graph.items() if _package(m) == package
                 for t in targets if _package(t) not in allowed)
  assert wrong == []


def test_the_generic_step_knows_no_model_family():
  graph = _graph()
  assert not [t for t in graph["ptft_jax.train.steps"] if t.startswith("ptft_jax.models")]
  assert not [t for t in graph["ptft_jax.optim.optimizer"] if "strategies" in t]


def test_top_level_is_small_and_every_package_says_what_it_holds():
  top = [f for f in os.listdir(PACKAGE) if f.endswith(".py")]
  # __init__ (the API), main, errors, utils, three CLI entry points (predict, compare,
  # generate) that keep `python -m ptft_jax.X` short, and huge_pages, which __init__ runs
  # before its own imports (so it can live in no subpackage that imports jax).
  assert len(top) <= 8, sorted(top)
  for name in os.listdir(PACKAGE):
    init = os.path.join(PACKAGE, name, "__init__.py")
    if os.path.isfile(init):
      assert ast.get_docstring(ast.parse(open(init).read())), f"{name}/__init__.py: no docstring"
