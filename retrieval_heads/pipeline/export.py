"""Scans out in other formats: Wu et al.'s ``head_score`` JSON (``retrieval_heads.detect.wu``).

    retrieval-heads export RUN --format wu --out DIR     # DIR/step_XXXXXX.json per scanned checkpoint
    rh.pipeline.export_wu("runs/x", "wu_scores")

Our scan tables keep means, so the per-sample scores are computed again here: each checkpoint of
the scan (``RUN/scan/scan.json``: its settings and checkpoints) is scored with the scan's own
settings and needle set, and every counted sample (a valid span, answered correctly unless the
scan used ``--all-samples``) gives its copy score, ``{"L-H": [score per counted sample]}`` for
every scored head. The mean of each list is the scan's ``copy`` value in ``scores.parquet``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..storage import write_json


def _scan_state(run, scan_dir=None) -> tuple[Path, dict]:
    d = Path(scan_dir) if scan_dir is not None else Path(run) / "scan"
    f = d / "scan.json"
    if not f.exists():
        raise ValueError(f"{f}: missing; scan the run first (retrieval-heads scan {run})")
    try:
        return d, json.loads(f.read_text())
    except ValueError as e:
        raise ValueError(f"{f}: unreadable ({e})") from None


def wu_scores(res) -> dict[str, list[float]]:
    """A ``HeadScores`` as Wu's ``{"layer-head": [per-sample copy scores]}`` (counted samples,
    scored layers; keys in layer, head order)."""
    x = res.per_sample["copy"][res.counted]  # (n_counted, L, H)
    H = x.shape[2]
    return {f"{l}-{h}": [float(v) for v in x[:, l, h].tolist()] for l in res.scored_layers for h in range(H)}


def export_wu(run, out, *, scan_dir=None, batch_size: int = 8, echo=None) -> list[Path]:
    """Write ``out/step_XXXXXX.json`` (Wu's format) for every checkpoint of RUN's scan; returns the files."""
    from ..detect.scores import HeadScores, score_heads
    from ..storage import load_checkpoint
    from .scanner import ScanSettings

    run = Path(run)
    _, state = _scan_state(run, scan_dir)
    settings = ScanSettings(**state["settings"])
    if state.get("source") == "hf" or "tokenizer" in state:
        raise ValueError("export --format wu: Hugging Face scans are not exported yet; our run folders only")
    batches = settings.batches()
    out = Path(out)
    files = []
    for name, _sha, error in state["checkpoints"]:
        if error:
            continue
        model = load_checkpoint(run / name)
        res = HeadScores.merge([score_heads(model, b, methods=("copy",), recurrent=settings.recurrent,
                                            only_correct=settings.only_correct,
                                            max_new_tokens=settings.max_new_tokens, batch_size=batch_size,
                                            **settings.compat_kw())
                                for b in batches])
        f = out / f"{name}.json"
        write_json(f, wu_scores(res))
        files.append(f)
        if echo is not None:
            n = res.n_counted
            echo(f"{f}: {n} counted sample(s)" + ("" if n else " (no sample answered: every list is empty)"))
    return files


def mean_or_nan(v: list[float]) -> float:
    return sum(v) / len(v) if v else math.nan
