"""Activation patching between a clean and a corrupted needle prompt.

The two prompts have the same layout and differ only in the needle's value (same length,
same character classes, a different first character). We run the *corrupted* prompt and
patch in one *clean* activation at a time (denoising), reading the logit difference of the
answer's first token at the query position::

    LD(x)     = logit[clean first token] - logit[corrupt first token]   (mean over pairs)
    recovered = (LD_patched - LD_corrupt) / (LD_clean - LD_corrupt)     (1 = fully restored)

Kinds of patch (``kind=``):

- ``"heads"``: one attention head's output ``blocks.{l}.attn.hook_z[:, :, h]`` at every position;
- ``"resid"``: the residual stream ``blocks.{l}.hook_resid_pre`` at every position, per layer;
- ``"mixer"``: a layer's token-mixer output (``hook_attn_out`` / ``hook_mixer_out``), per layer;
- ``"position"``: ``hook_resid_pre`` of one layer at one position (a layer x position map).

Two backends give identical numbers: ``"tl"`` (TransformerLens hooks, fast attention path)
and ``"nnsight"`` (``nnsight.NNsight`` traces, see ``_nnsight_patching``).

    >>> import retrieval_heads as rh
    >>> model = rh.HybridLM(rh.ModelConfig(layout="SF", d_model=32, n_heads=2, window=8))
    >>> pair = needle_pairs(n=2, context_len=120, seed=0)
    >>> res = activation_patching(model, pair, kind="heads")
    >>> list(res.df.columns[:4])
    ['kind', 'hook', 'layer', 'layer_type']
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..tasks import TOKENIZER
from ..tasks.pairs import NeedlePair, needle_pairs  # the pairs live in tasks; re-exported here

KINDS = ("heads", "resid", "mixer", "position")
__all__ = ["KINDS", "NeedlePair", "needle_pairs", "logit_diff", "Patch", "patch_list", "default_positions",
           "PatchingResult", "activation_patching", "patching_figure"]


# ---- the clean / corrupted pair: tasks.pairs (NeedlePair, needle_pairs) -------------------
def logit_diff(logits: torch.Tensor, pair: NeedlePair) -> float:
    """Mean over pairs of logit[clean token] - logit[corrupt token] at the query position."""
    last = logits[:, pair.query_pos]  # (n, V)
    idx = torch.arange(last.shape[0], device=last.device)
    ct, kt = pair.clean_token.to(last.device), pair.corrupt_token.to(last.device)
    return float((last[idx, ct] - last[idx, kt]).mean().detach())


# ---- what to patch ------------------------------------------------------------------------
@dataclass(frozen=True)
class Patch:
    hook: str  # hook name
    layer: int
    head: int | None = None  # index on the head axis of hook_z
    position: int | None = None  # index on the position axis
    at: tuple | None = None  # or several positions patched together (None = all)

    def apply(self, target: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """``target`` with the patched slice taken from ``clean`` (both [B, T, ...])."""
        out = target.clone()
        pos = self.position if self.position is not None else (list(self.at) if self.at else slice(None))
        if self.head is None:
            out[:, pos] = clean[:, pos]
        else:
            out[:, pos, self.head] = clean[:, pos, self.head]
        return out


def patch_list(model, kind: str, positions=None, at=None) -> list[Patch]:
    cfg = model.cfg
    at = None if at is None else tuple(int(p) for p in at)
    if kind == "heads":
        return [Patch(f"blocks.{l}.attn.hook_z", l, head=h, at=at) for l in cfg.attention_layers
                for h in range(cfg.n_heads)]
    if kind == "resid":
        return [Patch(f"blocks.{l}.hook_resid_pre", l, at=at) for l in range(cfg.n_layers)]
    if kind == "mixer":
        return [Patch(f"blocks.{l}.hook_attn_out" if cfg.is_attention(l) else f"blocks.{l}.hook_mixer_out", l,
                      at=at) for l in range(cfg.n_layers)]
    if kind == "position":
        if positions is None:
            raise ValueError("kind='position' needs positions= (see default_positions)")
        return [Patch(f"blocks.{l}.hook_resid_pre", l, position=int(p)) for l in range(cfg.n_layers)
                for p in positions]
    raise ValueError(f"kind: {kind!r}; use one of {KINDS}")


def default_positions(pair: NeedlePair, context: int = 2, tail: int = 4) -> list[int]:
    """The needle value's positions (with ``context`` on each side, union over pairs) and the
    last ``tail`` prompt positions: where a clean residual can matter."""
    T = pair.clean.shape[1]
    pos = set(range(T - tail, T))
    for a, e in pair.answer_spans:
        pos |= set(range(max(0, a - context), min(T, e + context)))
    return sorted(pos)


def _hook_order(name: str) -> tuple[int, int]:
    """Execution order of the block hooks used here (for nnsight, which must read in order)."""
    parts = name.split(".")
    rank = {"hook_resid_pre": 0, "hook_z": 1, "hook_attn_out": 2, "hook_mixer_out": 2}[parts[-1]]
    return int(parts[1]), rank


# ---- backends -----------------------------------------------------------------------------
@torch.no_grad()
def _run_tl(model, pair: NeedlePair, patches: list[Patch], progress: bool = False):
    names = sorted({p.hook for p in patches}, key=_hook_order)
    clean_logits, cache = model.run_with_cache(pair.clean, names_filter=lambda n: n in names)
    corrupt_logits = model(pair.corrupt)
    diffs = []
    for p in tqdm(patches, desc="patching", disable=not progress):
        src = cache[p.hook]
        logits = model.run_with_hooks(pair.corrupt, fwd_hooks=[(p.hook, lambda t, hook, p=p, src=src: p.apply(t, src))])
        diffs.append(logit_diff(logits, pair))
    return logit_diff(clean_logits, pair), logit_diff(corrupt_logits, pair), diffs


def _run_nnsight(model, pair: NeedlePair, patches: list[Patch], progress: bool = False):
    from . import _nnsight_patching

    return _nnsight_patching.run(model, pair, patches, logit_diff, _hook_order, progress)


# ---- the experiment -----------------------------------------------------------------------
@dataclass
class PatchingResult:
    df: pd.DataFrame  # one row per patch: kind, hook, layer, layer_type, head, position, ...
    figure: object  # plotly heatmap of `recovered`
    clean_diff: float
    corrupt_diff: float

    def __iter__(self):  # df, fig = activation_patching(...)
        return iter((self.df, self.figure))


def activation_patching(model, pair: NeedlePair, kind: str = "heads", *, positions=None, at=None,
                        backend: str = "tl", min_gap: float = 1e-6, progress: bool = False) -> PatchingResult:
    """Patch clean activations into the corrupted run, one at a time; see the module doc.

    ``positions`` (``kind="position"`` only; default ``default_positions(pair)``).
    ``at`` (``heads``/``resid``/``mixer``): patch only these positions, together (default all;
    e.g. ``at=[pair.query_pos]`` asks what a head writes at the query).
    ``backend``: ``"tl"`` or ``"nnsight"``. Raises ``ValueError`` when the clean and corrupted
    logit differences coincide (the recovered fraction is then undefined).
    """
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r}; use one of {KINDS}")
    if kind == "position" and positions is None:
        positions = default_positions(pair)
    if kind == "position" and at is not None:
        raise ValueError("at= applies to kinds heads, resid and mixer; use positions= for kind='position'")
    patches = patch_list(model, kind, positions, at)
    was_training = model.training
    model.eval()
    dev = model.device  # the prompts go where the model is (a GPU: eval/ablate/patch --device)
    on_dev = dataclasses.replace(pair, clean=pair.clean.to(dev), corrupt=pair.corrupt.to(dev))
    try:
        if backend == "tl":
            clean_ld, corrupt_ld, diffs = _run_tl(model, on_dev, patches, progress)
        elif backend == "nnsight":
            clean_ld, corrupt_ld, diffs = _run_nnsight(model, on_dev, patches, progress)
        else:
            raise ValueError(f"backend: {backend!r}; use 'tl' or 'nnsight'")
    finally:
        model.train(was_training)
    gap = clean_ld - corrupt_ld
    if abs(gap) < min_gap:
        raise ValueError(f"clean and corrupted prompts give the same logit difference ({clean_ld:.3g}); "
                         "the recovered fraction is undefined")
    tokens = pair.clean[0].tolist()
    rows = []
    for p, d in zip(patches, diffs):
        rows.append({
            "kind": kind, "hook": p.hook, "layer": p.layer, "layer_type": model.cfg.layer_kind(p.layer),
            "head": -1 if p.head is None else p.head, "position": -1 if p.position is None else p.position,
            "token": "" if p.position is None else TOKENIZER.decode([tokens[p.position]], stop_at_eos=False),
            "at": "all" if p.at is None else ",".join(map(str, p.at)),
            "logit_diff": d, "recovered": (d - corrupt_ld) / gap,
        })
    df = pd.DataFrame(rows)
    df.attrs.update(clean_diff=clean_ld, corrupt_diff=corrupt_ld, n_pairs=len(pair), backend=backend)
    return PatchingResult(df=df, figure=patching_figure(df, model.cfg), clean_diff=clean_ld, corrupt_diff=corrupt_ld)


def patching_figure(df: pd.DataFrame, cfg=None, title: str | None = None):
    """Heatmap of ``recovered``: layer x head, layer x position, or one row of layers."""
    import numpy as np
    import plotly.graph_objects as go

    kind = df["kind"].iloc[0]
    layers = sorted(df["layer"].unique())
    ylab = [f"L{l} {cfg.layer_kind(l)}" if cfg is not None else f"L{l}" for l in layers]
    if kind == "heads":
        n_layers = cfg.n_layers if cfg is not None else max(layers) + 1
        layers = list(range(n_layers))
        ylab = [f"L{l} {cfg.layer_kind(l)}" if cfg is not None else f"L{l}" for l in layers]
        heads = sorted(df["head"].unique())
        z = np.full((len(layers), len(heads)), np.nan)
        for r in df.itertuples():
            z[r.layer, heads.index(r.head)] = r.recovered
        x, xlab = [f"H{h}" for h in heads], "head"
    elif kind == "position":
        pos = sorted(df["position"].unique())
        tok = dict(zip(df["position"], df["token"]))
        z = np.full((len(layers), len(pos)), np.nan)
        for r in df.itertuples():
            z[layers.index(r.layer), pos.index(r.position)] = r.recovered
        x, xlab = [f"{p}:{tok[p]!r}" for p in pos], "position"
    else:
        z = np.array([[df.set_index("layer").loc[l, "recovered"] for l in layers]])
        x, ylab, xlab = ylab, [kind], "layer"
    fig = go.Figure(go.Heatmap(z=z, x=x, y=ylab, zmid=0.0, colorscale="RdBu", zmin=-1, zmax=1,
                               colorbar=dict(title="recovered")))
    fig.update_layout(title=title or f"Activation patching ({kind}): fraction of logit difference recovered",
                      xaxis_title=xlab, yaxis_title="" if kind not in ("heads", "position") else "layer",
                      yaxis=dict(autorange="reversed"))
    return fig
