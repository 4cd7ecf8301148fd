"""Opening only what is safe to open: regular files, and names that stay inside their folder.

The lowest layer of the package (nothing else imported), so that every part that opens a file
named by a user or by another file -- tasks (haystacks), storage (checkpoints), hf (weights) --
uses the same two checks.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def regular_file(path: Path) -> Path:
    """``path`` if it is a regular file (after symlinks); a FIFO, device, socket or folder named
    where a file is expected would block or never end a read, so it is refused (ValueError)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "not a regular file")
        raise ValueError(f"{path}: {kind}, not a regular file; refused")
    return path


def inside(root: Path, name: str, what: str) -> Path:
    """``root / name`` for a file name read from inside a file (an index, a manifest); a name
    that is absolute or climbs out with ``..`` is refused, so no file outside ``root`` is read."""
    p = Path(str(name))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"{what}: {name!r} is not a file inside {root}; refused")
    return Path(root) / p
