"""Small shared helpers for the analysis scripts in ``analyses/`` (library calls only, no model code).

    from analyses.common import setup_threads, out_dir, save_figure, write_json, train_and_scan

Stable surface (other analysis scripts import it): ``setup_threads``, ``out_dir``,
``save_figure``, ``write_json``, ``jsonable``, ``train_and_scan``, ``metrics_frame``,
``non_embedding_params``, ``apply_overrides``, ``Timer``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

ANALYSES_DIR = Path(__file__).resolve().parent
_PNG = {"ok": None}  # None = not tried yet; False = kaleido failed once (skip PNG from then on)


def setup_threads(n: int = 1) -> None:
    """One torch thread per process by default (the dev machine's 2 cores are shared)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    import torch

    torch.set_num_threads(n)


def out_dir(name: str, out: str | Path | None = None) -> Path:
    """``out`` or ``analyses/out/<name>/``, created."""
    p = Path(out) if out else ANALYSES_DIR / "out" / name
    p.mkdir(parents=True, exist_ok=True)
    return p


def jsonable(x):
    """NaN/inf -> None, numpy scalars/arrays -> Python, Paths -> str (recursively)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if np is not None:
        if isinstance(x, np.ndarray):
            return jsonable(x.tolist())
        if isinstance(x, np.bool_):
            return bool(x)
        if isinstance(x, np.integer):
            return int(x)
        if isinstance(x, np.floating):
            x = float(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path: str | Path, obj) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(obj), indent=2, sort_keys=False) + "\n")
    return path


def save_figure(fig, stem: str | Path, log=print, png: bool = True) -> list[Path]:
    """Write ``stem.html`` (plotly, self-contained JS from a CDN) and, where kaleido works,
    ``stem.png``. The first PNG failure logs one line and turns PNG off for the process."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    html = stem.with_suffix(".html")
    fig.write_html(html, include_plotlyjs="cdn")
    out = [html]
    if png and _PNG["ok"] is not False:
        try:
            fig.write_image(stem.with_suffix(".png"), width=1100, height=500)
            _PNG["ok"] = True
            out.append(stem.with_suffix(".png"))
        except Exception as e:  # kaleido missing, or no Chrome for kaleido >= 1
            _PNG["ok"] = False
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            why = next((ln for ln in lines if "chrome" in ln.lower()), lines[0] if lines else "")
            log(f"[png] skipped: kaleido cannot export here ({type(e).__name__}: {why[:140]}); HTML only")
    return out


def apply_overrides(model_cfg, train_cfg, spec: str | None):
    """``"train.lr=0.01,model.d_model=64"`` -> (model_cfg, train_cfg) with those fields replaced
    (values parsed as JSON where possible, else kept as strings); unknown fields raise."""
    if not spec:
        return model_cfg, train_cfg
    m, t = {}, {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        key, sep, val = item.partition("=")
        where, dot, field = key.strip().partition(".")
        if not sep or not dot or where not in ("model", "train"):
            raise ValueError(f"--set: expected model.FIELD=VALUE or train.FIELD=VALUE, got {item!r}")
        try:
            v = json.loads(val)
        except json.JSONDecodeError:
            v = val
        (m if where == "model" else t)[field] = v
    for name, d, cfg in (("model", m, model_cfg), ("train", t, train_cfg)):
        bad = sorted(set(d) - set(cfg.to_dict()))
        if bad:
            raise ValueError(f"--set: unknown {name} field(s) {bad}")
    return model_cfg.replace(**m), train_cfg.replace(**t)


class Timer:
    def __init__(self):
        self.t0 = time.time()

    def __call__(self) -> float:
        return time.time() - self.t0


def metrics_frame(run_dir):
    """``RUN/metrics.jsonl`` as a DataFrame (one row per evaluation)."""
    import pandas as pd

    from retrieval_heads.train.loop import read_metrics

    return pd.DataFrame(read_metrics(run_dir))


def non_embedding_params(model_cfg) -> int:
    """Parameters of ``HybridLM(model_cfg)`` outside the token embedding / unembedding."""
    import retrieval_heads as rh

    model = rh.HybridLM(model_cfg)
    return int(sum(p.numel() for n, p in model.named_parameters()
                   if not (n.startswith("embed") or n.startswith("unembed") or n.startswith("lm_head"))))


def train_and_scan(model_cfg, train_cfg, run_dir, *, scan: bool = True, scan_kw: dict | None = None,
                   stop_when_formed: int | None = None, max_steps: int | None = None, progress: bool = False,
                   log=print) -> dict:
    """Train (or resume / reuse a finished run in ``run_dir``) and optionally scan it.

    ``stop_when_formed=k`` trains in chunks of ``k`` checkpoints, scanning after each, and stops
    once the run's first full-attention retrieval head has formed and held (copy >= threshold)
    for ``k`` further checkpoints; the schedule (``train_cfg.steps``) is unchanged, the run is
    just cut short (``stopped_early``). ``max_steps`` stops every run after that step (the
    schedule is still that of ``train_cfg.steps``; a later call with a larger cap continues the
    same run exactly). Returns ``{"run_dir", "train_s", "scan_s", "formation":
    formation.json's "run" entry or None, "stopped_early", "metrics": DataFrame}``. A finished
    run with the same configs is reused and the scan's cache makes a re-scan cheap."""
    from retrieval_heads.detect import scan as rh_scan
    from retrieval_heads.train.loop import checkpoint_steps, train

    run_dir = Path(run_dir)
    res = {"run_dir": str(run_dir), "train_s": 0.0, "scan_s": 0.0, "formation": None, "stopped_early": False}

    def do_scan():
        t = Timer()
        rh_scan(run_dir, progress=progress, echo=lambda m: None, report=False, **(scan_kw or {}))
        res["scan_s"] += t()
        res["formation"] = json.loads((run_dir / "scan" / "formation.json").read_text())["run"]

    if not (scan and stop_when_formed):
        t = Timer()
        cap = min(max_steps, train_cfg.steps) if max_steps else None
        train(model_cfg, train_cfg, run_dir, resume=True, stop_at=cap, progress=progress, log=log)
        res["train_s"] = t()
        if scan:
            do_scan()
    else:
        ck = [s for s in checkpoint_steps(train_cfg) if s > 0 and (not max_steps or s <= max_steps)]
        if max_steps and max_steps < train_cfg.steps and ck[-1] != max_steps:
            ck.append(max_steps)
        stops = ck[stop_when_formed - 1::stop_when_formed]
        if not stops or stops[-1] != ck[-1]:
            stops.append(ck[-1])
        for stop in stops:
            t = Timer()
            train(model_cfg, train_cfg, run_dir, resume=True, stop_at=stop, progress=progress, log=log)
            res["train_s"] += t()
            do_scan()
            f = res["formation"]
            if f.get("step") is not None and sum(1 for s in ck if f["step"] < s <= stop) >= stop_when_formed:
                res["stopped_early"] = stop < train_cfg.steps
                break
    res["metrics"] = metrics_frame(run_dir)
    return res
