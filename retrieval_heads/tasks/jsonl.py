"""RULER-format task files: one JSON object per line, ``{"index", "input", "outputs", "length"}``
(what RULER writes and the study's code reads), as needle batches with exact answer spans.

    import retrieval_heads as rh
    tasks = rh.tasks.load_jsonl("data/ruler_niah_single_1.jsonl")   # the byte tokenizer
    tasks.n_records, tasks.n_unlocated, tasks.errors                 # 4, 0, []
    tasks.batches()                                                  # one NeedleBatch per prompt length
    rh.tasks.load_jsonl(path, hf_model.tokenizer)                    # spans in an HF tokenisation

Each record's prompt is ``input`` as the model's tokenizer encodes it (the byte tokenizer's BOS
first; an HF tokenizer's own leading specials), and its gold values are ``outputs``. Each value's
answer span is the tokens of its first occurrence in ``input`` (characters, located exactly):
the span must consist of whole tokens that decode to exactly that value. A value that does not
occur in ``input``, or that shares a token with its neighbours, leaves its record out: it is
counted in ``n_unlocated`` and listed in ``errors`` (line number and why), never scored as zeros.
A line that is not such a JSON object is a ``ValueError`` naming the file and line.

The answer the model should produce is ``", ".join(outputs)``, after a space unless ``input``
ends with whitespace. ``length`` (RULER's token count in its own tokenizer) is kept as metadata;
the prompt's length here is that of our tokenisation.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .niah import NeedleBatch, NeedleSample
from .tokenizer import TOKENIZER

log = logging.getLogger(__name__)
REQUIRED = ("input", "outputs")
KNOWN = ("index", "input", "outputs", "length", "length_w_model_temp", "answer_prefix", "token_position_answer")


@dataclass
class TaskRecord:
    line: int  # 1-based line number in the file
    index: int
    input: str
    outputs: list[str]
    length: int | None = None


@dataclass
class JsonlTasks:
    """The samples of a task file whose answers were located, and what was left out."""

    path: str
    samples: list[NeedleSample] = field(default_factory=list)
    records: list[TaskRecord] = field(default_factory=list)  # the located records, as ``samples``
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, why the answer was not located)
    n_records: int = 0

    @property
    def n_unlocated(self) -> int:
        return len(self.errors)

    def batches(self, max_len: int | None = None) -> list[NeedleBatch]:
        """One ``NeedleBatch`` per prompt length (prompts are never padded: no attention mask),
        in order of first appearance; ``max_len`` leaves longer prompts out."""
        groups: dict[int, list[NeedleSample]] = {}
        for s in self.samples:
            if max_len is None or len(s.tokens) <= max_len:
                groups.setdefault(len(s.tokens), []).append(s)
        return [NeedleBatch(torch.tensor([s.tokens for s in g], dtype=torch.long), g) for g in groups.values()]

    def summary(self) -> str:
        s = f"{self.path}: {self.n_records} record(s), {len(self.samples)} with located answers"
        if self.errors:
            line, why = self.errors[0]
            s += f", {self.n_unlocated} not located (first: line {line}: {why})"
        return s


def read_jsonl(path) -> list[TaskRecord]:
    """The records of a RULER-format file; ``ValueError`` naming the file and line of a bad one."""
    from ..paths import regular_file

    p = Path(path)
    try:
        text = regular_file(p).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"tasks: {p}: no such file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"tasks: {p}: not UTF-8 text (byte {e.start})") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"tasks: {p}: {e}") from None
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        where = f"tasks: {p}:{n}"
        try:
            d = json.loads(raw)
        except ValueError as e:
            raise ValueError(f"{where}: not JSON ({e.args[0].split(':')[0]})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a JSON object with {', '.join(REQUIRED)}, got {type(d).__name__}")
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(map(repr, missing))} (RULER format: "
                             '{"index", "input", "outputs", "length"})')
        if not isinstance(d["input"], str) or not d["input"].strip():
            raise ValueError(f"{where}: 'input' must be a non-empty string")
        outs = d["outputs"]
        if not isinstance(outs, list) or not outs or not all(isinstance(o, str) and o.strip() for o in outs):
            raise ValueError(f"{where}: 'outputs' must be a non-empty list of non-empty strings, got {outs!r}")
        index = d.get("index", len(out))
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"{where}: 'index' must be an integer, got {index!r}")
        length = d.get("length")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int)):
            raise ValueError(f"{where}: 'length' must be an integer, got {length!r}")
        out.append(TaskRecord(line=n, index=index, input=d["input"], outputs=[o.strip() for o in outs],
                              length=length))
    if not out:
        raise ValueError(f"tasks: {p}: no records")
    return out


class _Bytes:
    """Our byte tokenizer: BOS + UTF-8 bytes; character spans map to token spans exactly."""

    def encode(self, text: str):
        return [TOKENIZER.BOS] + TOKENIZER.encode(text), None

    def span(self, text, ids, offsets, cs, ce, value):
        s, e = TOKENIZER.span(text, cs, ce)
        return s + 1, e + 1

    def answer(self, text, ids, answer):
        return TOKENIZER.encode(answer)


class _HF:
    """An HF tokenizer: its leading specials + the text's tokens, with character offsets."""

    def __init__(self, tok):
        self.tok = tok
        with_sp = tok("x", add_special_tokens=True)["input_ids"]
        without = tok("x", add_special_tokens=False)["input_ids"]
        i = next((k for k in range(len(with_sp) - len(without) + 1) if with_sp[k:k + len(without)] == without), 0)
        self.prefix = list(with_sp[:i])
        if not getattr(tok, "is_fast", False):
            raise ValueError("tasks: the tokenizer must be a fast tokenizer (character offsets locate the answers)")

    def encode(self, text: str):
        out = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return self.prefix + list(out["input_ids"]), [tuple(o) for o in out["offset_mapping"]]

    def span(self, text, ids, offsets, cs, ce, value):
        p = len(self.prefix)
        hit = [i for i, (a, b) in enumerate(offsets) if b > a and a < ce and b > cs]
        if not hit:
            return None
        s, e = p + hit[0], p + hit[-1] + 1
        return (s, e) if self.tok.decode(ids[s:e]).strip() == value else None

    def answer(self, text, ids, answer):
        full, _ = self.encode(text + answer)
        return full[len(ids):] if full[:len(ids)] == ids else self.encode(answer)[0][len(self.prefix):]


def load_jsonl(path, tokenizer=None, *, limit: int | None = None) -> JsonlTasks:
    """A RULER-format file as needle samples (see the module docstring). ``tokenizer``: None for the
    byte tokenizer of our models, or an HF (fast) tokenizer; ``limit``: the first n records."""
    records = read_jsonl(path)[:limit]
    enc = _Bytes() if tokenizer is None else _HF(tokenizer)
    tasks = JsonlTasks(path=str(path), n_records=len(records))
    for r in records:
        ids, offsets = enc.encode(r.input)
        spans, why = [], None
        for v in r.outputs:
            cs = r.input.find(v)
            if cs < 0:
                why = f"output {v!r} does not occur in the input"
                break
            sp = enc.span(r.input, ids, offsets, cs, cs + len(v), v)
            if sp is None:
                why = f"output {v!r} shares a token with its neighbours in this tokenisation"
                break
            spans.append(sp)
        if why is not None:
            tasks.errors.append((r.line, why))
            continue
        answer = ("" if r.input[-1].isspace() else " ") + ", ".join(r.outputs)
        first = min(s for s, _ in spans)
        tasks.samples.append(NeedleSample(
            tokens=ids, answer_tokens=enc.answer(r.input, ids, answer), answer_spans=spans, values=list(r.outputs),
            keys=[], depth=round(first / max(len(ids), 1), 1) if ids else math.nan, needle_pos=first,
            context_len=len(ids), query_pos=len(ids) - 1, variant="jsonl", haystack=str(path)))
        tasks.records.append(r)
    log.info("tasks %s", tasks.summary())
    return tasks
