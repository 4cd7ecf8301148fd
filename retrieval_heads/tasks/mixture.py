"""The training data mixture: language-model text, needle tasks and induction practice, as a
pure function of ``(TrainConfig, step)`` (the config holds the seed), so a resumed run sees
exactly the data it would have seen had it never stopped.

A *global* batch of ``cfg.batch_size`` rows of exactly ``cfg.context_len`` tokens is drawn
for every step. Row ``i`` of step ``s`` depends only on ``(cfg, s, i)``; ranks and
gradient-accumulation micro-steps each build only their own rows (``rows=``). Each step has
``round(niah_fraction·B)`` needle rows, ``round(induction_fraction·B)`` induction rows and
LM rows for the rest, at seeded positions:

- **LM rows**: ``BOS`` + a window of the ``cfg.haystack`` text (essay, noise, or a user's
  file/folder) at a random offset. Every next token is a target.
- **Needle rows**: ``prompt + answer_tokens + EOS``, then ``PAD`` up to ``context_len``. The
  prompt is a ``make_sample`` of length ``context_len - answer_reserve(variant)`` at a
  uniform random depth. Targets: the answer tokens and the EOS (weight 1 each); the
  prompt's own tokens get weight ``cfg.niah_context_weight`` (default 0: only the answer
  counts, since haystack text is what LM rows are for); PAD never counts.
- **Induction rows**: ``BOS`` + a random printable string of 8-48 bytes repeated to the end;
  the repeats are targets. Copying from context is what needle retrieval needs, and these
  rows make the induction/retrieval heads form within a CPU budget (with needle rows alone
  the answer tokens are too sparse a signal: the tiny preset then stays at 0% for 4000 steps).

The loss of a batch is the mean over rows of each row's weighted mean token loss (see
``row_loss``), so a needle row, with its 8 answer tokens, weighs as much as an LM row with
255 targets, and the loss of a global batch splits exactly over ranks and micro-steps.

    >>> from retrieval_heads.config import TrainConfig
    >>> cfg = TrainConfig(batch_size=4, context_len=160, niah_fraction=0.5, haystack="noise")
    >>> b = training_batch(cfg, step=0)
    >>> b.tokens.shape, b.is_needle.tolist().count(True)
    (torch.Size([4, 160]), 2)
    >>> bool((training_batch(cfg, step=0).tokens == b.tokens).all())
    True
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .haystack import load_haystack, text_bytes
from .niah import make_sample, min_context_len
from .plan import get_variant
from .tokenizer import TOKENIZER


def answer_reserve(variant: str) -> int:
    """Tokens to keep free after a needle prompt for the longest answer of ``variant`` + EOS."""
    v = get_variant(variant)
    n = v.n_answers
    return n * v.value_len + 2 * (n - 1) + 1  # values joined by ", ", then EOS


def _rng(*parts) -> random.Random:
    return random.Random("/".join(map(str, parts)))


@dataclass
class MixtureBatch:
    tokens: torch.Tensor  # (n, T) input ids
    targets: torch.Tensor  # (n, T) next-token ids; -100 where nothing is predicted
    weights: torch.Tensor  # (n, T) float loss weight per target (0 where targets == -100)
    is_needle: torch.Tensor  # (n,) bool
    rows: list[int]  # global row index of each row


def needle_row(*, context_len: int, variant: str, seed: int, depth: float,
               haystack: str | None = None, context_weight: float = 0.0):
    """(tokens, targets, weights, sample) of one needle training row of ``context_len`` tokens."""
    reserve = answer_reserve(variant)
    prompt_len = context_len - reserve
    need = min_context_len(variant) + reserve
    if context_len < need:
        raise ValueError(f"context_len: {context_len} tokens is too short to train on {variant!r} "
                         f"needles (prompt up to {need - reserve} tokens + answer and EOS up to "
                         f"{reserve}); use context_len >= {need}")
    s = make_sample(context_len=prompt_len, depth=depth, seed=seed, variant=variant, haystack=haystack)
    seq = (s.tokens + s.answer_tokens + [TOKENIZER.EOS])[:context_len]
    n_real = len(seq)
    seq = seq + [TOKENIZER.PAD] * (context_len - n_real)
    tokens = torch.tensor(seq, dtype=torch.long)  # (T,)
    targets = torch.full((context_len,), -100, dtype=torch.long)
    targets[: n_real - 1] = tokens[1:n_real]
    weights = torch.zeros(context_len)
    weights[: n_real - 1] = context_weight
    weights[prompt_len - 1: n_real - 1] = 1.0  # positions predicting the answer tokens and EOS
    return tokens, targets, weights, s


def lm_row(*, context_len: int, haystack: str, seed,
           part: str = "train") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens, targets, weights) of one language-model row: BOS + a window of the text
    (``part="train"``: the built-in essay's held-out tail is never drawn; see ``text_bytes``)."""
    data = text_bytes(haystack, part)
    n = context_len - 1
    if len(data) <= n:
        if part == "heldout" and haystack == "essay":  # tiling would score copying, not language modelling
            raise ValueError(f"context_len: {context_len} tokens is longer than the essay's held-out tail "
                             f"({len(data)} tokens) that the training loop evaluates LM loss on; use a shorter "
                             "context or a long text file as haystack")
        data = data * (n // max(len(data), 1) + 2)
    off = _rng("lm", seed).randrange(len(data) - n)
    tokens = torch.tensor([TOKENIZER.BOS, *data[off: off + n]], dtype=torch.long)  # (T,)
    targets = torch.full((context_len,), -100, dtype=torch.long)
    targets[:-1] = tokens[1:]
    weights = (targets != -100).float()
    return tokens, targets, weights


def induction_row(*, context_len: int, seed, periods: tuple[int, int] = (8, 48)
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens, targets, weights) of a repeated random string: BOS + s s s ... (induction
    practice). ``s`` is ``periods[0]``-``periods[1]`` printable ASCII bytes (uniform; the
    config's ``induction_min_period``/``induction_max_period``); only tokens of the repeats
    count. An SWA layer of window ``w`` can copy a repeat of period ``p`` by itself only when
    ``p < w``, so the periods decide which rows need the full-attention layers."""
    rng = _rng("induction", seed)
    n = rng.randint(*periods)
    s = [rng.randint(32, 126) for _ in range(n)]
    body = (s * (context_len // n + 1))[: context_len - 1]
    tokens = torch.tensor([TOKENIZER.BOS, *body], dtype=torch.long)  # (T,)
    targets = torch.full((context_len,), -100, dtype=torch.long)
    targets[:-1] = tokens[1:]
    weights = (targets != -100).float()
    weights[: n] = 0.0  # the first copy of s cannot be predicted
    return tokens, targets, weights


def row_kinds(cfg, step: int) -> list[str]:
    """Kind of every global row of step ``step``: 'needle', 'induction' or 'lm'."""
    k = round(cfg.niah_fraction * cfg.batch_size)
    j = min(round(cfg.induction_fraction * cfg.batch_size), cfg.batch_size - k)
    kinds = ["needle"] * k + ["induction"] * j + ["lm"] * (cfg.batch_size - k - j)
    _rng("row-kinds", cfg.seed, step).shuffle(kinds)
    return kinds


def needle_rows(cfg, step: int) -> set[int]:
    """Global row indices of step ``step`` that hold needle tasks."""
    return {i for i, k in enumerate(row_kinds(cfg, step)) if k == "needle"}


def training_batch(cfg, step: int, rows=None) -> MixtureBatch:
    """Rows ``rows`` (default: all ``cfg.batch_size``) of the global batch of ``step``."""
    rows = list(range(cfg.batch_size)) if rows is None else [int(r) for r in rows]
    kinds = row_kinds(cfg, step)
    toks, tgts, wts, flags = [], [], [], []
    for r in rows:
        if kinds[r] == "induction":
            t, y, w = induction_row(context_len=cfg.context_len, seed=(cfg.seed, step, r),
                                    periods=(cfg.induction_min_period, cfg.induction_max_period))
        elif kinds[r] == "needle":
            depth = _rng("depth", cfg.seed, step, r).random()
            seed = _rng("needle-seed", cfg.seed, step, r).getrandbits(48)
            t, y, w, _ = needle_row(context_len=cfg.context_len, variant=cfg.niah_variant, seed=seed,
                                    depth=depth, haystack=cfg.niah_haystack,
                                    context_weight=cfg.niah_context_weight)
        else:
            t, y, w = lm_row(context_len=cfg.context_len, haystack=cfg.haystack, seed=(cfg.seed, step, r))
        toks.append(t), tgts.append(y), wts.append(w), flags.append(kinds[r] == "needle")
    return MixtureBatch(torch.stack(toks), torch.stack(tgts), torch.stack(wts),
                        torch.tensor(flags, dtype=torch.bool), rows)


def row_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-row weighted mean cross-entropy: logits (n, T, V), targets/weights (n, T) -> (n,)."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100,
                         reduction="none").view_as(weights)  # (n, T)
    return (ce * weights).sum(1) / weights.sum(1).clamp_min(1e-8)  # (n,)


def eval_lm_batch(cfg, n: int) -> MixtureBatch:
    """A fixed held-out batch of LM rows (seeded apart from every training step; for the
    built-in essay drawn from its held-out tail, which training never samples)."""
    rows = [lm_row(context_len=cfg.context_len, haystack=cfg.haystack, seed=("eval", cfg.seed, i), part="heldout")
            for i in range(n)]
    t, y, w = (torch.stack(x) for x in zip(*rows))
    return MixtureBatch(t, y, w, torch.zeros(n, dtype=torch.bool), list(range(n)))


def check_mixture(cfg) -> None:
    """Raise ``ValueError`` (before anything is written) if the mixture cannot be built."""
    load_haystack(cfg.haystack)
    lm_row(context_len=cfg.context_len, haystack=cfg.haystack, seed=("check",), part="heldout")
    # checked even when niah_fraction == 0: the periodic NIAH evaluation needs a needle too
    needle_row(context_len=cfg.context_len, variant=cfg.niah_variant, seed=0, depth=0.5,
               haystack=cfg.niah_haystack)
