"""The architecture notes point only at files that exist, and nothing points at the old
design note that was never part of the repository.

Path-like tokens are the inline code spans of docs/ARCHITECTURE.md (fenced blocks are
skipped) made only of letters, digits, ``_ . - /`` that contain a ``/`` or end in ``.py``,
``.md``, ``.json`` or ``.toml``. Placeholders are written in capitals (``RUN/``,
``step_XXXXXX``) and are not checked, nor are globs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
OLD_NOTE = "DESIGN" + ".md"  # spelled in two parts so that this file does not mention it
PATH_CHARS = re.compile(r"^[A-Za-z0-9_./-]+$")
EXTENSIONS = (".py", ".md", ".json", ".toml")
# not part of the repository's own text: VCS data, caches, build outputs, environments,
# and the logs of analyses (which quote whatever was printed)
SKIP_DIRS = {"__pycache__", "build", "dist", "runs", "node_modules", "venv"}
SKIP_PATHS = {"analyses/results", "analyses/out"}


def _is_placeholder(part: str) -> bool:
    """``RUN``, ``OUT``, ``step_XXXXXX``: a part, or a ``_``/``-`` piece of it, written in
    capitals only (``README.md`` is not one: its extension is lower case)."""
    return any(re.fullmatch(r"[A-Z][A-Z0-9]*", piece) for piece in [part, *re.split(r"[_-]", part)])


def doc_paths(text: str) -> list[str]:
    """Repository paths quoted in inline code spans of ``text``."""
    text = re.sub(r"^```.*?^```[^\n]*$", "", text, flags=re.MULTILINE | re.DOTALL)  # fenced blocks
    found = []
    for token in re.findall(r"`([^`\n]+)`", text):
        token = token.strip()
        if not PATH_CHARS.match(token) or not ("/" in token or token.endswith(EXTENSIONS)):
            continue
        parts = [p for p in token.split("/") if p]
        if not parts or token.startswith(("/", "~")) or any(_is_placeholder(p) for p in parts):
            continue
        found.append(token)
    return found


def repo_text_files() -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel = Path(dirpath).relative_to(ROOT).as_posix()
        dirnames[:] = [d for d in dirnames
                       if not d.startswith(".") and d not in SKIP_DIRS and not d.endswith(".egg-info")
                       and (f"{rel}/{d}" if rel != "." else d) not in SKIP_PATHS]
        out += [Path(dirpath) / f for f in filenames if f.endswith((".md", ".py"))]
    return out


def test_doc_path_extraction():
    text = ("`retrieval_heads/config.py` `README.md` `docs/` `RUN/step_XXXXXX/config.json` "
            "`retrieval_heads/data/presets/*.json` `blocks.{l}.attn.hook_z` `0 <= i - j < w` "
            "`L3H0 (F)` `scores.parquet` `OUT/report.html` `docs/RELIABILITY.md`\n"
            "```\nretrieval_heads/fenced.py `not/this.py`\n```\n`a/b.py`")
    assert doc_paths(text) == ["retrieval_heads/config.py", "README.md", "docs/", "docs/RELIABILITY.md",
                                 "a/b.py"]


def test_architecture_paths_exist():
    paths = doc_paths(DOC.read_text(encoding="utf-8"))
    assert len(paths) >= 20, f"expected many repository paths in {DOC.name}, found {paths}"
    missing = sorted({p for p in paths if not (ROOT / p).exists()})
    assert not missing, f"{DOC.relative_to(ROOT)} refers to paths that do not exist: {missing}"


def test_no_reference_to_old_design_note():
    files = repo_text_files()
    assert any(f.name == "README.md" for f in files)
    offenders = sorted(f.relative_to(ROOT).as_posix() for f in files
                       if OLD_NOTE in f.read_text(encoding="utf-8", errors="replace"))
    assert not offenders, (f"{offenders} mention {OLD_NOTE}, which is not in the repository; "
                           "refer to docs/ARCHITECTURE.md instead")


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
