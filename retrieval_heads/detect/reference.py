"""O(T^2) references for the detector's rows: full eager passes that materialise every
pattern. Slow and memory-hungry on purpose; the tests check that ``detect.rows`` (O(T))
returns the same rows, argmaxes and scores.

- attention layers: ``hook_pattern`` of one eager forward pass (the T x T pattern);
- recurrent layers: the full effective attention ``W`` from the step-by-step (naive)
  recurrence fed with one-hot values (v_s = e_s, so o_t = W[t, :]), normalised |W| / sum |W|.
"""

from __future__ import annotations

import torch

from ..model import recurrence
from .rows import RECURRENT_TYPES, HybridRows, normalise_effective


def full_effective_attention(mixer, q, k, log_a, beta=None) -> torch.Tensor:
    """(B, H, T, T) effective attention of a recurrent mixer from its hooked inputs
    (q, k: [B, T, H, Dk]; log_a, beta: [B, T, H]) via the naive recurrence."""
    t = lambda x: None if x is None else x.transpose(1, 2).double()  # (B, H, T, ...)
    q, k, log_a, beta = t(q), t(k), t(log_a), t(beta)
    B, H, T, _ = q.shape
    eye = torch.eye(T, dtype=q.dtype).expand(B, H, T, T)  # one-hot values, (B, H, T, T)
    if mixer.uses_beta:
        o, _ = recurrence.naive_gated_delta_rule(q, k, eye, beta, log_a)
    else:
        o, _ = recurrence.naive_decay_linear_attention(q, k, eye, log_a)
    return o.float()  # (B, H, T, T): row t = W[t, :]


@torch.no_grad()
def eager_rows(model, tokens: torch.Tensor, query_pos: list[int], *, recurrent: bool = False) -> dict:
    """Rows (B, H, nq, T) at ``query_pos`` cut out of full T x T patterns of an eager pass."""
    src = HybridRows(model)
    layers = src.scorable_layers(recurrent)
    pats: dict = {}
    hooks = []
    for l in layers:
        if src.layer_types[l] in RECURRENT_TYPES:
            for n in ("q", "k", "decay", "beta"):
                hooks.append((f"blocks.{l}.mixer.hook_{n}",
                              lambda x, hook, l=l, n=n: pats.setdefault(l, {}).__setitem__(n, x.detach())))
        else:
            hooks.append((f"blocks.{l}.attn.hook_pattern",
                          lambda p, hook, l=l: pats.__setitem__(l, p.detach().float())))
    with model.hooks(fwd_hooks=hooks):
        model(tokens)
    idx = torch.as_tensor(list(query_pos), dtype=torch.long)
    out = {}
    for l in layers:
        if src.layer_types[l] in RECURRENT_TYPES:
            d = pats[l]
            W = full_effective_attention(model.blocks[l].mixer, d["q"], d["k"], d["decay"], d.get("beta"))
            out[l] = normalise_effective(W[:, :, idx])
        else:
            out[l] = pats[l][:, :, idx]  # (B, H, nq, T)
    return out


@torch.no_grad()
def eager_decode_rows(model, tokens: torch.Tensor, generated: torch.Tensor, *,
                      recurrent: bool = False) -> list[dict]:
    """Per-step rows of a decode that produced ``generated`` (B, n), teacher-forced in one
    eager pass over ``tokens + generated[:, :-1]``; step i's row has T + i keys."""
    B, T = tokens.shape
    n = generated.shape[1]
    full = torch.cat([tokens, generated[:, :-1].to(tokens.device)], dim=1)  # (B, T + n - 1)
    rows = eager_rows(model, full, list(range(T - 1, T - 1 + n)), recurrent=recurrent)
    return [{l: r[:, :, i, :T + i] for l, r in rows.items()} for i in range(n)]
