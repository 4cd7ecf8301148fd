"""Retrieval-head detection: per-head scores, formation steps, Q/K distances (pure scoring:
models and batches in, tensors and tables out; no files).

    import retrieval_heads as rh
    S   = rh.retrieval_scores(model, batch, method="copy")   # [n_layers, n_heads], NaN = not scored
    res = rh.detect.score_heads(model, batch)                 # copy, mass, entropy + counts
    df  = rh.scan("runs/x")          # scans of checkpoints: retrieval_heads.pipeline

Modules: ``rows`` (O(T) attention rows: the interface a model adapter implements),
``metrics`` (the table of scores: name, range, kind, row function; ``register_metric``),
``scores`` (the scoring rules), ``reference`` (O(T^2) eager references for tests),
``weights`` (Q/K distance), ``formation`` (formation steps), ``causal`` (ablation and
attribution scores: which heads the answer depends on; ``docs/CAUSAL.md``).

Names are imported on first use, so that ``retrieval_heads.detect.metrics`` (the table the
command line's choices and the figures read) loads without torch.
"""

from __future__ import annotations

import importlib

# public name -> submodule that defines it (imported on first use)
_LAZY = {
    "formation_table": "formation", "run_formation": "formation",
    "Metric": "metrics", "register_metric": "metrics", "unregister_metric": "metrics",
    "DecodeRows": "rows", "HybridRows": "rows", "as_row_source": "rows", "greedy_decode_rows": "rows",
    "prefill_rows": "rows",
    "METHODS": "scores", "HeadScores": "scores", "retrieval_scores": "scores", "score_heads": "scores",
    "qk_distance": "weights",
    "CausalScores": "causal", "causal_scores": "causal",
    "load_wu_scores": "wu", "wu_mean_scores": "wu", "wu_top_heads": "wu",
}
_SUBMODULES = ("causal", "compat", "formation", "metrics", "reference", "rows", "scores", "weights", "wu")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "retrieval_scores", "score_heads", "HeadScores", "METHODS",
    "formation_table", "run_formation", "qk_distance", "prefill_rows", "greedy_decode_rows",
    "DecodeRows", "HybridRows", "as_row_source", "metrics", "Metric", "register_metric", "unregister_metric",
    "load_wu_scores",
    "causal_scores", "CausalScores",
]
