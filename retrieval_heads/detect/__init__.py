"""Retrieval-head detection: per-head scores, formation steps, Q/K distances (pure scoring:
models and batches in, tensors and tables out; no files).

    import retrieval_heads as rh
    S   = rh.retrieval_scores(model, batch, method="copy")   # [n_layers, n_heads], NaN = not scored
    res = rh.detect.score_heads(model, batch)                 # copy, mass, entropy + counts
    df  = rh.scan("runs/x")          # scans of checkpoints: retrieval_heads.pipeline

Modules: ``rows`` (O(T) attention rows: the interface a model adapter implements),
``scores`` (the scoring rules), ``reference`` (O(T^2) eager references for tests),
``weights`` (Q/K distance), ``formation`` (formation steps).
"""

from .formation import formation_table, run_formation
from .rows import DecodeRows, HybridRows, as_row_source, greedy_decode_rows, prefill_rows
from .scores import METHODS, HeadScores, retrieval_scores, score_heads
from .weights import qk_distance

__all__ = [
    "retrieval_scores", "score_heads", "HeadScores", "METHODS",
    "formation_table", "run_formation", "qk_distance", "prefill_rows", "greedy_decode_rows",
    "DecodeRows", "HybridRows", "as_row_source",
]
