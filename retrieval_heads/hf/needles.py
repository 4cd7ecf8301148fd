"""Needle prompts tokenized with a Hugging Face model's own tokenizer, with exact answer spans.

The prompt is built as text (haystack, needle sentence(s) at the requested depth, query),
tokenized once as a whole, exactly as the model would see it; the haystack is cut so that
the prompt is exactly ``context_len`` tokens. Each gold value's *character* span is mapped
to tokens through the fast tokenizer's ``offset_mapping`` (tokens whose characters overlap
the value), or, for a slow tokenizer, by encoding the text up to the value's first and last
character. The located tokens must decode to exactly the value (up to surrounding
whitespace: byte-level BPE glues the leading space to the first digit); a span that fails
this (e.g. a token ``7.`` that joins the value's last digit to the full stop) is a
``SpanError`` for that sample: ``hf_needle_batch`` drops the sample and records it in
``batch.errors`` (counted and reported by the scan), never a silent zero score.

What the prompt says and where is a ``retrieval_heads.tasks.plan.needle_plan`` (the one
needle generator, shared with the byte-tokenizer prompts of ``tasks.niah``; drawn from its
own random stream, ``stream="hf"``); this module only encodes it. The query ends with ``is:``
(no trailing space) so the first answer token carries its own leading space, as in RULER's
prompts. Clean/corrupted pairs (``hf_needle_pairs``) use ``tasks.pairs``.

    >>> from retrieval_heads.hf.testing import tiny_tokenizer
    >>> tok = tiny_tokenizer()
    >>> b = hf_needle_batch(tok, n=2, context_len=120, seed=0)
    >>> b.tokens.shape, b.errors
    (torch.Size([2, 120]), [])
    >>> s = b.samples[0]; s0, e0 = s.answer_spans[0]
    >>> tok.decode(b.tokens[0, s0:e0].tolist()).strip() == s.values[0]
    True
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field

import torch

from ..tasks.niah import NeedleBatch, NeedleSample
from ..tasks.pairs import NeedlePair, check_single_value, redraw_value
from ..tasks.plan import NeedlePlan, batch_depths, needle_plan


class SpanError(ValueError):
    """An answer span that cannot be located in the tokenized prompt (an error for that sample)."""


@dataclass
class HFNeedleBatch(NeedleBatch):
    """A ``NeedleBatch`` built with an HF tokenizer; ``errors`` lists the samples that failed."""

    errors: list[tuple[int, str]] = field(default_factory=list)  # (requested index, message)
    tokenizer_name: str = ""
    n_requested: int = 0
    texts: list[str] = field(default_factory=list)  # the prompts as text
    char_spans: list[list[tuple[int, int]]] = field(default_factory=list)  # gold values' characters

    def subset(self, idx) -> HFNeedleBatch:
        idx = list(idx)
        return HFNeedleBatch(self.tokens[idx], [self.samples[i] for i in idx], list(self.errors),
                             self.tokenizer_name, self.n_requested, [self.texts[i] for i in idx],
                             [self.char_spans[i] for i in idx])


class _Encoder:
    """Encode text as the model sees it: the tokenizer's leading specials (BOS) + the text's
    tokens, with character offsets; trailing specials (an appended EOS) are dropped."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        with_sp = tokenizer("x", add_special_tokens=True)["input_ids"]
        without = tokenizer("x", add_special_tokens=False)["input_ids"]
        i = next((k for k in range(len(with_sp) - len(without) + 1)
                  if with_sp[k:k + len(without)] == without), 0)
        self.prefix = list(with_sp[:i])
        self.fast = bool(getattr(tokenizer, "is_fast", False))

    def ids(self, text: str) -> list[int]:
        return self.prefix + list(self.tok(text, add_special_tokens=False)["input_ids"])

    def count(self, text: str) -> int:
        return len(self.prefix) + len(self.tok(text, add_special_tokens=False)["input_ids"])

    def span(self, text: str, ids: list[int], offsets, cs: int, ce: int, value: str) -> tuple[int, int]:
        """Token span [s, e) of the characters text[cs:ce] (the value)."""
        p = len(self.prefix)
        if offsets is not None:
            hit = [i for i, (a, b) in enumerate(offsets) if b > a and a < ce and b > cs]
            if not hit:
                raise SpanError(f"value {value!r} (chars {cs}-{ce}) overlaps no token")
            s, e = p + hit[0], p + hit[-1] + 1
        else:  # incremental encoding: tokens of the text up to the value's first / last char
            def common(a, b):
                n = 0
                while n < min(len(a), len(b)) and a[n] == b[n]:
                    n += 1
                return n
            pre, upto = self.ids(text[:cs]), self.ids(text[:ce])
            s = common(pre, ids)
            e = len(upto) if ids[:len(upto)] == upto else common(upto, ids) + 1
        got = self.tok.decode(ids[s:e])
        if e <= s or got.strip() != value:
            raise SpanError(f"tokens {s}:{e} decode to {got!r}, not the value {value!r} (a token joins the "
                            "value to its neighbours)")
        return s, e


def _filler_text(plan: NeedlePlan, n_chars: int) -> tuple[str, list[int]]:
    """At least n_chars of the plan's haystack text and the character offsets where its sentences start."""
    parts, starts, total = [], [], 0
    for s in plan.filler():
        starts.append(total)
        parts.append(s)
        total += len(s)
        if total >= n_chars:
            break
    return "".join(parts), starts


def make_hf_sample(tokenizer, *, context_len: int, depth: float, seed: int, variant: str = "single_1",
                   haystack: str | None = None, encoder: _Encoder | None = None) -> NeedleSample:
    """One needle prompt of exactly ``context_len`` tokens of ``tokenizer`` (pure in its arguments).

    Raises ``SpanError`` when an answer span cannot be located or the length cannot be hit."""
    return _build(tokenizer, context_len=context_len, depth=depth, seed=seed, variant=variant,
                  haystack=haystack, encoder=encoder)[0]


def _build(tokenizer, *, context_len: int, depth: float, seed: int, variant: str, haystack: str | None,
           encoder: _Encoder | None):
    """(sample, prompt text, character spans of the gold values)."""
    plan = needle_plan(variant, seed=seed, depth=depth, haystack=haystack, stream="hf")
    enc = encoder or _Encoder(tokenizer)
    texts = [n.text for n in plan.needles]
    query = plan.query.rstrip()  # "is:": the first answer token carries its own leading space

    def build(filler: str, starts: list[int], n: int):
        """Prompt text with the filler cut at n chars; char spans of every needle's value; the
        first needle's first character."""
        bounds = starts[:bisect.bisect_right(starts, n)] or [0]
        text, where = plan.assemble(filler[:n], plan.points(bounds, n), texts, query)
        spans = {j: (where[j] + plan.needles[j].value_offset,
                     where[j] + plan.needles[j].value_offset + len(plan.needles[j].value)) for j in where}
        return text, spans, where[0]

    if enc.count(build("", [0], 0)[0]) > context_len:
        need = enc.count(build("", [0], 0)[0])
        raise ValueError(f"context_len: {context_len} tokens is too short for variant {variant!r}, whose "
                         f"needle(s) and query alone take {need} tokens; use context_len >= {need}")
    n_chars = 8 * context_len + 64
    while True:
        filler, starts = _filler_text(plan, n_chars)
        if enc.count(build(filler, starts, len(filler))[0]) >= context_len:
            break
        n_chars *= 2
    # cut points: word boundaries, then single characters near the best one
    cuts = [0] + [i + 1 for i, c in enumerate(filler) if c == " "] + [len(filler)]
    lo, hi = 0, len(cuts) - 1  # largest cut with count <= context_len
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if enc.count(build(filler, starts, cuts[mid])[0]) <= context_len:
            lo = mid
        else:
            hi = mid - 1
    n = None
    for c in [cuts[lo]] + list(range(cuts[lo] + 1, cuts[min(lo + 1, len(cuts) - 1)])) \
            + list(range(cuts[lo] - 1, cuts[max(lo - 1, 0)], -1)):
        if enc.count(build(filler, starts, c)[0]) == context_len:
            n = c
            break
    if n is None:
        raise SpanError(f"cannot cut the haystack to exactly {context_len} tokens")
    text, spans, needle_char = build(filler, starts, n)
    if enc.fast:
        out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = [tuple(o) for o in out["offset_mapping"]]
        ids = enc.prefix + list(out["input_ids"])
    else:
        offsets, ids = None, enc.ids(text)
    assert len(ids) == context_len
    tok_spans = {j: enc.span(text, ids, offsets, cs, ce, plan.needles[j].value) for j, (cs, ce) in spans.items()}
    gold, values = plan.gold, plan.values
    # needle_pos: the token holding the first needle's first character
    if offsets is not None:
        needle_pos = len(enc.prefix) + next((i for i, (a, b) in enumerate(offsets) if b > needle_char), 0)
    else:
        needle_pos = len(enc.ids(text[:needle_char]))
    answer = " " + ", ".join(values)
    full = enc.ids(text + answer)
    answer_tokens = full[len(ids):] if full[:len(ids)] == ids else enc.ids(answer)[len(enc.prefix):]
    sample = NeedleSample(tokens=ids, answer_tokens=answer_tokens, answer_spans=[tok_spans[j] for j in gold],
                          values=values, keys=list(plan.keys), depth=float(depth), needle_pos=int(needle_pos),
                          context_len=context_len, query_pos=context_len - 1, variant=variant,
                          haystack=plan.haystack)
    return sample, text, [spans[j] for j in gold]


def hf_needle_batch(tokenizer, *, n: int = 8, context_len: int = 512, seed: int = 0,
                    variant: str = "single_1", depths=None, haystack: str | None = None) -> HFNeedleBatch:
    """``n`` needle prompts of exactly ``context_len`` tokens of ``tokenizer``.

    ``depths``: one float, a list of n floats, or None for (i + 0.5) / n. Samples whose answer
    span cannot be located are left out and listed in ``.errors``; if none is left, ValueError."""
    depths = batch_depths(n, context_len, depths, min_context_len=2)
    enc = _Encoder(tokenizer)
    samples, errors, texts, chars = [], [], [], []
    for i, d in enumerate(depths):
        try:
            s, text, cs = _build(tokenizer, context_len=context_len, depth=d, seed=seed * 100_003 + i,
                                 variant=variant, haystack=haystack, encoder=enc)
        except SpanError as e:
            errors.append((i, str(e)))
            continue
        samples.append(s)
        texts.append(text)
        chars.append(cs)
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if not samples:
        raise ValueError(f"needles: no sample could be built with tokenizer {name!r}; first error: "
                         f"{errors[0][1]}")
    tokens = torch.tensor([s.tokens for s in samples], dtype=torch.long)  # (n_ok, T)
    return HFNeedleBatch(tokens=tokens, samples=samples, errors=errors, tokenizer_name=str(name),
                         n_requested=n, texts=texts, char_spans=chars)


def hf_needle_pairs(tokenizer, *, n: int = 4, context_len: int = 256, seed: int = 0, variant: str = "single_1",
                    depths=None, haystack: str | None = None, tries: int = 50):
    """Clean / corrupted prompt pairs for ``interventions.activation_patching`` with an HF tokenizer.

    The corrupted prompt replaces the needle value by another of the same format such that the
    token count is unchanged, only tokens inside the answer span differ and the answer's first
    token differs. Samples where no such value is found within ``tries`` go to ``.errors``."""
    batch = hf_needle_batch(tokenizer, n=n, context_len=context_len, seed=seed, variant=variant,
                            depths=depths, haystack=haystack)
    enc = _Encoder(tokenizer)
    rng = random.Random(f"hf-corrupt/{variant}/{seed}")
    keep, corrupt, ct, kt, spans = [], [], [], [], []
    errors = list(batch.errors)
    check_single_value(batch.samples, variant)
    for i, (s, text, cs) in enumerate(zip(batch.samples, batch.texts, batch.char_spans)):
        (a, e), (c0, c1) = s.answer_spans[0], cs[0]
        for _ in range(tries):
            new = redraw_value(s.values[0], rng)
            if new == s.values[0]:
                continue
            ids = enc.ids(text[:c0] + new + text[c1:])
            if len(ids) != len(s.tokens) or ids[:a] != s.tokens[:a] or ids[e:] != s.tokens[e:]:
                continue
            full = enc.ids(text[:c0] + new + text[c1:] + " " + new)
            first = full[len(ids)] if len(full) > len(ids) and full[:len(ids)] == ids else None
            if first is None or first == s.answer_tokens[0]:
                continue
            keep.append(i)
            corrupt.append(ids)
            ct.append(s.answer_tokens[0])
            kt.append(first)
            spans.append((a, e))
            break
        else:
            errors.append((i, f"no corrupted value of {s.values[0]!r} keeps the tokenization outside the span"))
    if not keep:
        raise ValueError(f"needle pairs: no pair could be built; first error: {errors[0][1]}")
    return NeedlePair(clean=batch.tokens[keep], corrupt=torch.tensor(corrupt, dtype=torch.long),
                      clean_token=torch.tensor(ct), corrupt_token=torch.tensor(kt), answer_spans=spans,
                      samples=[batch.samples[i] for i in keep], errors=errors)
