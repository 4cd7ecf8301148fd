"""What the notebooks in ``notebooks/`` share: finding the checkpoint, and figures that survive export.

A Jupyter kernel runs in the notebook's folder (``notebooks/``), not where the user typed
``RH_CKPT=runs/tiny jupyter nbconvert --execute notebooks/01_explore.ipynb``. So a relative
path is looked up, in order, against

1. the kernel's working directory,
2. the directory Jupyter was started from (``$PWD``, which shells set and kernels inherit),
3. the repository root: the folder above the kernel's directory (or above this package) that
   holds the project's ``pyproject.toml``.

The first place where it exists wins; if none has it, the error names every place tried.

:func:`setup` makes plotly figures carry both the plotly mime type (JupyterLab / Notebook 7
render it with the bundled jupyterlab-plotly extension) and ``text/html``: plotly.js is
embedded once, inline, just before the first figure, and every figure is a div drawn by
``Plotly.newPlot``, so ``jupyter nbconvert --to html`` keeps every figure and they draw
offline. (plotly's own ``notebook`` renderer does the same but also adds a MathJax
``<script src>`` from a CDN to every figure; figures here have no LaTeX, so it is left out.)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: plotly renderer set by :func:`setup`: the mime type for Jupyter's frontends plus
#: ``rh_inline`` (:class:`InlineHtmlRenderer`: inline plotly.js, not a CDN) for HTML export.
PLOTLY_RENDERER = "plotly_mimetype+rh_inline"

_PROJECT = re.compile(r'^\s*name\s*=\s*["\']retrieval-heads["\']', re.MULTILINE)


def _is_project_root(folder: Path) -> bool:
    try:
        return bool(_PROJECT.search((folder / "pyproject.toml").read_text(encoding="utf-8")))
    except OSError:
        return False


def repo_root(start: str | os.PathLike | None = None) -> Path | None:
    """The retrieval-heads checkout holding ``start`` (default: the working directory), else the
    one holding this package (an editable install), else None (an installed wheel)."""
    here = Path(start if start is not None else os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if _is_project_root(folder):
            return folder
    package_parent = Path(__file__).resolve().parents[1]
    return package_parent if _is_project_root(package_parent) else None


def _search_dirs() -> list[tuple[str, Path]]:
    dirs = [("current directory", Path(os.getcwd()).resolve())]
    launched = os.environ.get("PWD")
    if launched and Path(launched).is_dir():
        dirs.append(("where Jupyter was started, $PWD", Path(launched).resolve()))
    root = repo_root()
    if root is not None:
        dirs.append(("repository root", root))
    unique, seen = [], set()
    for name, d in dirs:
        if d not in seen:
            seen.add(d)
            unique.append((name, d))
    return unique


def search_dirs() -> list[Path]:
    """Where a relative path is looked up, in order (duplicates removed)."""
    return [d for _, d in _search_dirs()]


def resolve_path(value: str | os.PathLike, what: str = "path") -> Path:
    """An existing absolute path for ``value`` (``~`` expanded): absolute paths as given,
    relative ones against :func:`search_dirs` in order. ``what`` names the setting in the
    error, e.g. ``"RH_CKPT"``. Raises FileNotFoundError naming every place tried."""
    text = os.fspath(value)
    path = Path(text).expanduser()
    if path.is_absolute():
        if path.exists():
            return path
        raise FileNotFoundError(f"{what}={text!r}: {path} does not exist")
    tried = []
    for name, base in _search_dirs():
        candidate = base / path
        if candidate.exists():
            return candidate.resolve()
        tried.append(f"{candidate} ({name})")
    places = (f"{tried[0]} does not exist" if len(tried) == 1
              else f"neither {', '.join(tried[:-1])} nor {tried[-1]} exists")
    raise FileNotFoundError(f"{what}={text!r} not found: {places}. Give an absolute path, "
                            f"or one relative to the current directory or to the repository root.")


def env_path(name: str) -> Path | None:
    """The environment variable ``name`` resolved with :func:`resolve_path`; None when unset or empty."""
    value = os.environ.get(name)
    return resolve_path(value, what=name) if value else None


def _inline_renderer():
    from plotly.io import to_html
    from plotly.io.base_renderers import NotebookRenderer

    class InlineHtmlRenderer(NotebookRenderer):
        """plotly's ``notebook`` renderer (plotly.js embedded inline once, on activation)
        whose figures load nothing: no MathJax ``<script src>`` and no clean-up observer
        script for the classic notebook."""

        def to_mimebundle(self, fig_dict):
            return {"text/html": to_html(fig_dict, config=self.config, auto_play=self.auto_play,
                                         include_plotlyjs=False, include_mathjax=False, full_html=False,
                                         animation_opts=self.animation_opts, default_width="100%",
                                         default_height=525, validate=False)}

    return InlineHtmlRenderer()


def setup(renderer: str = PLOTLY_RENDERER) -> None:
    """Register ``rh_inline`` and make ``renderer`` plotly's default (see the module docstring)."""
    import plotly.io as pio

    if "rh_inline" not in pio.renderers:
        pio.renderers["rh_inline"] = _inline_renderer()
    if pio.renderers.default != renderer:  # re-running the first cell does not embed plotly.js again
        pio.renderers.default = renderer
