"""Haystacks: the filler text that needles are hidden in.

- ``noise``: RULER's repeated sentences ("The grass is green. The sky is blue. ...").
- ``essay``: English prose from Python's own documentation (``pydoc_data.topics``, which
  ships with CPython), cleaned of code blocks; nothing is downloaded.
- a path: a UTF-8 text file, or a folder of ``*.txt``/``*.md`` files.

``load_haystack(name)`` returns one long string; ``haystack_sentences(name)`` splits it into
sentences so that needles are inserted at sentence boundaries.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
BUILTIN = ("noise", "essay")


@functools.lru_cache(maxsize=1)
def _essay_text() -> str:
    import pydoc_data.topics as topics

    paras, cur = [], []
    for text in topics.topics.values():
        for line in text.splitlines():
            s = line.rstrip()
            if not s or s.startswith((" ", "\t")) or set(s) <= set("*=-~^"):
                if cur:
                    paras.append(" ".join(cur))
                    cur = []
                continue
            cur.append(s.strip())
        if cur:
            paras.append(" ".join(cur))
            cur = []
    text = " ".join(p for p in paras if len(p) > 80 and p.count(".") >= 1)
    text = text.encode("ascii", errors="ignore").decode("ascii")
    return re.sub(r"\s+", " ", text).strip() + " "


def _read_path(path: Path) -> str:
    if path.is_dir():
        files = sorted([*path.rglob("*.txt"), *path.rglob("*.md")])
        if not files:
            raise ValueError(f"haystack: folder {path} holds no .txt or .md files")
        parts = [_read_file(f) for f in files]
        return "".join(parts)  # each part ends with one space
    return _read_file(path)


def _read_file(path: Path) -> str:
    from ..paths import regular_file

    try:  # a FIFO would block the read forever, a device (/dev/zero) never end it
        regular_file(path)
    except ValueError as e:
        raise ValueError(f"haystack: {e}") from None
    except FileNotFoundError:  # a dangling symlink (inside a folder)
        raise ValueError(f"haystack: cannot read {path}: missing") from None
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"haystack: cannot read {path}: {e.strerror}") from None
    if b"\x00" in raw:
        raise ValueError(f"haystack: {path} is not a text file (it contains NUL bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"haystack: {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        raise ValueError(f"haystack: {path} is empty")
    return text + " "


@functools.lru_cache(maxsize=16)
def load_haystack(name: str = "essay") -> str:
    """The haystack text for a built-in name or a file/folder path."""
    if name == "noise":
        return NOISE * 64
    if name == "essay":
        return _essay_text()
    if not isinstance(name, str) or not name.strip():  # Path("") would be the working directory
        raise ValueError(f"haystack: empty name; give a built-in haystack {BUILTIN} or a file or folder path")
    path = Path(name)
    if path.suffix.lower() in (".jsonl", ".json"):
        raise ValueError(f"haystack: {name} is a task file, not filler text; give it as --tasks {name} "
                         "(Python: rh.tasks.load_jsonl)")
    if not path.exists():
        raise ValueError(
            f"haystack: {name!r} is neither a built-in haystack {BUILTIN} nor an existing file or folder"
        )
    return _read_path(path)


HELDOUT_FRACTION = 0.1  # the essay's last 10% is never a training target: evaluation text


@functools.lru_cache(maxsize=16)
def text_bytes(name: str = "essay", part: str = "all") -> bytes:
    """The haystack's bytes: ``part="train"`` is what training LM rows sample from,
    ``"heldout"`` what evaluation losses use, ``"all"`` everything.

    For the built-in ``essay`` the last ``HELDOUT_FRACTION`` is held out (``train`` is the
    rest); ``noise`` and a user's file/folder are not split (their ``train`` and ``heldout``
    are the whole text: give a separate file to evaluate on unseen text). Needle prompts fill
    their haystack with sentences of the whole essay; in training those tokens are inputs,
    not loss targets, unless ``TrainConfig.niah_context_weight`` > 0."""
    if part not in ("all", "train", "heldout"):
        raise ValueError(f"part: expected 'all', 'train' or 'heldout', got {part!r}")
    data = load_haystack(name).encode("utf-8")
    if name != "essay" or part == "all":
        return data
    cut = int(len(data) * (1.0 - HELDOUT_FRACTION))
    return data[:cut] if part == "train" else data[cut:]


@functools.lru_cache(maxsize=16)
def haystack_sentences(name: str = "essay") -> tuple[str, ...]:
    """The haystack split into sentences, each ending with its space."""
    text = load_haystack(name)
    parts = re.findall(r"[^.!?]*[.!?]+\s+|[^.!?]+$", text)
    sents = tuple(p if p.endswith(" ") else p + " " for p in parts if p.strip())
    if not sents:
        raise ValueError(f"haystack: {name!r} holds no sentences")
    return sents
