"""Needle-in-a-haystack tasks with RULER's vocabulary and exact answer positions.

Every generator is a pure function of its keyword arguments (``seed`` included) and returns
token ids plus, per sample, the token spans ``[s, e)`` of every gold answer inside the
context, the needle depth, the context length and the query position (the last prompt
token, whose next-token prediction is the first answer token). What a prompt says and where
(keys, values, needle sentences, depths, haystack) is planned as text by
``tasks.plan.needle_plan``; this module encodes the plan with the byte tokenizer.

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

from dataclasses import dataclass, field

import torch

from .plan import SINGULAR, VARIANTS, Variant, batch_depths, get_variant, needle_plan, needle_text, query_text
from .tokenizer import TOKENIZER

__all__ = ["VARIANTS", "SINGULAR", "Variant", "NeedleSample", "NeedleBatch", "needle_text", "query_text",
           "string_match_all", "min_context_len", "make_sample", "niah_batch", "niah_grid"]


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


def string_match_all(prediction: str, values: list[str]) -> float:
    """RULER's metric: fraction of gold values that appear in the prediction (case-insensitive)."""
    p = prediction.lower()
    return sum(v.lower() in p for v in values) / max(len(values), 1)


def _filler(plan, n_tokens: int) -> tuple[list[int], list[int]]:
    """n_tokens of the plan's haystack as tokens and the token offsets of its sentence boundaries."""
    if n_tokens <= 0:
        return [], [0]
    toks: list[int] = []
    bounds = [0]
    for sent in plan.filler():
        toks += TOKENIZER.encode(sent)
        bounds.append(len(toks))
        if len(toks) >= n_tokens:
            break
    return toks[:n_tokens], [b for b in bounds if b <= n_tokens]


def min_context_len(variant: str) -> int:
    """The shortest context that every sample of ``variant`` fits in (longest keys and values;
    a given sample may fit in less)."""
    v = get_variant(variant)
    needle = len(TOKENIZER.encode(needle_text(v.longest_key, v.longest_value, v.value_kind)[0]))
    query = len(TOKENIZER.encode(query_text([v.longest_key] * v.n_queries, v.value_kind, v.n_values)))
    return 1 + needle * v.n_needles + query


def make_sample(*, context_len: int, depth: float, seed: int, variant: str = "single_1",
                haystack: str | None = None) -> NeedleSample:
    """One needle prompt of exactly ``context_len`` tokens (a pure function of its arguments):
    BOS, the ``tasks.plan.needle_plan`` with its needles at haystack sentence boundaries, the query."""
    plan = needle_plan(variant, seed=seed, depth=depth, haystack=haystack, filler=False)
    needle_toks = [TOKENIZER.encode(n.text) for n in plan.needles]
    q_toks = TOKENIZER.encode(plan.query)
    budget = context_len - 1 - sum(map(len, needle_toks)) - len(q_toks)
    if budget < 0:  # depends on this sample's key/value lengths; min_context_len() fits all
        need = context_len - budget
        raise ValueError(
            f"context_len: {context_len} tokens is too short for variant {variant!r}, whose needle(s) "
            f"and query alone take {need - 1} tokens here; use context_len >= {need} "
            f"(>= {min_context_len(variant)} fits every sample)"
        )
    if budget > 0:  # the same needles, and the haystack's draw (see tasks.plan: random draws)
        plan = needle_plan(variant, seed=seed, depth=depth, haystack=haystack)
    filler, bounds = _filler(plan, budget)
    tokens, where = plan.assemble(filler, plan.points(bounds, budget), needle_toks, q_toks, [TOKENIZER.BOS])
    assert len(tokens) == context_len
    spans = []
    for j in plan.gold:  # needle text offsets are byte offsets: keys and values are ASCII
        n = plan.needles[j]
        start = where[j] + n.value_offset
        spans.append((start, start + len(TOKENIZER.encode(n.value))))
    return NeedleSample(
        tokens=tokens,
        answer_tokens=TOKENIZER.encode(", ".join(plan.values)),
        answer_spans=spans,
        values=plan.values,
        keys=list(plan.keys),
        depth=float(depth),
        needle_pos=where[0],
        context_len=context_len,
        query_pos=context_len - 1,
        variant=variant,
        haystack=plan.haystack,
    )


def niah_batch(*, n: int = 8, context_len: int = 512, seed: int = 0, variant: str = "single_1",
               depths=None, haystack: str | None = None) -> NeedleBatch:
    """``n`` needle prompts of ``context_len`` tokens. ``depths``: one float, a list of n
    floats, or None for evenly spread depths (i + 0.5) / n."""
    depths = batch_depths(n, context_len, depths)
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
