"""The examples in the package's docstrings run and print what they say (``>>>`` lines).

Examples that need a trained run or a download are marked ``# doctest: +SKIP`` where they
stand; everything else is executed here, so a docstring cannot drift from the code.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import retrieval_heads


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(retrieval_heads.__path__, "retrieval_heads.")
                  if not m.name.endswith("__main__"))


def _with_examples() -> list[str]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    out = []
    for name in _modules():
        mod = importlib.import_module(name)
        if any(t.examples for t in finder.find(mod, name)):
            out.append(name)
    return out


MODULES = _with_examples()


def test_some_modules_have_examples():
    assert len(MODULES) >= 3, MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False,
                          report=True)
    assert res.failed == 0, f"{res.failed} of {res.attempted} doctest example(s) failed in {name}"
