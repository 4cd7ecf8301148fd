"""Language-model loss on held-out text: by position bucket (long context) and short context.

The default text is the tail of the built-in ``essay`` haystack: the last
``HELDOUT_FRACTION`` of its bytes, which training never draws LM rows from
(``retrieval_heads.tasks.haystack.text_bytes``); a user text file or folder can be given
instead with ``text=``. Rows are ``BOS`` + a window
of the text, as in training; the loss at position t is that of predicting token t+1.

    >>> import retrieval_heads as rh
    >>> model = rh.HybridLM(rh.ModelConfig(layout="SF", d_model=32, n_heads=2, window=8))
    >>> df = rh.eval.long_context_loss(model, context_len=128, n=2, buckets=4)
    >>> list(df.columns)
    ['start', 'end', 'loss', 'n_tokens', 'context_len']
"""

from __future__ import annotations

import random

import pandas as pd
import torch
import torch.nn.functional as F

from ..tasks import TOKENIZER, load_haystack
from ..tasks.haystack import HELDOUT_FRACTION, text_bytes  # noqa: F401 - re-exported by rh.eval
from .niah import check_length


def heldout_bytes(text: str = "essay", fraction: float | None = None) -> bytes:
    """The evaluation text as bytes: by default ``text_bytes(text, "heldout")`` (the essay's last
    ``HELDOUT_FRACTION``, which training never samples, or the whole of a user's file/folder);
    with ``fraction``, the last ``fraction`` of the text."""
    if fraction is None:
        return text_bytes(text, "heldout")
    data = load_haystack(text).encode("utf-8")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction: must lie in (0, 1], got {fraction}")
    return data[int(len(data) * (1.0 - fraction)):]


def text_rows(context_len: int, n: int, *, text: str = "essay", seed: int = 0,
              fraction: float | None = None) -> torch.Tensor:
    """``n`` rows (n, context_len) of BOS + a window of the held-out text at seeded offsets."""
    data = heldout_bytes(text, fraction)
    m = context_len - 1
    if len(data) < m + 1:
        raise ValueError(f"text: the evaluation text {text!r} has {len(data)} tokens, fewer than "
                         f"context_len={context_len}; use a shorter context or a longer text")
    rng = random.Random(f"eval-text/{text}/{seed}")
    offs = [rng.randrange(len(data) - m) for _ in range(n)]
    return torch.tensor([[TOKENIZER.BOS, *data[o:o + m]] for o in offs], dtype=torch.long)


@torch.no_grad()
def token_losses(model, tokens: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """Per-position next-token loss (n, T-1) of rows ``tokens`` (n, T)."""
    check_length(model, tokens.shape[1])
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, tokens.shape[0], batch_size):
            x = tokens[i:i + batch_size].to(model.device)
            logits = model(x)[:, :-1].float()  # (b, T-1, V)
            out.append(F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none").cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def long_context_loss(model, *, context_len: int | None = None, n: int = 8, buckets=8, text: str = "essay",
                      seed: int = 0, fraction: float | None = None, batch_size: int = 4) -> pd.DataFrame:
    """Mean loss per position bucket [start, end) over ``n`` held-out rows of ``context_len``
    tokens (default ``model.cfg.max_seq_len``). ``buckets``: a count of equal buckets or a
    list of bucket edges."""
    context_len = int(context_len or model.cfg.max_seq_len)
    losses = token_losses(model, text_rows(context_len, n, text=text, seed=seed, fraction=fraction),
                          batch_size)  # (n, T-1)
    T1 = losses.shape[1]
    if isinstance(buckets, int):
        if buckets < 1:
            raise ValueError(f"buckets: must be >= 1, got {buckets}")
        edges = sorted({round(i * T1 / buckets) for i in range(buckets + 1)})
    else:
        edges = sorted({int(e) for e in buckets} | {T1})
        edges = [e for e in edges if 0 <= e <= T1]
        if edges[0] != 0:
            edges = [0] + edges
    rows = []
    for a, b in zip(edges[:-1], edges[1:]):
        part = losses[:, a:b]
        rows.append({"start": a, "end": b, "loss": float(part.mean()), "n_tokens": part.numel(),
                     "context_len": context_len})
    return pd.DataFrame(rows)


def short_context_loss(model, *, context_len: int = 256, n: int = 32, text: str = "essay", seed: int = 0,
                       fraction: float | None = None, batch_size: int = 8) -> float:
    """Mean next-token loss over ``n`` held-out rows of ``context_len`` tokens."""
    losses = token_losses(model, text_rows(context_len, n, text=text, seed=seed, fraction=fraction),
                          batch_size)
    return float(losses.mean())
