"""Head ablation as a context manager around any forward, ``generate``, evaluation or scan.

    >>> import torch, retrieval_heads as rh
    >>> model = rh.HybridLM(rh.ModelConfig(layout="SF", d_model=32, n_heads=2, window=4))
    >>> x = torch.randint(0, 256, (1, 12))
    >>> with rh.ablate_heads(model, [(1, 0)]):            # zero the output of head 0 of layer 1
    ...     y = model(x)
    >>> with rh.ablate_heads(model, "1.0", method="mean", reference=x):  # mean over x
    ...     y = model(x)

Methods (all act per head, other heads untouched):

- ``"zero"``: the head's output ``hook_z[:, :, h]`` is set to 0 (so it adds nothing to the
  residual stream). Works on the fast attention path: no pattern is materialised.
- ``"mean"``: ``hook_z[:, :, h]`` is replaced by its mean over a reference batch and its
  positions (``reference``: token ids, a ``NeedleBatch``, or precomputed ``means`` from
  ``mean_head_outputs``). Also on the fast path.
- ``"mask"``: the head's attention *scores* are set to ``-inf`` on the keys in ``keys``
  (default: all keys) before the softmax. With a partial mask the head re-normalises over
  the remaining keys (it is blocked from those positions); with all keys masked the row
  has no visible key and the pattern is 0, i.e. the same as ``"zero"``. This needs the eager
  path for that layer (a hook on ``hook_attn_scores`` switches it on). Note that Wu et al.
  (2024) "mask" a head by setting its logits to 0, which makes it attend *uniformly* to every
  key rather than removing it; we never do that.

Hooks are TransformerLens hooks registered as permanent (they survive ``reset_hooks`` and
``run_with_hooks``) with ``prepend=True`` (they run before any caching hook, so a cache
sees the ablated values), and removed when the ``with`` block ends, even on error.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .heads import parse_heads

METHODS = ("zero", "mean", "mask")


def _tokens_of(reference) -> torch.Tensor:
    tokens = getattr(reference, "tokens", reference)
    if not isinstance(tokens, torch.Tensor):
        tokens = torch.as_tensor(tokens, dtype=torch.long)
    return tokens if tokens.dim() == 2 else tokens[None]


@torch.no_grad()
def mean_head_outputs(model, reference, layers=None, positions=None, batch_size: int = 8) -> dict[int, torch.Tensor]:
    """Mean of ``hook_z`` over the reference batch and positions, per attention layer.

    ``reference``: token ids (B, T) or a ``NeedleBatch``. ``positions``: None (all), a list of
    position indices, or a boolean mask (T,). Returns ``{layer: (n_heads, d_head)}``.
    """
    tokens = _tokens_of(reference).to(model.device)
    layers = model.cfg.attention_layers if layers is None else sorted(set(layers))
    sums = {l: 0.0 for l in layers}
    counts = {l: 0 for l in layers}
    sel = slice(None) if positions is None else torch.as_tensor(positions)

    def make_hook(l):
        def hook(z, hook):  # z (B, T, H, D)
            part = z[:, sel]  # (B, t, H, D)
            sums[l] = sums[l] + part.double().sum(dim=(0, 1))  # (H, D)
            counts[l] += part.shape[0] * part.shape[1]
        return hook

    for i in range(0, tokens.shape[0], batch_size):
        model.run_with_hooks(tokens[i:i + batch_size],
                             fwd_hooks=[(f"blocks.{l}.attn.hook_z", make_hook(l)) for l in layers])
    dtype = next(model.parameters()).dtype
    return {l: (sums[l] / max(counts[l], 1)).to(dtype) for l in layers}


def _attach(hp, fn) -> object:
    return hp.add_hook(fn, dir="fwd", is_permanent=True, prepend=True)


def _detach(hp, handle) -> None:
    handle.hook.remove()
    hp.fwd_hooks = [h for h in hp.fwd_hooks if h is not handle]


@contextmanager
def ablate_heads(model, heads, method: str = "zero", *, reference=None, means: dict | None = None,
                 positions=None, keys=None):
    """Ablate ``heads`` (see ``parse_heads`` for the accepted forms) inside a ``with`` block.

    ``method``: ``"zero"``, ``"mean"`` (needs ``reference`` tokens or ``means``) or ``"mask"``.
    ``positions``: query positions to ablate, as indices into each forward call's sequence
    (default all; use it without a decode cache). For ``"mean"`` it also selects the
    reference positions averaged over. ``keys`` (``"mask"`` only): key positions to mask with
    ``-inf`` (default all keys). Yields the list of ablated ``(layer, head)`` pairs.
    """
    if method not in METHODS:
        raise ValueError(f"method: {method!r}; use one of {METHODS}")
    heads = parse_heads(heads, model)
    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        by_layer.setdefault(l, []).append(h)
    if method == "mean" and means is None:
        if reference is None:
            raise ValueError("method='mean' needs reference= (token ids or a NeedleBatch) or means=")
        means = mean_head_outputs(model, reference, layers=list(by_layer), positions=positions)
    if method != "mask" and keys is not None:
        raise ValueError("keys= applies to method='mask' only")
    qsel = slice(None) if positions is None else torch.as_tensor(positions)
    attached = []
    try:
        for l, hs in by_layer.items():
            attn = model.blocks[l].attn
            idx = torch.tensor(hs)
            if method == "mask":
                def hook(scores, hook, idx=idx):  # scores (B, H, Tq, Tk)
                    Tq, Tk = scores.shape[-2:]
                    rows = torch.zeros(Tq, dtype=torch.bool)
                    rows[qsel] = True
                    cols = torch.zeros(Tk, dtype=torch.bool)
                    if keys is None:
                        cols[:] = True
                    else:
                        kk = torch.as_tensor(keys, dtype=torch.long)
                        cols[kk[kk < Tk]] = True  # key index = absolute position (cache included)
                    block = (rows[:, None] & cols[None, :]).to(scores.device)  # (Tq, Tk)
                    scores = scores.clone()
                    scores[:, idx] = scores[:, idx].masked_fill(block, float("-inf"))
                    return scores
                hp = attn.hook_attn_scores
            else:
                if method == "mean":
                    if l not in means:
                        raise ValueError(f"means: no mean head outputs for layer {l}")
                    fill = means[l][idx]  # (h, D)
                else:
                    fill = None

                def hook(z, hook, idx=idx, fill=fill):  # z (B, T, H, D)
                    z = z.clone()
                    if fill is None:
                        z[:, qsel, idx] = 0.0
                    else:
                        tgt = z[:, qsel, idx]
                        z[:, qsel, idx] = fill.to(z.dtype).expand_as(tgt)
                    return z
                hp = attn.hook_z
            attached.append((hp, _attach(hp, hook)))
        yield heads
    finally:
        for hp, handle in reversed(attached):
            _detach(hp, handle)
