"""Retrieval scores for choosing heads to ablate: from the detector (``rh.retrieval_scores``)
or from a scan table (``RUN/scan/scores.parquet``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch

from ..detect import retrieval_scores


def retrieval_head_scores(model, batch, method: str = "mass") -> torch.Tensor:
    """[n_layers, n_heads] retrieval scores from the detector (``rh.retrieval_scores``), on the CPU."""
    return torch.as_tensor(retrieval_scores(model, batch, method=method), dtype=torch.float32).cpu()


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
