"""The package's parts depend on each other in one direction only.

Each part of ``retrieval_heads`` (a subpackage or a top-level module) has a layer; a part may
import only parts of a lower layer (or itself). Read from the source of every module, imports
inside functions included, so a lazy import cannot hide an upward edge. ``__main__.py`` files
are entry points (``python -m retrieval_heads.train`` runs the CLI) and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "retrieval_heads"

# lowest first; a part may import the parts of lower layers
LAYERS = [
    {"_version", "config", "labels", "stats", "paths", "byte_vocab"},
    {"model", "tasks"},
    {"storage", "detect", "eval"},
    {"interventions", "hf", "train", "plots", "laziness_plots"},  # plots reads the metric table (detect.metrics)
    {"pipeline"},
    {"demo", "notebook"},
    {"cli"},
    {"__init__"},
]
LAYER = {part: i for i, parts in enumerate(LAYERS) for part in parts}
# the pure core: imports nothing above the model, the tasks and the configuration
CORE_ALLOWED = {"detect": {"config", "labels", "model", "tasks", "detect", "paths"},
                "model": {"config", "model", "byte_vocab"}, "tasks": {"config", "tasks", "paths", "byte_vocab"},
                "config": {"config"}}


def _part(module: str) -> str:
    """'retrieval_heads.detect.rows' -> 'detect'; 'retrieval_heads' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_edges(pkg: Path = PKG) -> list[tuple[str, str, str]]:
    """(from part, to part, 'file:line') for every import of the package by itself."""
    edges = []
    for f in sorted(pkg.rglob("*.py")):
        if f.name == "__main__.py":
            continue
        rel = f.relative_to(pkg.parent).with_suffix("")
        mod_parts = list(rel.parts)
        package = mod_parts if f.name == "__init__.py" else mod_parts[:-1]
        if f.name == "__init__.py":
            package = mod_parts[:-1]
        src = _part(".".join(mod_parts if f.name != "__init__.py" else mod_parts[:-1]))
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[:len(package) - node.level + 1]
                    name = ".".join(base + ([node.module] if node.module else []))
                    targets = [name] if node.module else [f"{name}.{a.name}" for a in node.names]
                else:
                    targets = [node.module or ""]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t == "retrieval_heads" or t.startswith("retrieval_heads."):
                    dst = _part(t)
                    if dst != src:
                        edges.append((src, dst, f"{f.relative_to(pkg.parent)}:{node.lineno}"))
    return edges


def find_cycle(edges) -> list[str] | None:
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_every_part_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in PKG.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert parts - set(LAYER) == set(), "give each new part of the package a layer in LAYERS"


def test_no_import_goes_up_a_layer():
    bad = [f"{where}: {a} (layer {LAYER[a]}) imports {b} (layer {LAYER[b]})"
           for a, b, where in import_edges() if LAYER[b] >= LAYER[a] and not (a == "__init__")]
    assert not bad, "\n".join(bad)


def test_no_cycle_among_the_parts():
    assert find_cycle(import_edges()) is None


@pytest.mark.parametrize("part", sorted(CORE_ALLOWED))
def test_the_core_imports_nothing_above_it(part):
    bad = [f"{where}: {a} imports {b}" for a, b, where in import_edges() if a == part and b not in CORE_ALLOWED[part]]
    assert not bad, "\n".join(bad)


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path):
    pkg = tmp_path / "retrieval_heads"
    (pkg / "detect").mkdir(parents=True)
    (pkg / "pipeline").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "detect" / "__init__.py").write_text("")
    (pkg / "pipeline" / "__init__.py").write_text("from ..detect import rows\n")
    (pkg / "detect" / "rows.py").write_text("def f():\n    from ..pipeline import scan\n")
    edges = import_edges(pkg)
    assert ("detect", "pipeline", "retrieval_heads/detect/rows.py:2") in edges
    assert find_cycle(edges) in (["detect", "pipeline", "detect"], ["pipeline", "detect", "pipeline"])
