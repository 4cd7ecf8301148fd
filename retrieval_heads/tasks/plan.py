"""The needle generator: what a needle prompt says and where, as text, for any tokenizer.

A ``NeedlePlan`` is a pure function of ``(variant, seed, depth, haystack)``: the keys, the
values, the needle sentences, the query, each needle's depth and the order they are
inserted in, and the haystack sentences to fill the rest with. Two encoders turn one plan
into a prompt of exactly ``context_len`` tokens: ``tasks.niah.make_sample`` (our byte
tokenizer) and ``hf.needles.make_hf_sample`` (a Hugging Face tokenizer, spans through
character offsets). Both place needles with ``NeedlePlan.points`` and join the pieces with
``NeedlePlan.assemble``, in their own units (tokens or characters).

    >>> p = needle_plan("single_1", seed=0, depth=0.5)
    >>> p.values == [p.needles[0].value] and p.needles[0].text.startswith("One of the special magic")
    True
    >>> text, where = p.assemble("abcdef", p.points([0, 3, 6], 6), [n.text for n in p.needles], p.query)
    >>> text.startswith("abc" + p.needles[0].text) and where == {0: 3}
    True

Random draws. The byte tokenizer's prompts and the HF prompts draw from two streams
(``stream="byte"`` / ``"hf"``), each in the order its original generator drew, so that the
prompts of existing runs are reproduced exactly:

- ``byte``: ``Random(f"{variant}/{seed}")`` draws the keys, the values, then the haystack's
  first draw (the sentence it starts at; only when the prompt has haystack text at all,
  ``filler=True``), then the depths of the needles after the first. The haystack continues
  from the state after the values.
- ``hf``: ``Random(f"hf/{variant}/{seed}")`` draws the keys, the values, then the depths;
  the haystack draws from its own ``Random(f"hf/{variant}/{seed}/filler")``.

(A variant whose haystack is made of needles and that has several needles would, in the
byte stream, draw the other depths before the haystack's needles; the original generator
drew them after, but no such variant exists.)
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from .haystack import haystack_sentences
from .vocab import ADJECTIVES, NOUNS

KEY_KINDS = ("words", "uuids")
VALUE_KINDS = ("numbers", "uuids", "words")
SINGULAR = {"numbers": "number", "uuids": "uuid", "words": "word"}
# the longest key / value of each kind, as text (for the shortest context that fits any sample)
LONGEST_KEY = {"words": max(ADJECTIVES, key=len) + "-" + max(NOUNS, key=len), "uuids": "x" * 36}
LONGEST_VALUE = {"numbers": "9" * 7, "uuids": "x" * 36, "words": max(NOUNS, key=len)}


@dataclass(frozen=True)
class Variant:
    """A needle task (RULER's names): which haystack, what keys and values, how many needles."""

    haystack: str  # "noise", "essay", or "needle": a haystack made of other needles
    key_kind: str  # "words" (adjective-noun) or "uuids"
    value_kind: str  # "numbers" (7 digits), "uuids" or "words" (a noun)
    n_distractors: int = 0  # needles with other keys, not asked for
    n_values: int = 1  # values per queried key
    n_queries: int = 1  # keys asked for at once

    def __post_init__(self):
        if self.key_kind not in KEY_KINDS or self.value_kind not in VALUE_KINDS:
            raise ValueError(f"Variant: key_kind must be one of {KEY_KINDS} and value_kind one of "
                             f"{VALUE_KINDS}, got {self.key_kind!r}, {self.value_kind!r}")

    @property
    def n_answers(self) -> int:
        """Gold values the model must produce."""
        return self.n_queries * self.n_values

    @property
    def n_needles(self) -> int:
        return self.n_answers + self.n_distractors

    @property
    def longest_key(self) -> str:
        return LONGEST_KEY[self.key_kind]

    @property
    def longest_value(self) -> str:
        return LONGEST_VALUE[self.value_kind]

    @property
    def value_len(self) -> int:
        """Characters (= byte tokens: values are ASCII) of the longest value."""
        return len(self.longest_value)


VARIANTS: dict[str, Variant] = {
    "single_1": Variant("noise", "words", "numbers"),
    "single_2": Variant("essay", "words", "numbers"),
    "single_3": Variant("essay", "words", "uuids"),
    "single_word": Variant("essay", "words", "words"),
    "multikey_1": Variant("essay", "words", "numbers", n_distractors=3),
    "multikey_2": Variant("needle", "words", "numbers"),
    "multikey_3": Variant("needle", "uuids", "uuids"),
    "multivalue": Variant("essay", "words", "numbers", n_values=4),
    "multiquery": Variant("essay", "words", "numbers", n_queries=4),
}


def get_variant(name: str) -> Variant:
    """``VARIANTS[name]``, or a ValueError listing the valid names."""
    if name not in VARIANTS:
        raise ValueError(f"variant: unknown {name!r}; valid: {', '.join(VARIANTS)}")
    return VARIANTS[name]


# ---- text ---------------------------------------------------------------------------------
def batch_depths(n, context_len, depths, *, min_context_len: int = 1) -> list[float]:
    """Check a batch's ``n`` and ``context_len`` and spread its ``depths``: one float for every
    sample, a list of ``n`` floats, or None for evenly spread depths (i + 0.5) / n."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: must be a positive integer, got {n!r}")
    if isinstance(context_len, bool) or not isinstance(context_len, int) or context_len < min_context_len:
        need = "a positive integer" if min_context_len == 1 else f"an integer >= {min_context_len}"
        raise ValueError(f"context_len: must be {need}, got {context_len!r}")
    if depths is None:
        depths = [(i + 0.5) / n for i in range(n)]
    elif isinstance(depths, (int, float)):
        depths = [float(depths)] * n
    depths = list(depths)
    if len(depths) != n:
        raise ValueError(f"depths: got {len(depths)} depths for n={n} samples")
    return depths


def draw_key(rng: random.Random, kind: str) -> str:
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def draw_value(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return rng.choice(NOUNS)


def needle_text(key: str, value: str, value_kind: str) -> tuple[str, int]:
    """The needle sentence and the character offset of the value inside it."""
    head = f"One of the special magic {value_kind} for {key} is: "
    return f"{head}{value}. ", len(head)


def query_text(keys: Sequence[str], value_kind: str, n_values: int) -> str:
    """The question at the end of the prompt (ends with ``": "``; the HF prompts strip the space)."""
    if len(keys) > 1:
        ks = ", ".join(keys[:-1]) + f", and {keys[-1]}"
        return f"\nThe special magic {value_kind} for {ks} are: "
    if n_values > 1:
        return f"\nThe special magic {value_kind} for {keys[0]} are: "
    return f"\nThe special magic {SINGULAR[value_kind]} for {keys[0]} is: "


# ---- the plan -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Needle:
    key: str
    value: str
    gold: bool  # asked for (False: a distractor)
    text: str  # the sentence, ending with ". "
    value_offset: int  # character offset of the value inside ``text``


@dataclass(frozen=True)
class NeedlePlan:
    """What a needle prompt says and where (see the module doc); tokenizer-free."""

    variant: str
    spec: Variant
    haystack: str  # the haystack used: the variant's, an override, or "needle"
    keys: tuple[str, ...]  # the queried keys, in the query's order
    needles: tuple[Needle, ...]  # gold needles (key by key, value by value), then distractors
    query: str  # query_text(...), ending with ": "
    depth: float  # requested relative depth of the first needle
    depths: tuple[float, ...]  # relative depth of every needle
    order: tuple[int, ...]  # needle indices by depth: the order they appear in the prompt
    filler_state: tuple = field(repr=False)  # Random state the haystack sentences are drawn from

    @property
    def gold(self) -> list[int]:
        return [j for j, n in enumerate(self.needles) if n.gold]

    @property
    def values(self) -> list[str]:
        """The gold values, in the order they must be produced."""
        return [n.value for n in self.needles if n.gold]

    def filler(self) -> Iterator[str]:
        """The haystack's sentences, endlessly (each ends with a space): consecutive sentences of
        the haystack text from a random start, or needles with other keys for ``"needle"``."""
        rng = random.Random()
        rng.setstate(self.filler_state)
        if self.haystack == "needle":
            avoid = {n.key for n in self.needles}
            while True:
                k = draw_key(rng, self.spec.key_kind)
                if k in avoid:
                    continue
                yield needle_text(k, draw_value(rng, self.spec.value_kind), self.spec.value_kind)[0]
        sents = haystack_sentences(self.haystack)
        i = rng.randrange(len(sents))
        while True:
            yield sents[i % len(sents)]
            i += 1

    def points(self, bounds: Sequence[int], total: int) -> list[tuple[int, int]]:
        """``(needle, offset)`` in prompt order: each needle goes at the haystack boundary
        (``bounds``, in the encoder's units) nearest ``depth * total``, the smaller on a tie."""
        return [(j, min(bounds, key=lambda b: (abs(b - self.depths[j] * total), b))) for j in self.order]

    def assemble(self, filler, points, pieces, query, start=None):
        """``start`` + the haystack ``filler`` with needle piece ``pieces[j]`` inserted at each
        ``(j, offset)`` of ``points`` + ``query``, and where each needle starts.

        Works in any unit: text (str pieces, offsets in characters) or tokens (lists)."""
        parts = [filler[:0] if start is None else start]
        pos, prev, where = len(parts[0]), 0, {}
        for j, p in points:
            parts.append(filler[prev:p])
            pos += p - prev
            prev = p
            where[j] = pos
            parts.append(pieces[j])
            pos += len(pieces[j])
        parts += [filler[prev:], query]
        if isinstance(parts[0], str):
            return "".join(parts), where
        return list(itertools.chain.from_iterable(parts)), where


def needle_plan(variant: str, *, seed: int, depth: float, haystack: str | None = None,
                stream: str = "byte", filler: bool = True) -> NeedlePlan:
    """The plan of one needle prompt (a pure function of its arguments; see the module doc).

    ``haystack`` replaces the variant's own (not a haystack made of needles). ``filler=False``:
    the prompt will hold no haystack text (the byte stream then skips the haystack's draw)."""
    spec = get_variant(variant)
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth: must lie in [0, 1], got {depth}")
    if stream not in ("byte", "hf"):
        raise ValueError(f"stream: 'byte' or 'hf', got {stream!r}")
    hay = haystack if haystack is not None and spec.haystack != "needle" else spec.haystack
    rng = random.Random(f"{variant}/{seed}" if stream == "byte" else f"hf/{variant}/{seed}")
    keys: list[str] = []
    while len(keys) < spec.n_queries + spec.n_distractors:
        k = draw_key(rng, spec.key_kind)
        if k not in keys:
            keys.append(k)
    query_keys, distract_keys = keys[:spec.n_queries], keys[spec.n_queries:]
    drawn = []  # (key, value, gold); multivalue repeats the key with several values
    for k in query_keys:
        vals: list[str] = []
        while len(vals) < spec.n_values:
            v = draw_value(rng, spec.value_kind)
            if v not in vals:
                vals.append(v)
        drawn += [(k, v, True) for v in vals]
    drawn += [(k, draw_value(rng, spec.value_kind), False) for k in distract_keys]
    needles = tuple(Needle(k, v, g, *needle_text(k, v, spec.value_kind)) for k, v, g in drawn)
    if stream == "byte":
        filler_state = rng.getstate()
        if filler and hay != "needle":
            rng.randrange(len(haystack_sentences(hay)))  # the haystack's start, as filler() draws it
    else:
        filler_state = random.Random(f"hf/{variant}/{seed}/filler").getstate()
    depths = (float(depth),) + tuple(rng.random() for _ in needles[1:])
    order = tuple(sorted(range(len(needles)), key=lambda j: (depths[j], j)))
    return NeedlePlan(variant=variant, spec=spec, haystack=hay, keys=tuple(query_keys), needles=needles,
                      query=query_text(query_keys, spec.value_kind, spec.n_values), depth=float(depth),
                      depths=depths, order=order, filler_state=filler_state)
