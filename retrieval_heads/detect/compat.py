"""Scoring rules of the original code, by name, beside our defaults.

Four choices, each defaulting to ours; ``compat`` presets set all four as an original does::

    choice             ours (default)          thunlp (the study)        wu (Retrieval_Head)
    query_offset       1: last prompt token    2: len(input) - 2          1
    answer_positions   exact: the gold spans   variants: every position   exact
                                               of x, " x", "x.", " x.",
                                               ": x", ": x." (mass)
    span_locate        exact: tokens decoding  exact                      overlap: first window of
                       to the value                                       len(needle) tokens whose
                                                                          token set covers > 90% of
                                                                          the needle's token set
    accept             exact: the value is a   exact                      rouge: decode to newline or
                       substring of the answer                            50 tokens, ROUGE-1 recall
                                                                          of the value > 0.5

    >>> resolve("wu")
    Compat(query_offset=1, answer_positions='exact', span_locate='overlap', accept='rouge')
    >>> resolve("thunlp", query_offset=3).query_offset
    3
    >>> overlap_span([0, 9, 1, 2, 1, 2, 3], [1, 2, 1, 2, 3])     # the first window covering {1, 2, 3}
    (2, 7)
    >>> overlap_span(list(b"is: 1234545."), list(b"1234545"))   # lands 2 tokens early: ": 12345"
    (2, 9)
    >>> rouge1_recall("a1b2-c3d4-e5f6", "A1B2-c3d4-e5f7")        # 2 of 3 reference words
    0.6666666666666666

What each choice changes (``scores.score_heads``): ``query_offset`` moves the teacher-forced
query row of the row metrics (``mass``, ``entropy``, ``entropy_norm``) to ``query_pos - (K - 1)``;
decoding (``copy``) still starts at the last prompt token, as in both originals.
``answer_positions="variants"`` replaces the gold spans by every occurrence of the six
spellings in the prompt for the row metrics (mass); ``copy`` keeps the located spans.
``span_locate="overlap"`` replaces the gold spans by Wu's window for ``copy`` and ``mass``
(``copy_tf`` keeps the exact spans: it is ours, not Wu's). ``accept="rouge"`` decodes up to 50
tokens (or the given ``max_new_tokens``; fewer where the model's context ends), stops a sample's
valid steps after the first token whose text holds a newline, and counts a sample as answered
when ROUGE-1 recall > 0.5; ``string_match_all`` (the NIAH accuracy) is still computed on the
same, newline-cut answer.

Deliberate differences from the originals: a needle the overlap rule cannot locate makes the
sample invalid (counted in ``n_invalid``), where Wu's code scores it as zeros that still count;
ROUGE-1 here tokenises as ``rouge_score`` does (lower case, runs of ``[a-z0-9]``) but without its
Porter stemmer: the same for numbers and UUIDs, stricter for word values that differ by an
inflection. None of this module copies the original code; the rules were read from it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass

QUERY_OFFSET = 1
ANSWER_POSITIONS = ("exact", "variants")
SPAN_LOCATE = ("exact", "overlap")
ACCEPT = ("exact", "rouge")
WU_MAX_NEW_TOKENS = 50  # Wu's decode length
WU_OVERLAP = 0.9  # Wu's span rule: token-set overlap strictly above this
ROUGE_ACCEPT = 0.5  # Wu's acceptance: ROUGE-1 recall strictly above this


@dataclass(frozen=True)
class Compat:
    """One set of scoring choices (see the module docstring)."""

    query_offset: int = QUERY_OFFSET
    answer_positions: str = "exact"
    span_locate: str = "exact"
    accept: str = "exact"

    def __post_init__(self):
        q = self.query_offset
        if isinstance(q, bool) or not isinstance(q, int) or q < 1:
            raise ValueError(f"query_offset: expected an integer >= 1 (1 = the last prompt token), got {q!r}")
        for name, allowed in (("answer_positions", ANSWER_POSITIONS), ("span_locate", SPAN_LOCATE),
                              ("accept", ACCEPT)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: {getattr(self, name)!r}; use one of {', '.join(allowed)}")

    @property
    def is_default(self) -> bool:
        return self == Compat()

    def to_dict(self) -> dict:
        return asdict(self)

    def name(self) -> str:
        """The preset these choices equal, or 'custom'."""
        return next((k for k, v in PRESETS.items() if v == self), "custom")


PRESETS = {
    "ours": Compat(),
    "thunlp": Compat(query_offset=2, answer_positions="variants"),
    "wu": Compat(span_locate="overlap", accept="rouge"),
}
CHOICES = tuple(PRESETS)


def resolve(compat=None, *, query_offset=None, answer_positions=None, span_locate=None, accept=None) -> Compat:
    """The choices of preset ``compat`` (a name, a ``Compat`` or None = ours), each overridden by
    an explicit keyword that is not None."""
    if compat is None:
        base = PRESETS["ours"]
    elif isinstance(compat, Compat):
        base = compat
    elif compat in PRESETS:
        base = PRESETS[compat]
    else:
        raise ValueError(f"compat: {compat!r}; use one of {', '.join(CHOICES)}")
    over = {k: v for k, v in dict(query_offset=query_offset, answer_positions=answer_positions,
                                  span_locate=span_locate, accept=accept).items() if v is not None}
    return Compat(**{**base.to_dict(), **over}) if over else base


# --- the study's answer positions --------------------------------------------------------
def answer_spellings(value: str) -> list[str]:
    """The study's six spellings of an answer value."""
    return [value, f" {value}", f"{value}.", f" {value}.", f": {value}", f": {value}."]


def occurrences(tokens: list[int], pattern: list[int]) -> list[int]:
    """Every position covered by an occurrence of ``pattern`` in ``tokens`` (overlaps included)."""
    n = len(pattern)
    if not n or n > len(tokens):
        return []
    out = []
    for s in range(len(tokens) - n + 1):
        if tokens[s:s + n] == pattern:
            out.extend(range(s, s + n))
    return out


def variant_positions(tokens: list[int], values, encode) -> list[int]:
    """Sorted positions of ``tokens`` holding any spelling of any value (each spelling encoded by
    ``encode``, text -> ids without special tokens), every occurrence counted once."""
    pos: set[int] = set()
    for v in values:
        for text in answer_spellings(v):
            pos.update(occurrences(tokens, list(encode(text))))
    return sorted(pos)


# --- Wu's span rule ----------------------------------------------------------------------
def overlap_span(tokens: list[int], needle: list[int], threshold: float = WU_OVERLAP) -> tuple[int, int] | None:
    """Wu's needle location: the first start i whose window ``tokens[i:i + len(needle)]`` holds
    more than ``threshold`` of the needle's distinct tokens; ``(i, i + len(needle))`` or None.
    When every distinct token of the needle already occurs in its first tokens (a value that
    repeats digits), a window starting before the needle qualifies and the span lands early."""
    want = set(needle)
    if not want:
        return None
    n = len(needle)
    for i in range(len(tokens)):
        if len(set(tokens[i:i + n]) & want) / len(want) > threshold:
            return i, i + n
    return None


# --- Wu's acceptance ---------------------------------------------------------------------
def rouge_tokens(text: str) -> list[str]:
    """``rouge_score``'s default tokenisation without stemming: lower case, runs of [a-z0-9]."""
    return re.findall(r"[a-z0-9]+", text.lower())


def rouge1_recall(reference: str, prediction: str) -> float:
    """ROUGE-1 recall: the share of the reference's words (with multiplicity) found in the
    prediction; 0.0 for an empty reference."""
    ref, pred = Counter(rouge_tokens(reference)), Counter(rouge_tokens(prediction))
    total = sum(ref.values())
    return sum(min(c, pred[w]) for w, c in ref.items()) / total if total else 0.0


def rouge_accepts(values, prediction: str) -> bool:
    """Wu's acceptance of an answer: ROUGE-1 recall of the gold values (joined) > 0.5."""
    return rouge1_recall(" ".join(values), prediction) > ROUGE_ACCEPT


def ends_answer(text: str) -> bool:
    """Wu stops decoding after a newline token."""
    return "\n" in text
