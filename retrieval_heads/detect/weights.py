"""Q/K weight distance of each head to a reference checkpoint.

A head's query weights are its ``d_head`` rows of ``W_Q`` (``[n_heads * d_head, d_model]``);
its key weights are the rows of its key/value group in ``W_K`` (grouped-query attention
shares them). Per head::

    l2      = sqrt(||dQ||_F^2 + ||dK||_F^2)
    rel_l2  = l2 / sqrt(||Q_ref||_F^2 + ||K_ref||_F^2)

Attention layers always; recurrent mixers that declare per-head Q/K weights (their class's
``qk_weights``: D and L, not M) when ``recurrent=True``; other layers are NaN.

    >>> import retrieval_heads as rh
    >>> m = rh.HybridLM(rh.ModelConfig(layout="SF", d_model=32, n_heads=2, window=8))
    >>> qk_distance(m, m)["rel_l2"][1].tolist()
    [0.0, 0.0]
"""

from __future__ import annotations

import torch

from ..config import ATTENTION_KINDS, LAYER_KINDS, ModelConfig
from ..model import token_mixer_class


def _state(x) -> dict:
    return x.state_dict() if hasattr(x, "state_dict") else x


def head_qk_slices(state: dict, cfg: ModelConfig, layer: int, recurrent: bool = False):
    """[H, d_key, d_model] query and key row-slices of a layer, or None if it has none. The
    parameter names come from the layer class's ``qk_weights`` (under ``blocks.{l}.attn.`` or
    ``blocks.{l}.mixer.``); key heads are read off the key weight's shape (grouped-query
    attention: one key head per group, repeated for its query heads)."""
    kind = cfg.layout[layer]
    if kind not in LAYER_KINDS or (kind not in ATTENTION_KINDS and not recurrent):
        return None
    cls = token_mixer_class(kind)
    if cls.qk_weights is None:
        return None
    pre = f"blocks.{layer}.{cls.submodule}."
    H = cfg.n_heads
    q = state[pre + cls.qk_weights[0]].detach().float()
    q = q.view(H, q.shape[0] // H, -1)  # (H, D, d_model)
    k = state[pre + cls.qk_weights[1]].detach().float()
    k = k.view(k.shape[0] // q.shape[1], q.shape[1], -1)  # (Hkv, D, d_model)
    k = k.repeat_interleave(H // k.shape[0], dim=0)  # (H, D, d_model)
    return q, k


def qk_distance(model, reference, cfg: ModelConfig | None = None, recurrent: bool = False) -> dict:
    """{"l2": [L, H], "rel_l2": [L, H]} distances of ``model``'s heads to ``reference``'s
    (models or state dicts; ``cfg`` is needed for state dicts)."""
    cfg = cfg or getattr(model, "cfg", None) or getattr(reference, "cfg", None)
    if cfg is None:
        raise ValueError("qk_distance: pass cfg= when comparing state dicts")
    a, b = _state(model), _state(reference)
    L, H = cfg.n_layers, cfg.n_heads
    l2 = torch.full((L, H), float("nan"))
    rel = torch.full((L, H), float("nan"))
    for l in range(L):
        sa, sb = head_qk_slices(a, cfg, l, recurrent), head_qk_slices(b, cfg, l, recurrent)
        if sa is None:
            continue
        (qa, ka), (qb, kb) = sa, sb
        d2 = (qa - qb).pow(2).sum((1, 2)) + (ka - kb).pow(2).sum((1, 2))  # (H,)
        r2 = qb.pow(2).sum((1, 2)) + kb.pow(2).sum((1, 2))
        l2[l] = d2.sqrt()
        rel[l] = d2.sqrt() / r2.sqrt().clamp_min(1e-12)
    return {"l2": l2, "rel_l2": rel}
