"""From checkpoints to tables and pages: scans of native runs and Hugging Face checkpoints
(one cache, one table writer, one up-to-date check), reports, comparisons.

    import retrieval_heads as rh
    df = rh.scan("runs/x")                        # = rh.pipeline.scan: every checkpoint, cached
    rh.pipeline.build_report("runs/x")            # RUN/scan/report.html from the tables
    rh.pipeline.compare_runs(["runs/w16", "runs/w64"], "laziness.html")

This package sits above the scoring (:mod:`retrieval_heads.detect`), the models, the HF
adapter and checkpoint storage, and below the demo and the command line; nothing under it
imports it (``tests/project/test_import_graph.py``).

Modules: ``scanner`` (the scan of a native run: settings, cache, lock, tables), ``hf_scanner``
(the same for HF checkpoints), ``report`` (report.html, compare pages, table loading).
"""

from .report import build_report, compare_runs, load_scan, summary_display
from .scanner import ScanSettings, find_runs, scan

__all__ = ["scan", "ScanSettings", "find_runs", "build_report", "compare_runs", "load_scan", "summary_display",
           "hf_scan"]


def __getattr__(name):
    if name == "hf_scan":  # transformers is heavy: imported on first use
        from .hf_scanner import hf_scan
        return hf_scan
    raise AttributeError(f"module 'retrieval_heads.pipeline' has no attribute {name!r}")
