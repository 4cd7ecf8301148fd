"""Retrieval-head detection: per-head scores, checkpoint scans, formation steps.

    import retrieval_heads as rh
    S   = rh.retrieval_scores(model, batch, method="copy")   # [n_layers, n_heads], NaN = not scored
    res = rh.detect.score_heads(model, batch)                 # copy, mass, entropy + counts
    df  = rh.scan("runs/x")                                   # tidy table over all checkpoints

Modules: ``rows`` (O(T) attention rows: the interface a model adapter implements),
``scores`` (the scoring rules), ``reference`` (O(T^2) eager references for tests),
``weights`` (Q/K distance), ``formation`` (formation steps), ``scanner`` (checkpoint scans).
"""

from .formation import formation_table, run_formation
from .rows import DecodeRows, HybridRows, as_row_source, greedy_decode_rows, prefill_rows
from .scanner import ScanSettings, scan
from .scores import METHODS, HeadScores, retrieval_scores, score_heads
from .weights import qk_distance

__all__ = [
    "retrieval_scores", "score_heads", "HeadScores", "METHODS", "scan", "ScanSettings",
    "formation_table", "run_formation", "qk_distance", "prefill_rows", "greedy_decode_rows",
    "DecodeRows", "HybridRows", "as_row_source",
]
