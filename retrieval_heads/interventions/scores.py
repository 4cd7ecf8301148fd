"""Retrieval scores for choosing heads to ablate: from the detector (``rh.retrieval_scores``),
from a scan table (``RUN/scan/scores.parquet``), or, as a fallback, a private O(T) mass score.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch

from ..model import kernels


@torch.no_grad()
def _mass_scores(model, batch) -> torch.Tensor:
    """Mass score [n_layers, n_heads] (NaN for non-attention layers): the attention probability
    that each head puts, at the last prompt position, on the answer-span positions, averaged
    over samples. Rows are computed from ``hook_rot_q``/``hook_rot_k`` (fast path, O(T))."""
    cfg = model.cfg
    tokens = batch.tokens.to(model.device)
    B, T = tokens.shape
    store = {}

    def keep(t, hook):
        store[hook.name] = t

    names = [f"blocks.{l}.attn.hook_rot_{x}" for l in cfg.attention_layers for x in "qk"]
    model.run_with_hooks(tokens, fwd_hooks=[(n, keep) for n in names])
    span = torch.zeros(B, T)
    for i, spans in enumerate(batch.answer_spans):
        for s, e in spans:
            span[i, s:e] = 1.0
    out = torch.full((cfg.n_layers, cfg.n_heads), math.nan)
    pos = torch.arange(T, device=tokens.device)
    for l in cfg.attention_layers:
        attn = model.blocks[l].attn
        q = store[f"blocks.{l}.attn.hook_rot_q"][:, -1:].transpose(1, 2).float()  # (B, H, 1, D)
        k = attn.repeat_kv(store[f"blocks.{l}.attn.hook_rot_k"].transpose(1, 2)).float()  # (B, H, T, D)
        scores = kernels.attention_scores(q, k, pos[-1:], pos, attn.window)  # (B, H, 1, T)
        p = torch.nan_to_num(torch.softmax(scores, -1))[:, :, 0]  # (B, H, T)
        out[l] = (p.cpu() * span[:, None]).sum(-1).mean(0)
    return out


def retrieval_head_scores(model, batch, method: str = "mass") -> torch.Tensor:
    """[n_layers, n_heads] retrieval scores: ``rh.retrieval_scores`` when the detector is
    installed, else (``method="mass"`` only) the private mass score above."""
    try:
        from ..detect import retrieval_scores
    except ImportError:
        retrieval_scores = None
    if retrieval_scores is not None:
        return torch.as_tensor(retrieval_scores(model, batch, method=method), dtype=torch.float32).cpu()
    if method != "mass":
        raise ValueError(f"method: {method!r} needs the detector (retrieval_heads.detect); only 'mass' "
                         "is available without it")
    return _mass_scores(model, batch)


def scores_from_scan(path: str | Path, step: int | None = None, metric: str = "copy",
                     n_layers: int | None = None, n_heads: int | None = None) -> torch.Tensor:
    """Read a [n_layers, n_heads] matrix from ``RUN/scan/scores.parquet`` (columns step, layer,
    head, metric, value). ``step`` None = the last step in the table."""
    path = Path(path)
    if path.is_dir():
        path = path / "scan" / "scores.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no scan table; run `retrieval-heads scan RUN` first")
    df = pd.read_parquet(path)
    need = {"step", "layer", "head", "metric", "value"}
    if not need <= set(df.columns):
        raise ValueError(f"{path}: expected columns {sorted(need)}, got {list(df.columns)}")
    df = df[df["metric"] == metric]
    if df.empty:
        raise ValueError(f"{path}: no rows with metric {metric!r}")
    step = int(df["step"].max()) if step is None else int(step)
    df = df[df["step"] == step]
    if df.empty:
        raise ValueError(f"{path}: no {metric!r} rows for step {step}")
    L = int(df["layer"].max()) + 1 if n_layers is None else n_layers
    H = int(df["head"].max()) + 1 if n_heads is None else n_heads
    out = torch.full((L, H), math.nan)
    for r in df.itertuples():
        out[int(r.layer), int(r.head)] = float(r.value)
    return out
