"""Wu et al.'s needle files (nightdessert/Retrieval_Head, ``haystack_for_detect/needles.jsonl``):
one JSON object per line, ``{"needle": sentence, "question": ..., "real_needle": the answer}``,
turned into RULER-format records that ``--tasks`` / ``tasks.load_jsonl`` read.

    python -m retrieval_heads.tasks.wu data/wu_needles.jsonl --context-lens 400,800 --out wu_tasks.jsonl
    retrieval-heads scan RUN --tasks wu_tasks.jsonl --compat wu

    >>> nd = WuNeedle(1, "The access code of the north tower is 4417093.", "What is the access code ?", "4417093")
    >>> recs = wu_records([nd], context_lens=[300], depths=[0.5])
    >>> recs[0]["length"], recs[0]["outputs"]
    (300, ['4417093'])
    >>> recs[0]["input"][-44:]
    ' Question: What is the access code ?\\nAnswer:'

Prompts are built as Wu's tester builds them, measured in our byte tokens: the haystack (a
built-in name or a path, repeated as needed) cut so that the prompt has exactly the requested
number of tokens (BOS included), the needle inserted at ``depth`` of the haystack, moved back to
just after the last preceding ``.`` (a sentence boundary; at depth 1 it ends the haystack),
then ``Based on the content of the book, Question: {question}\\nAnswer:`` appended directly.
The gold output is ``real_needle``; its answer span is located exactly in the prompt by
``load_jsonl`` (a ``real_needle`` that is not a verbatim part of its needle sentence, such as
a capitalised first word, is counted there as not located: Wu's overlap rule,
``--span-locate overlap``, tolerates that, but the record's exact span is still required).
Default depths are Wu's: 0, 11, 22, ... 100 percent (10 steps).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .haystack import load_haystack
from .tokenizer import TOKENIZER

WU_DEPTHS = (0.0, 0.11, 0.22, 0.33, 0.44, 0.56, 0.67, 0.78, 0.89, 1.0)  # round(linspace(0, 100, 10)) / 100
FIELDS = ("needle", "question", "real_needle")


@dataclass(frozen=True)
class WuNeedle:
    line: int
    needle: str
    question: str
    real_needle: str


def question_text(question: str) -> str:
    """Wu's question prompt, appended to the context."""
    return f"Based on the content of the book, Question: {question}\nAnswer:"


def read_wu_needles(path) -> list[WuNeedle]:
    """The needles of a Wu-format file; ``ValueError`` naming the file and line of a bad one."""
    from ..paths import regular_file

    p = Path(path)
    try:
        text = regular_file(p).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"needles: {p}: no such file") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"needles: {p}: {e}") from None
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            d = json.loads(raw)
        except ValueError:
            raise ValueError(f"needles: {p}:{n}: not JSON") from None
        if not isinstance(d, dict) or not all(isinstance(d.get(k), str) and d[k].strip() for k in FIELDS):
            raise ValueError(f"needles: {p}:{n}: expected {{\"needle\", \"question\", \"real_needle\"}} "
                             "(non-empty strings; Wu's haystack_for_detect/needles.jsonl)")
        out.append(WuNeedle(n, d["needle"].strip(), d["question"].strip(), d["real_needle"].strip()))
    if not out:
        raise ValueError(f"needles: {p}: no needles")
    return out


def _haystack_bytes(haystack: str, n: int) -> bytes:
    text = load_haystack(haystack).encode("utf-8")
    if not text.strip():
        raise ValueError(f"haystack: {haystack!r} is empty")
    return (text * (n // len(text) + 1))[:n]


def wu_prompt(needle: WuNeedle, context_len: int, depth: float, haystack: str = "essay") -> str:
    """One prompt of exactly ``context_len`` byte tokens (BOS included), built as Wu's tester does."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth: expected a value in [0, 1], got {depth}")
    ins = (" " + needle.needle).encode("utf-8")
    q = question_text(needle.question).encode("utf-8")
    budget = context_len - 1 - len(ins) - len(q)
    if budget < 0:
        raise ValueError(f"context_len: {context_len} tokens are too short for the needle of line {needle.line} "
                         f"and its question; use at least {context_len - budget}")
    hay = _haystack_bytes(haystack, budget)
    if depth >= 1.0:
        point = len(hay)
    else:  # Wu: back off to the last period before the insertion point
        point = int(len(hay) * depth)
        while point > 0 and hay[point - 1:point] != b".":
            point -= 1
    raw = hay[:point] + ins + hay[point:] + q
    return raw.decode("utf-8", errors="replace")


def wu_records(needles, *, context_lens, depths=WU_DEPTHS, haystack: str = "essay") -> list[dict]:
    """RULER-format records ``{"index", "input", "outputs", "length"}``: every needle at every
    context length and depth (needles outer, then lengths, then depths)."""
    out = []
    for nd in needles:
        for L in context_lens:
            for d in depths:
                text = wu_prompt(nd, int(L), float(d), haystack)
                out.append({"index": len(out), "input": text, "outputs": [nd.real_needle],
                            "length": 1 + len(TOKENIZER.encode(text))})
    return out


def write_wu_tasks(needles_path, out, *, context_lens, depths=WU_DEPTHS, haystack: str = "essay") -> Path:
    """Write the records of ``wu_records`` for a needle file to ``out`` (a .jsonl for ``--tasks``)."""
    recs = wu_records(read_wu_needles(needles_path), context_lens=context_lens, depths=depths, haystack=haystack)
    out = Path(out)
    out.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return out


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m retrieval_heads.tasks.wu",
                                 description="Wu-format needles -> a RULER-format task file for --tasks.")
    ap.add_argument("needles")
    ap.add_argument("--context-lens", required=True, help="comma-separated prompt lengths (byte tokens)")
    ap.add_argument("--depths", default=",".join(map(str, WU_DEPTHS)), help="comma-separated depths in [0, 1]")
    ap.add_argument("--haystack", default="essay", help="built-in haystack name or a text file/folder")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    try:
        lens = [int(x) for x in a.context_lens.split(",")]
        depths = [float(x) for x in a.depths.split(",")]
        f = write_wu_tasks(a.needles, a.out, context_lens=lens, depths=depths, haystack=a.haystack)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {f}")


if __name__ == "__main__":
    main()
