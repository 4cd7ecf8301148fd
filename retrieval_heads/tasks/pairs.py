"""Clean / corrupted needle prompt pairs, for activation patching.

A pair is two prompts of equal length that differ only inside the needle value's span: the
clean prompt of a needle task and a copy whose value is replaced by another one of the same
format. ``needle_pairs`` builds them with our byte tokenizer, ``hf.needles.hf_needle_pairs``
with a Hugging Face tokenizer; ``interventions.activation_patching`` runs either.

The two corruption rules differ because the tokenizers do:

- ``corrupt_value`` (byte tokenizer): same length and character classes, *every* alphanumeric
  character changed and no leading zero, so the value keeps its byte span and the first
  answer token (its first byte) always differs. A word becomes a random lowercase string.
- ``redraw_value`` (HF tokenizers): another value of the format, drawn freely (digits stay
  digits, hex stays hex, a word becomes another noun of the vocabulary). It may equal the
  value or change the tokenization; ``hf_needle_pairs`` redraws until the token count is
  unchanged, only the span's tokens differ and the first answer token differs.

    >>> p = needle_pairs(n=2, context_len=160, seed=0)
    >>> p.clean.shape == p.corrupt.shape and bool((p.clean_token != p.corrupt_token).all())
    True
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field

import torch

from .niah import niah_batch
from .tokenizer import TOKENIZER
from .vocab import NOUNS


@dataclass
class NeedlePair:
    """n clean/corrupted prompt pairs of equal length T; they differ only inside the spans."""

    clean: torch.Tensor  # (n, T)
    corrupt: torch.Tensor  # (n, T)
    clean_token: torch.Tensor  # (n,) first answer token of the clean prompt
    corrupt_token: torch.Tensor  # (n,) first answer token of the corrupted prompt
    answer_spans: list[tuple[int, int]]  # per pair, the span [s, e) of the needle value
    samples: list = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)  # (requested index, why no pair)

    def __len__(self) -> int:
        return self.clean.shape[0]

    @property
    def query_pos(self) -> int:
        return self.clean.shape[1] - 1


def corrupt_value(value: str, rng: random.Random) -> str:
    """Same length and character classes as ``value``, every alphanumeric character changed
    (a digit never becomes a leading zero): the byte tokenizer's rule."""
    out = []
    for ch in value:
        pool = (string.digits if ch.isdigit() else string.hexdigits[:16] if ch in "abcdef"
                else string.ascii_lowercase if ch.islower() else string.ascii_uppercase if ch.isupper() else None)
        if pool is None:
            out.append(ch)
        else:
            out.append(rng.choice([c for c in pool if c != ch and not (not out and c == "0" and ch.isdigit())]))
    return "".join(out)


def redraw_value(value: str, rng: random.Random) -> str:
    """A value of the same kind drawn afresh (digits stay digits, hex stays hex, a word becomes
    another noun); it may equal ``value``: the HF tokenizers' rule (the caller checks)."""
    if value.isalpha():
        return rng.choice([n for n in NOUNS if n != value])
    out = []
    for c in value:
        if c.isdigit():
            out.append(rng.choice("0123456789"))
        elif c in "abcdef":
            out.append(rng.choice("0123456789abcdef"))
        else:
            out.append(c)
    return "".join(out)


def check_single_value(samples, variant: str) -> None:
    """Patching needs one gold value per prompt: a ValueError for multivalue / multiquery."""
    for s in samples:
        if len(s.answer_spans) != 1:
            raise ValueError(f"variant: {variant!r} has {len(s.answer_spans)} gold values; patching "
                             "needs a single-value needle task (single_*, multikey_*)")


def needle_pairs(*, n: int = 4, context_len: int = 256, seed: int = 0, variant: str = "single_1",
                 depths=None, haystack: str | None = None) -> NeedlePair:
    """Clean prompts from ``niah_batch`` and corrupted copies whose needle value is replaced
    by a different value of the same format (``corrupt_value``; the first answer token
    always differs)."""
    batch = niah_batch(n=n, context_len=context_len, seed=seed, variant=variant, depths=depths,
                       haystack=haystack)
    check_single_value(batch.samples, variant)
    rng = random.Random(f"corrupt/{variant}/{seed}")
    corrupt = batch.tokens.clone()
    spans, ct, kt = [], [], []
    for i, s in enumerate(batch.samples):
        a, e = s.answer_spans[0]
        new = TOKENIZER.encode(corrupt_value(s.values[0], rng))
        assert len(new) == e - a and new[0] != s.answer_tokens[0]
        corrupt[i, a:e] = torch.tensor(new)
        spans.append((a, e))
        ct.append(s.answer_tokens[0])
        kt.append(new[0])
    return NeedlePair(clean=batch.tokens, corrupt=corrupt, clean_token=torch.tensor(ct),
                      corrupt_token=torch.tensor(kt), answer_spans=spans, samples=batch.samples)
