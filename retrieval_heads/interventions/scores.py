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


class MissingScores(ValueError):
    """A scan table without rows of the asked metric (or step): e.g. causal scores of a scan run
    without ``--causal``."""


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
    if n_layers is not None and n_heads is not None and len(df):
        _check_shape(path, df, n_layers, n_heads)
    df = df[df["metric"] == metric]
    if df.empty:
        hint = "; scan with --causal for causal scores" if metric in _causal() else ""
        raise MissingScores(f"{path}: no rows with metric {metric!r}{hint}")
    step = int(df["step"].max()) if step is None else int(step)
    df = df[df["step"] == step]
    if df.empty:
        raise MissingScores(f"{path}: no {metric!r} rows for step {step}")
    L = int(df["layer"].max()) + 1 if n_layers is None else n_layers
    H = int(df["head"].max()) + 1 if n_heads is None else n_heads
    out = torch.full((L, H), math.nan)
    for r in df.itertuples():
        out[int(r.layer), int(r.head)] = float(r.value)
    return out


def _causal() -> tuple:
    from ..detect.metrics import causal_metrics

    return causal_metrics()


def _table_shape(path: Path, df) -> tuple[int, int]:
    """(layers, heads) of the model a scan table was made from: its ``scan.json`` says so where
    it is readable; otherwise the largest layer and head in the table."""
    from ..storage.files import read_json_or_empty

    model = read_json_or_empty(path.parent / "scan.json").get("model")
    model = model if isinstance(model, dict) else {}
    L, H = model.get("n_layers"), model.get("n_heads")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (L, H)):
        L, H = int(df["layer"].max()) + 1, int(df["head"].max()) + 1
    return L, H


def _check_shape(path: Path, df, n_layers: int, n_heads: int) -> None:
    """A table of another model (other layers/heads, or rows out of range) is a clear error."""
    L, H = _table_shape(path, df)
    lo_l, hi_l, lo_h, hi_h = (int(df["layer"].min()), int(df["layer"].max()), int(df["head"].min()),
                              int(df["head"].max()))
    if (L, H) != (n_layers, n_heads) or lo_l < 0 or lo_h < 0 or hi_l >= n_layers or hi_h >= n_heads:
        raise ValueError(f"{path}: the scores are for {L} layers x {H} heads (layers {lo_l}..{hi_l}, heads "
                         f"{lo_h}..{hi_h}) but the model has {n_layers} layers x {n_heads} heads; "
                         "use the scan of this model's run")
