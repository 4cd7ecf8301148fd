"""Needle-in-a-haystack tasks with RULER's vocabulary and exact answer positions.

Every generator is a pure function of its keyword arguments (``seed`` included) and returns
token ids plus, per sample, the token spans ``[s, e)`` of every gold answer inside the
context, the needle depth, the context length and the query position (the last prompt
token, whose next-token prediction is the first answer token).

Variants (RULER names)::

    single_1   noise haystack, 7-digit number        multikey_1  essay + 3 distractor needles
    single_2   essay haystack, 7-digit number        multikey_2  haystack made of needles
    single_3   essay haystack, UUID                  multikey_3  needle haystack, UUID keys+values
    single_word  essay haystack, word value          multivalue  4 values for one key
                                                     multiquery  4 keys asked at once

Worked example::

    >>> b = niah_batch(n=2, context_len=200, seed=0, variant="single_1")
    >>> b.tokens.shape
    torch.Size([2, 200])
    >>> s = b.samples[0]; s0, e0 = s.answer_spans[0]
    >>> TOKENIZER.decode(b.tokens[0, s0:e0].tolist()) == s.values[0]
    True
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field

import torch

from .haystack import haystack_sentences
from .tokenizer import TOKENIZER
from .vocab import ADJECTIVES, NOUNS

VARIANTS = {
    # name: (haystack, key type, value type, distractor needles, values per key, queries)
    "single_1": ("noise", "words", "numbers", 0, 1, 1),
    "single_2": ("essay", "words", "numbers", 0, 1, 1),
    "single_3": ("essay", "words", "uuids", 0, 1, 1),
    "single_word": ("essay", "words", "words", 0, 1, 1),
    "multikey_1": ("essay", "words", "numbers", 3, 1, 1),
    "multikey_2": ("needle", "words", "numbers", 0, 1, 1),
    "multikey_3": ("needle", "uuids", "uuids", 0, 1, 1),
    "multivalue": ("essay", "words", "numbers", 0, 4, 1),
    "multiquery": ("essay", "words", "numbers", 0, 1, 4),
}
SINGULAR = {"numbers": "number", "uuids": "uuid", "words": "word"}


@dataclass
class NeedleSample:
    tokens: list[int]  # the prompt: BOS, haystack with needle(s), query
    answer_tokens: list[int]  # what the model must produce next (then EOS)
    answer_spans: list[tuple[int, int]]  # token spans [s, e) of each gold value in `tokens`
    values: list[str]  # gold values, in the order they must be produced
    keys: list[str]
    depth: float  # requested relative depth of the (first) needle in the haystack
    needle_pos: int  # token index where the (first) needle starts
    context_len: int  # len(tokens)
    query_pos: int  # len(tokens) - 1
    variant: str
    haystack: str


@dataclass
class NeedleBatch:
    tokens: torch.Tensor  # (n, T) prompts, all the same length
    samples: list[NeedleSample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def query_pos(self) -> torch.Tensor:
        return torch.tensor([s.query_pos for s in self.samples], dtype=torch.long)

    @property
    def answer_spans(self) -> list[list[tuple[int, int]]]:
        return [s.answer_spans for s in self.samples]

    @property
    def depths(self) -> list[float]:
        return [s.depth for s in self.samples]

    def subset(self, idx) -> NeedleBatch:
        idx = list(idx)
        return NeedleBatch(self.tokens[idx], [self.samples[i] for i in idx])


def _key(rng: random.Random, kind: str) -> str:
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def _value(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return rng.choice(NOUNS)


def needle_text(key: str, value: str, value_kind: str) -> tuple[str, int]:
    """The needle sentence and the character offset of the value inside it."""
    head = f"One of the special magic {value_kind} for {key} is: "
    return f"{head}{value}. ", len(head)


def query_text(keys: list[str], value_kind: str, n_values: int) -> str:
    if len(keys) > 1:
        ks = ", ".join(keys[:-1]) + f", and {keys[-1]}"
        return f"\nThe special magic {value_kind} for {ks} are: "
    if n_values > 1:
        return f"\nThe special magic {value_kind} for {keys[0]} are: "
    return f"\nThe special magic {SINGULAR[value_kind]} for {keys[0]} is: "


def string_match_all(prediction: str, values: list[str]) -> float:
    """RULER's metric: fraction of gold values that appear in the prediction (case-insensitive)."""
    p = prediction.lower()
    return sum(v.lower() in p for v in values) / max(len(values), 1)


def _filler(rng: random.Random, haystack: str, n_tokens: int, key_kind: str, value_kind: str,
            avoid_keys: set[str]) -> tuple[list[int], list[int]]:
    """n_tokens of haystack tokens and the token offsets of its sentence boundaries."""
    if n_tokens <= 0:
        return [], [0]
    toks: list[int] = []
    bounds = [0]
    if haystack == "needle":
        while len(toks) < n_tokens:
            k = _key(rng, key_kind)
            if k in avoid_keys:
                continue
            toks += TOKENIZER.encode(needle_text(k, _value(rng, value_kind), value_kind)[0])
            bounds.append(len(toks))
    else:
        sents = haystack_sentences(haystack)
        i = rng.randrange(len(sents))
        while len(toks) < n_tokens:
            toks += TOKENIZER.encode(sents[i % len(sents)])
            bounds.append(len(toks))
            i += 1
    toks = toks[:n_tokens]
    bounds = [b for b in bounds if b <= n_tokens]
    return toks, bounds


def min_context_len(variant: str) -> int:
    """The shortest context that every sample of ``variant`` fits in (longest keys and values;
    a given sample may fit in less)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: unknown {variant!r}; valid: {', '.join(VARIANTS)}")
    _, key_kind, value_kind, n_distract, n_values, n_queries = VARIANTS[variant]
    longest = {"words": max(ADJECTIVES, key=len) + "-" + max(NOUNS, key=len), "uuids": "x" * 36,
               "numbers": "9" * 7}
    key = longest[key_kind]
    value = longest[value_kind] if value_kind != "words" else max(NOUNS, key=len)
    needle = len(TOKENIZER.encode(needle_text(key, value, value_kind)[0]))
    query = len(TOKENIZER.encode(query_text([key] * n_queries, value_kind, n_values)))
    return 1 + needle * (n_queries * n_values + n_distract) + query


def make_sample(*, context_len: int, depth: float, seed: int, variant: str = "single_1",
                haystack: str | None = None) -> NeedleSample:
    """One needle prompt of exactly ``context_len`` tokens (a pure function of its arguments)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: unknown {variant!r}; valid: {', '.join(VARIANTS)}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth: must lie in [0, 1], got {depth}")
    hay, key_kind, value_kind, n_distract, n_values, n_queries = VARIANTS[variant]
    if haystack is not None and hay != "needle":
        hay = haystack
    rng = random.Random(f"{variant}/{seed}")
    keys: list[str] = []
    while len(keys) < n_queries + n_distract:
        k = _key(rng, key_kind)
        if k not in keys:
            keys.append(k)
    query_keys, distract_keys = keys[:n_queries], keys[n_queries:]
    # needles: (key, value, is_gold); multivalue repeats the key with several values
    needles = []
    for k in query_keys:
        vals: list[str] = []
        while len(vals) < n_values:
            v = _value(rng, value_kind)
            if v not in vals:
                vals.append(v)
        needles += [(k, v, True) for v in vals]
    needles += [(k, _value(rng, value_kind), False) for k in distract_keys]
    needle_toks = [TOKENIZER.encode(needle_text(k, v, value_kind)[0]) for k, v, _ in needles]
    q_toks = TOKENIZER.encode(query_text(query_keys, value_kind, n_values))
    budget = context_len - 1 - sum(map(len, needle_toks)) - len(q_toks)
    if budget < 0:  # depends on this sample's key/value lengths; min_context_len() fits all
        need = context_len - budget
        raise ValueError(
            f"context_len: {context_len} tokens is too short for variant {variant!r}, whose needle(s) "
            f"and query alone take {need - 1} tokens here; use context_len >= {need} "
            f"(>= {min_context_len(variant)} fits every sample)"
        )
    filler, bounds = _filler(rng, hay, budget, key_kind, value_kind, set(keys))
    # insertion points: the first needle at `depth`, the others at random depths
    depths = [depth] + [rng.random() for _ in needles[1:]]
    order = sorted(range(len(needles)), key=lambda j: (depths[j], j))
    points = {j: min(bounds, key=lambda b: (abs(b - depths[j] * budget), b)) for j in order}
    tokens = [TOKENIZER.BOS]
    spans: dict[int, tuple[int, int]] = {}
    needle_pos = 0
    prev = 0
    for j in order:
        p = points[j]
        tokens += filler[prev:p]
        prev = p
        k, v, _ = needles[j]
        start = len(tokens) + needle_text(k, v, value_kind)[1]
        spans[j] = (start, start + len(TOKENIZER.encode(v)))
        if j == 0:
            needle_pos = len(tokens)
        tokens += needle_toks[j]
    tokens += filler[prev:]
    tokens += q_toks
    gold = [j for j, (_, _, g) in enumerate(needles) if g]
    values = [needles[j][1] for j in gold]
    assert len(tokens) == context_len
    return NeedleSample(
        tokens=tokens,
        answer_tokens=TOKENIZER.encode(", ".join(values)),
        answer_spans=[spans[j] for j in gold],
        values=values,
        keys=query_keys,
        depth=float(depth),
        needle_pos=needle_pos,
        context_len=context_len,
        query_pos=context_len - 1,
        variant=variant,
        haystack=hay,
    )


def niah_batch(*, n: int = 8, context_len: int = 512, seed: int = 0, variant: str = "single_1",
               depths=None, haystack: str | None = None) -> NeedleBatch:
    """``n`` needle prompts of ``context_len`` tokens. ``depths``: one float, a list of n
    floats, or None for evenly spread depths (i + 0.5) / n."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: must be a positive integer, got {n!r}")
    if isinstance(context_len, bool) or not isinstance(context_len, int) or context_len < 1:
        raise ValueError(f"context_len: must be a positive integer, got {context_len!r}")
    if depths is None:
        depths = [(i + 0.5) / n for i in range(n)]
    elif isinstance(depths, (int, float)):
        depths = [float(depths)] * n
    depths = list(depths)
    if len(depths) != n:
        raise ValueError(f"depths: got {len(depths)} depths for n={n} samples")
    samples = [make_sample(context_len=context_len, depth=d, seed=seed * 100_003 + i,
                           variant=variant, haystack=haystack) for i, d in enumerate(depths)]
    tokens = torch.tensor([s.tokens for s in samples], dtype=torch.long)  # (n, T)
    return NeedleBatch(tokens=tokens, samples=samples)


def niah_grid(*, context_lens, depths, n_per_cell: int = 1, seed: int = 0,
              variant: str = "single_1", haystack: str | None = None) -> list[NeedleBatch]:
    """One batch per context length, covering every depth ``n_per_cell`` times."""
    out = []
    for L in context_lens:
        ds = [d for d in depths for _ in range(n_per_cell)]
        out.append(niah_batch(n=len(ds), context_len=int(L), seed=seed + int(L), variant=variant,
                              depths=ds, haystack=haystack))
    return out
