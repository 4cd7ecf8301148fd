"""Writing files so that a reader never sees half of one: every table, JSON and text file of
the library (scan tables, run.json, metrics.jsonl rewrites) goes through :func:`atomic_write`.

A write goes to a hidden temporary file in the same folder (``.tmp-NAME-XXXX``), which is then
renamed onto the target; a killed process leaves at most such a temporary file, which the
next scan or resume removes. Files get the user's usual permissions (umask), not mkstemp's 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from ..paths import inside, regular_file  # noqa: F401 - re-exported: storage's readers use them

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path`` (readers never see a partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda t: Path(t).write_text(json.dumps(obj, indent=1, sort_keys=True)))


def write_parquet(path: Path, df) -> None:
    atomic_write(path, lambda t: df.to_parquet(t, index=False))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda t: Path(t).write_text(text))


def read_json(path: Path, *, error=ValueError):
    """Parse a JSON file; a file that is not UTF-8 JSON raises ``error`` naming it."""
    try:
        path = regular_file(path)
    except ValueError as e:
        raise error(str(e)) from None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: malformed JSON ({e})") from None
    except RecursionError:  # "[[[[...]]]]" 100000 deep
        raise error(f"{path}: JSON nested too deep to be a configuration") from None


def read_json_or_empty(path: Path) -> dict:
    """A JSON object from ``path``, or ``{}`` when it is missing, unreadable or not an object
    (caches and optional side files: rebuilt, never trusted)."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


@contextlib.contextmanager
def exclusive_lock(path: Path, busy: str):
    """Hold an exclusive lock on file ``path`` for the ``with`` block, or raise ``ValueError(busy)``
    at once when another process holds it (a no-op where fcntl is missing). The lock goes with the
    process: a killed holder never leaves it stuck."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows)
        yield
        return
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(busy) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
