"""Every import is a declared dependency, and every module imports in this environment.

The static test reads the imports of the package, the analyses, the benchmarks, the tests
and the notebooks' code cells, maps each third-party module to the distribution that
provides it (``importlib.metadata.packages_distributions``) and checks that distribution is
declared in ``pyproject.toml`` for that part of the project:

- ``retrieval_heads/``: ``[project.dependencies]`` (an import guarded by ``try/except
  ImportError`` may come from an extra instead: the GPU kernels);
- ``analyses/``: the dependencies plus the ``analyses`` extra;
- ``notebooks/``: the dependencies plus the ``notebooks`` extra;
- ``tests/`` and ``benchmarks/``: the dependencies plus the ``test`` extra (which pulls
  ``analyses`` and ``notebooks``).

So a module that happens to be installed on the machine (scipy in a system Python) but is
declared nowhere fails here, whatever the machine. The dynamic test imports every module.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import json
import pkgutil
import re
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Modules that a guarded import may name without their being installed here, with the
# extra (or the reason) that provides them on the machines that have them.
# The package imports them only on the CUDA path (inside a guard or after an availability check).
NOT_INSTALLED_HERE = {
    "flash_attn": "flash-attn",  # the gpu extra
    "fla": "fla-core",  # the gpu extra
    "triton": None,  # ships with the CUDA builds of torch
    "lifelines": "lifelines",  # the survival extra (stats.cox_log_window; the tests skip without it)
}
# Local modules of the test suite and the analyses, imported by their file name.
LOCAL = {"retrieval_heads", "analyses", "tests", "conftest", "reliability_util", "common", "bench_common", "helpers"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(reqs) -> set[str]:
    out = set()
    for r in reqs:
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(\[([^\]]*)\])?", r)
        name = _norm(m.group(1))
        if name == "retrieval-heads":  # a self-reference: retrieval-heads[analyses,notebooks]
            for extra in (m.group(3) or "").split(","):
                out |= declared(extra.strip(), with_core=False)
        else:
            out.add(name)
    return out


def declared(extra: str | tuple | None = None, with_core: bool = True) -> set[str]:
    proj = PYPROJECT["project"]
    names = _requirement_names(proj["dependencies"]) if with_core else set()
    for e in ((extra,) if isinstance(extra, str) else extra or ()):
        names |= _requirement_names(proj["optional-dependencies"][e])
    return names


def _guarded(node_stack) -> bool:
    """True when the import sits in a ``try`` whose handlers catch ImportError."""
    for node in node_stack:
        if isinstance(node, ast.Try):
            for h in node.handlers:
                names = [h.type] if not isinstance(h.type, ast.Tuple) else list(h.type.elts)
                if h.type is None or any(isinstance(n, ast.Name) and n.id in
                                         ("ImportError", "ModuleNotFoundError", "Exception") for n in names):
                    return True
    return False


def imports_of(source: str, filename: str) -> list[tuple[str, bool, int]]:
    """(top-level module, guarded, line) of every absolute import in ``source``."""
    tree = ast.parse(source, filename)
    out = []

    def visit(node, stack):
        if isinstance(node, ast.Import):
            out.extend((a.name.split(".")[0], _guarded(stack), node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module.split(".")[0], _guarded(stack), node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child, stack + [node])

    visit(tree, [])
    return out


def _notebook_source(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    code = []
    for c in cells:
        if c["cell_type"] == "code":
            # IPython magics and shell escapes are not Python
            code += [ln for ln in "".join(c["source"]).splitlines() if not ln.lstrip().startswith(("%", "!"))]
    return "\n".join(code)


PARTS = {  # folder -> (glob, extra whose names it may import)
    "retrieval_heads": ("**/*.py", None),
    "analyses": ("*.py", "analyses"),
    "benchmarks": ("*.py", "test"),
    "tests": ("**/*.py", ("test", "survival")),  # lifelines' comparisons skip without the survival extra
    "notebooks": ("*.ipynb", "notebooks"),
}


def _undeclared(folder: str, dist_of=None, stdlib=None) -> list[str]:
    dist_of = md.packages_distributions() if dist_of is None else dist_of
    stdlib = sys.stdlib_module_names if stdlib is None else stdlib
    pattern, extra = PARTS[folder]
    allowed = declared(extra)
    core = declared(None)
    problems = []
    for path in sorted((ROOT / folder).glob(pattern)):
        if "results" in path.parts:
            continue
        src = _notebook_source(path) if path.suffix == ".ipynb" else path.read_text()
        for mod, guarded, line in imports_of(src, str(path)):
            if mod in stdlib or mod in LOCAL or mod.startswith("test_") or mod == "__future__":
                continue
            where = f"{path.relative_to(ROOT)}:{line}"
            dists = {_norm(d) for d in dist_of.get(mod, [])}
            if not dists:
                extras = PYPROJECT["project"]["optional-dependencies"]
                if folder in ("retrieval_heads", "tests") and mod in NOT_INSTALLED_HERE and (
                        NOT_INSTALLED_HERE[mod] is None
                        or any(NOT_INSTALLED_HERE[mod] in declared(e, with_core=False) for e in extras)):
                    continue
                problems.append(f"{where}: {mod} is not installed and not declared")
                continue
            if folder == "retrieval_heads":  # the package itself: core, or any extra behind a guard
                ok = core if not guarded else core | set().union(
                    *(declared(e) for e in PYPROJECT["project"]["optional-dependencies"]))
            else:
                ok = allowed
            if not dists & ok:
                problems.append(f"{where}: {mod} (from {', '.join(sorted(dists))}) is not declared "
                                f"for {folder}/ in pyproject.toml")
    return problems


@pytest.mark.parametrize("folder", sorted(PARTS))
def test_every_import_is_declared(folder):
    problems = _undeclared(folder)
    assert not problems, "\n".join(problems)


def test_the_check_catches_an_undeclared_import(tmp_path, monkeypatch):
    """The check fails on an import that is installed but declared nowhere (as scipy was)."""
    monkeypatch.setitem(PARTS, "scratch", ("*.py", "analyses"))
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch" / "a.py").write_text("import numpy\nimport somepkg_not_declared\n")
    problems = _undeclared("scratch", dist_of={"numpy": ["numpy"], "somepkg_not_declared": ["SomePkg"]})
    assert problems == ["scratch/a.py:2: somepkg_not_declared (from somepkg) is not declared for scratch/ "
                        "in pyproject.toml"]
    # an import of an extra from the package's core code is not enough either
    (tmp_path / "retrieval_heads").mkdir()
    (tmp_path / "retrieval_heads" / "a.py").write_text("import scipy\n")
    assert _undeclared("retrieval_heads", dist_of={"scipy": ["scipy"]}) == [
        "retrieval_heads/a.py:1: scipy (from scipy) is not declared for retrieval_heads/ in pyproject.toml"]


def _package_modules() -> list[str]:
    import retrieval_heads

    return sorted(m.name for m in pkgutil.walk_packages(retrieval_heads.__path__, "retrieval_heads."))


@pytest.mark.parametrize("module", _package_modules())
def test_every_package_module_imports(module):
    importlib.import_module(module)


@pytest.mark.parametrize("path", sorted(p.name for p in (ROOT / "analyses").glob("*.py")))
def test_every_analysis_module_imports(path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "analyses"))
    monkeypatch.syspath_prepend(str(ROOT))
    spec = importlib.util.spec_from_file_location(f"_analysis_{Path(path).stem}", ROOT / "analyses" / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # module level only: the scripts run under `if __name__ == "__main__"`
