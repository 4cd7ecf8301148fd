"""Naming and choosing heads: ``(layer, head)`` pairs, parsing, top-k and random controls.

Heads can be given as ``[(3, 1), (7, 0)]``, ``{3: [1], 7: [0, 2]}``, ``"L3H1,L7H0"`` or
``["L3H1", "L7H0"]`` (the older ``"3.1"`` form is still read). Every helper returns a sorted
list of ``(layer, head)`` tuples and checks each pair against the model (attention layers
only, head < n_heads); :func:`format_heads` writes them back as ``L3H1,L7H0``.

    >>> cfg = __import__("retrieval_heads").ModelConfig(layout="SSSF", d_model=32, n_heads=2, window=4)
    >>> parse_heads("L3H1, 0.0", cfg)
    [(0, 0), (3, 1)]
    >>> format_heads([(0, 0), (3, 1)])
    'L0H0,L3H1'
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import torch

from ..labels import head_label, parse_head_label

Head = tuple[int, int]


def _cfg(model_or_cfg):
    return getattr(model_or_cfg, "cfg", model_or_cfg)


def parse_heads(heads, model_or_cfg) -> list[Head]:
    """Normalise a head specification to a sorted, duplicate-free list of (layer, head)."""
    cfg = _cfg(model_or_cfg)
    if heads is None:
        return []
    if isinstance(heads, str):
        heads = [h for h in (p.strip() for p in heads.split(",")) if h]
    if isinstance(heads, dict):
        heads = [(l, h) for l, hs in heads.items() for h in ([hs] if isinstance(hs, int) else hs)]
    out = set()
    for item in heads:
        if isinstance(item, str):
            item = parse_head_label(item)
        try:
            layer, head = (int(x) for x in item)
        except (TypeError, ValueError):
            raise ValueError(f"heads: expected (layer, head) pairs, got {item!r}") from None
        if not 0 <= layer < cfg.n_layers:
            raise ValueError(f"heads: layer {layer} out of range; the model has {cfg.n_layers} layers")
        if not cfg.is_attention(layer):
            raise ValueError(
                f"heads: layer {layer} is a {cfg.layer_kind(layer)!r} (recurrent) layer; only attention "
                f"layers {cfg.attention_layers} have heads to ablate"
            )
        if not 0 <= head < cfg.n_heads:
            raise ValueError(f"heads: head {head} out of range; layers have {cfg.n_heads} heads")
        out.add((layer, head))
    return sorted(out)


def format_heads(heads: Iterable[Head]) -> str:
    """``L3H1,L7H0``: the heads with the library's one label (:func:`retrieval_heads.labels.head_label`)."""
    return ",".join(head_label(l, h) for l, h in heads)


def heads_of_kind(model_or_cfg, kinds: str) -> list[Head]:
    """Every head of the attention layers whose layout letter is in ``kinds`` (e.g. "F", "S")."""
    cfg = _cfg(model_or_cfg)
    return [(l, h) for l in cfg.attention_layers if cfg.layer_kind(l) in kinds for h in range(cfg.n_heads)]


def top_heads(scores: torch.Tensor, k: int, model_or_cfg=None, kinds: str | None = None) -> list[Head]:
    """The ``k`` highest-scoring heads of a [n_layers, n_heads] score matrix (NaN = not a head),
    optionally only in layers whose kind is in ``kinds``. Ties break by (layer, head)."""
    scores = torch.as_tensor(scores, dtype=torch.float32)
    if scores.dim() != 2:
        raise ValueError(f"scores: expected a [n_layers, n_heads] matrix, got shape {tuple(scores.shape)}")
    cfg = None if model_or_cfg is None else _cfg(model_or_cfg)
    cands = []
    for l in range(scores.shape[0]):
        if cfg is not None and kinds is not None and cfg.layer_kind(l) not in kinds:
            continue
        for h in range(scores.shape[1]):
            v = float(scores[l, h])
            if v == v:  # not NaN
                cands.append((-v, l, h))
    if k > len(cands):
        raise ValueError(f"top-k: asked for {k} heads but only {len(cands)} are scored"
                         + (f" in layers of kind {kinds!r}" if kinds else ""))
    return sorted((l, h) for _, l, h in sorted(cands)[:k])


def top_ties(scores: torch.Tensor, k: int, model_or_cfg=None, kinds: str | None = None) -> dict | None:
    """The tie that choosing the top ``k`` heads (``top_heads``) had to break, or None: when the
    k-th highest score is shared by more heads than places left at it, {"value", "tied": every
    head at that score, "chosen": those ``top_heads`` took (lowest (layer, head) first),
    "places": how many of the k places the tie decided}.

        >>> s = torch.tensor([[1.0, 1.0], [1.0, 0.5]])
        >>> top_ties(s, 2)
        {'value': 1.0, 'tied': [(0, 0), (0, 1), (1, 0)], 'chosen': [(0, 0), (0, 1)], 'places': 2}
        >>> top_ties(s, 3) is None
        True
    """
    chosen = top_heads(scores, k, model_or_cfg, kinds)
    scores = torch.as_tensor(scores, dtype=torch.float32)
    cfg = None if model_or_cfg is None else _cfg(model_or_cfg)
    kth = min(float(scores[l, h]) for l, h in chosen)
    tied = [(l, h) for l in range(scores.shape[0]) for h in range(scores.shape[1])
            if float(scores[l, h]) == kth and (cfg is None or kinds is None or cfg.layer_kind(l) in kinds)]
    taken = [x for x in chosen if x in tied]
    if len(tied) <= len(taken):
        return None
    return {"value": kth, "tied": tied, "chosen": taken, "places": len(taken)}


def random_heads(pool: Iterable[Head], k: int, seed: int = 0, exclude: Iterable[Head] = ()) -> list[Head]:
    """``k`` heads drawn without replacement from ``pool`` minus ``exclude`` (seeded)."""
    ex = set(map(tuple, exclude))
    cands = sorted(set(map(tuple, pool)) - ex)
    if k > len(cands):
        raise ValueError(f"random heads: asked for {k} but only {len(cands)} candidate heads remain")
    return sorted(random.Random(seed).sample(cands, k))


def same_kind_random(model_or_cfg, heads: list[Head], seed: int = 0) -> list[Head]:
    """Random heads matching ``heads`` layer kind by layer kind (e.g. 2 F + 1 S), disjoint from them."""
    cfg = _cfg(model_or_cfg)
    out: list[Head] = []
    for kind in sorted({cfg.layer_kind(l) for l, _ in heads}):
        n = sum(cfg.layer_kind(l) == kind for l, _ in heads)
        out += random_heads(heads_of_kind(cfg, kind), n, seed=seed, exclude=heads)
    return sorted(out)
