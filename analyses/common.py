"""Small shared helpers for the analysis scripts in ``analyses/`` (library calls only, no model code).

    from analyses.common import setup_threads, out_dir, save_figure, write_json, train_and_scan

Stable surface (other analysis scripts import it): ``setup_threads``, ``out_dir``,
``save_figure``, ``write_json``, ``jsonable``, ``train_and_scan``, ``metrics_frame``,
``non_embedding_params``, ``apply_overrides``, ``Timer``, ``RunLog``, ``progress_every``,
``map_in_processes`` (the last five from ``retrieval_heads.pipeline.runs``);
and, for the scripts that analyse one trained run (``mechanism``, ``nope``, ``probing``,
``gradient_influence``): ``DEFAULT_TRAIN``, ``script_log``, ``parse_common``, ``results_head``,
``write_results``, ``save_table``, ``save_fig``, ``machine_info``, ``preset_configs``, ``train_preset``,
``run_checkpoints``, ``last_checkpoint``.

A script in ``analyses/`` imports these as ``from analyses.common import ...`` after putting the
repository root on ``sys.path`` (see ``laziness.py``), so it runs both as
``python analyses/x.py`` and when loaded by path with importlib (the smoke tests).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

# train-then-scan, progress lines and the process pool are the library's (retrieval_heads.pipeline.runs)
from retrieval_heads.pipeline.runs import (  # noqa: F401 - re-exported for the scripts
    RunLog,
    map_in_processes,
    metrics_frame,
    progress_every,
    train_and_scan,
)

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


def non_embedding_params(model_cfg) -> int:
    """Parameters of ``HybridLM(model_cfg)`` outside the token embedding / unembedding."""
    import retrieval_heads as rh

    model = rh.HybridLM(model_cfg)
    return int(sum(p.numel() for n, p in model.named_parameters()
                   if not (n.startswith("embed") or n.startswith("unembed") or n.startswith("lm_head"))))


# ------------------------------------------------------------------- single-run analysis scripts
# mechanism.py, nope.py, probing.py, gradient_influence.py: a --quick/--smoke/full mode, one
# output folder of tables (CSV + parquet), figures (HTML + PNG) and a results.json.

# The CPU recipe of every --quick analysis that trains a hybrid (issue 20): the tiny preset (SSSF,
# d_model 64, window 16, NoPE on F) with 8 heads of 8, context 144, batch 8, 3600 steps and a
# warmup-stable-decay learning rate (3e-3, then a linear decay to 10% over the last 30% of the
# steps). nope.py's NoPE-F arm is exactly this run for the same seed, so probing.py and
# gradient_influence.py --quick train what nope.py --quick trains (and can be given those runs
# with --run 'OUT/runs/nope_seed{seed}'). Measured with 3 seeds in analyses/RESULTS.md (NoPE).
QUICK_RECIPE = dict(preset="tiny", model=dict(n_heads=8, n_kv_heads=8), context_len=144, batch_size=8,
                    steps=3600, lr_schedule="wsd", decay_fraction=0.3, min_lr_ratio=0.1, eval_every=100,
                    save_every=500)

# The model that mechanism / probing / gradient_influence train when no run is given, per mode
# (``train_preset`` takes one entry; mechanism.py trains tiny-deep instead in quick mode).
DEFAULT_TRAIN = {
    "smoke": dict(preset="tiny", context_len=160, batch_size=4, steps=2),
    "quick": QUICK_RECIPE,
    "full": dict(preset="gpu-small"),
}


def script_log(name: str):
    """``log(msg)`` that prints ``[name] msg`` (flushed)."""

    def log(msg):
        print(f"[{name}] {msg}", flush=True)

    return log


def analysis_parser(doc: str, *, quick: str, preset: str,
                    smoke: str = "a few steps, to test the pipeline (seconds)") -> argparse.ArgumentParser:
    """The parser of a multi-run analysis script: its docstring's first line as description,
    ``--quick`` / ``--smoke`` and ``--preset`` (see :func:`add_mode_args`)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    add_mode_args(ap, quick=quick, smoke=smoke, preset=preset)
    return ap


def add_mode_args(ap: argparse.ArgumentParser, *, quick: str, smoke: str = "seconds: micro settings for tests",
                  preset: str | None = None) -> None:
    """``--quick`` / ``--smoke`` (mutually exclusive; neither = the full mode, sized for a GPU)
    and, for the scripts that train from a preset, ``--preset`` (help text ``preset``)."""
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help=quick)
    g.add_argument("--smoke", action="store_true", help=smoke)
    if preset is not None:
        ap.add_argument("--preset", default=None, help=preset)


def parse_common(ap: argparse.ArgumentParser, argv, name: str):
    """Add the options every single-run script shares to ``ap`` (after the script's own):
    ``--quick`` / ``--smoke`` (mutually exclusive; neither = full mode), ``--device``, ``--seed``,
    ``--threads``, ``--note``, ``--out``; parse ``argv``; set torch's thread count (``--threads``;
    0 leaves torch's default). Returns ``(args, mode_name, out)``: mode ``smoke`` / ``quick`` /
    ``full`` and the output folder (``--out`` or ``analyses/out/<name>``), created."""
    add_mode_args(ap, quick="CPU budget (< 15 min on 2 cores)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (full mode is meant for a GPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    ap.add_argument("--note", default="", help="free text stored in results.json (e.g. the machine)")
    ap.add_argument("--out", default=None, help=f"output folder [default: analyses/out/{name}]")
    a = ap.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    mode_name = "smoke" if a.smoke else "quick" if a.quick else "full"
    return a, mode_name, out_dir(name, a.out)


def machine_info(device: str) -> dict:
    """Platform, Python and torch versions, CPU count, torch threads and ``device`` (plus the
    GPU's name on CUDA): the ``machine`` entry of a results.json."""
    import platform

    import torch

    d = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
         "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        d["gpu"] = torch.cuda.get_device_name(0)
    return d


def results_head(name: str, mode_name: str, args) -> dict:
    """The first keys of a results.json: ``analysis``, ``mode``, ``command`` (as run),
    ``note`` (``--note``) and ``machine`` (``machine_info(--device)``)."""
    return {"analysis": name, "mode": mode_name, "command": " ".join([Path(sys.executable).name] + sys.argv),
            "note": args.note, "machine": machine_info(args.device)}


def write_results(out: str | Path, results: dict, t0: float, log=print) -> dict:
    """``out/results.json`` (plain ``json.dumps``, indent 2) and a closing ``wrote OUT in Ns``
    line (seconds since ``t0``); returns ``results``."""
    (Path(out) / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {out} in {time.time() - t0:.0f}s")
    return results


def save_table(df, out: str | Path, name: str, log=print) -> None:
    """``out/name.csv`` and, where pandas can write it (pyarrow present, plain dtypes),
    ``out/name.parquet``; else one log line (the CSV is enough)."""
    out = Path(out)
    df.to_csv(out / f"{name}.csv", index=False)
    try:
        df.to_parquet(out / f"{name}.parquet", index=False)
    except Exception as e:  # noqa: BLE001 - pyarrow missing or an odd dtype
        log(f"parquet skipped for {name} ({type(e).__name__})")


def save_fig(fig, out: str | Path, name: str, log=print, png_state: dict | None = None) -> list[str]:
    """``out/name.html`` and, where kaleido can render, ``out/name.png`` (plotly's default
    size); returns the file names written. A failed PNG logs one line; with ``png_state`` (a
    dict the calling script keeps, e.g. ``{}``) the first failure also turns PNG off for every
    later call given that dict. (``save_figure`` is the stem-based variant that laziness /
    emergence use: fixed 1100x500 PNG, one process-wide switch.)"""
    out = Path(out)
    fig.write_html(out / f"{name}.html", include_plotlyjs="cdn")
    files = [f"{name}.html"]
    if png_state is None or png_state.get("ok", True):
        try:
            fig.write_image(out / f"{name}.png")
            files.append(f"{name}.png")
        except Exception as e:  # noqa: BLE001 - kaleido without Chrome, etc.
            if png_state is not None:
                png_state["ok"] = False
            log(f"PNG export skipped ({type(e).__name__}: {str(e).strip().splitlines()[0][:80]})")
    return files


def preset_configs(spec: dict, device: str = "cpu"):
    """(ModelConfig, TrainConfig) of ``spec`` = ``{"preset": name, "model": {ModelConfig overrides}
    (optional), **TrainConfig overrides}`` on ``device`` (what :func:`train_preset` trains)."""
    import retrieval_heads as rh

    spec = dict(spec)
    model_cfg, train_cfg = rh.train.presets.load_preset(spec.pop("preset"))
    model_over = spec.pop("model", {})
    model_cfg = model_cfg.replace(**model_over) if model_over else model_cfg
    return model_cfg, train_cfg.replace(device=device, **spec)


def train_preset(spec: dict, run_dir: str | Path, device: str, log=print, *, verbose: bool = False) -> Path:
    """Train (or resume / reuse a finished run in ``run_dir``) ``spec`` = ``{"preset": name,
    "model": {ModelConfig overrides} (optional), **TrainConfig overrides}`` on ``device``;
    returns the run folder. ``verbose`` adds context / batch to the first log line and a
    closing ``trained in Ns; final ...`` line. Training logs ``step k/N  loss ..  niah ..  1m12s``
    lines (``progress_every``) through ``log``."""
    import retrieval_heads as rh

    model_cfg, train_cfg = preset_configs(spec, device)
    shape = f" (context {train_cfg.context_len}, batch {train_cfg.batch_size})" if verbose else ""
    log(f"training {model_cfg.describe()} for {train_cfg.steps} steps{shape} into {run_dir}")
    t = Timer()
    res = rh.train.loop.train(model_cfg, train_cfg, run_dir, resume=True, progress=False, log=log,
                              log_every=progress_every(train_cfg.steps))
    if verbose:
        log(f"trained in {t():.0f}s; final {res.get('final')}")
    return Path(res["out"])


def run_checkpoints(path: str | Path, label: str | None = None) -> list[Path]:
    """A checkpoint folder (holds ``config.json``) -> ``[it]``; a run folder -> its checkpoints
    in step order. None found: ``SystemExit("<label or path>: no checkpoint found")``."""
    path = Path(path)
    if (path / "config.json").exists():
        return [path]
    import retrieval_heads as rh

    ck = rh.list_checkpoints(path)
    if not ck:
        raise SystemExit(f"{label or path}: no checkpoint found")
    return ck


def last_checkpoint(path: str | Path, label: str | None = None) -> Path:
    """A checkpoint folder as is, a run folder's last checkpoint (see ``run_checkpoints``)."""
    return run_checkpoints(path, label)[-1]
