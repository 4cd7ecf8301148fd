"""The demo: Large-Window Laziness on a laptop.

Trains copies of the ``laziness-cpu`` preset that differ only in the sliding window of their
`S` layers (2, 8 and 32 by default), scans every checkpoint for retrieval heads, and writes
one HTML report with their formation curves side by side, NIAH accuracy vs tokens seen and
the formation table (every run, formed or censored). A run stops once its first
full-attention head has held the mass measure for 3 checkpoints (``--stop-when-formed 0``
trains the whole budget).

    retrieval-heads demo                       # runs/demo/report.html (preset `laziness-cpu`, windows 2, 8, 32)
    retrieval-heads demo --windows 4,32 --seed 1 --out runs/demo_s1    # two windows, another seed

    >>> from retrieval_heads.demo import run_demo   # doctest: +SKIP
    >>> run_demo("runs/demo")                       # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import plots
from .labels import head_label
from .laziness_plots import formation_summary_table
from .pipeline.report import compare_runs, figure_html, formation_rows, html_page, load_scan, summary_display
from .pipeline.runs import RunLog, map_in_processes, progress_every, train_and_scan



def _demo_configs(preset: str, window: int, steps: int | None, seed: int):
    from .train.presets import load_preset

    model_cfg, train_cfg = load_preset(preset)
    model_cfg = model_cfg.replace(window=window)
    changes = {"seed": seed}
    if steps is not None:
        changes.update(steps=steps, save_every=max(1, steps // 12), eval_every=max(1, steps // 12))
    return model_cfg, train_cfg.replace(**changes)


def demo_figure(runs: dict[str, dict], measure: str = "mass") -> go.Figure:
    """Formation curves (the ``measure`` score of every full-attention head) per run, side by
    side, and NIAH accuracy vs tokens seen for all runs on one panel. The dashed line is the
    measure's formation threshold; the vertical line marks where the run's first F retrieval
    head formed by that measure (none: the panel title says "censored at ...")."""
    names = list(runs)
    titles = []
    for name in names:
        f = (runs[name]["meta"].get("measures") or {}).get(measure) or {}
        when = (f"formed at {f['tokens_seen']:,} tokens" if f.get("formed") else
                f"censored at {f['censored_at_tokens']:,}" if f.get("censored_at_tokens") is not None else "")
        titles.append(f"{name}: F-head {measure}" + (f"<br><sub>{when}</sub>" if when else ""))
    niah_max = max((float(runs[n]["niah"]["accuracy"].max()) for n in names if len(runs[n]["niah"])), default=0.0)
    niah_title = "NIAH accuracy (scan)" + ("<br><sub>0 at every checkpoint: no run retrieves yet</sub>"
                                           if niah_max == 0 else "")
    fig = make_subplots(rows=1, cols=len(names) + 1, shared_yaxes=False,
                        subplot_titles=titles + [niah_title])
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    for i, name in enumerate(names):
        t = runs[name]
        s = t["scores"]
        d = s[(s["metric"] == measure) & (s["layer_type"] == "F")].sort_values("step")
        for (l, h), g in d.groupby(["layer", "head"]):
            fig.add_trace(go.Scatter(x=g["tokens_seen"], y=g["value"], mode="lines+markers",
                                     name=f"{name} {plots.head_label(l, h, 'F')}", showlegend=False,
                                     line=dict(width=1.5), marker=dict(size=4),
                                     hovertemplate=f"{head_label(l, h, 'F')}: %{{y:.2f}}<extra>{name}</extra>"),
                          row=1, col=i + 1)
        f = (t["meta"].get("measures") or {}).get(measure) or {}
        if f.get("threshold") is not None:
            fig.add_hline(y=f["threshold"], line_dash="dash", row=1, col=i + 1)
        if f.get("formed"):
            fig.add_vline(x=f["tokens_seen"], line_color=colors[i % len(colors)], row=1, col=i + 1)
        a = t["niah"].groupby(["step", "tokens_seen"])["accuracy"].mean().reset_index().sort_values("step")
        fig.add_trace(go.Scatter(x=a["tokens_seen"], y=a["accuracy"], mode="lines+markers", name=name,
                                 line_color=colors[i % len(colors)]), row=1, col=len(names) + 1)
        fig.update_xaxes(title_text="tokens seen", tickformat="~s", rangemode="tozero", row=1, col=i + 1)
        fig.update_yaxes(range=[0, 1.05], row=1, col=i + 1)
    fig.update_xaxes(title_text="tokens seen", tickformat="~s", rangemode="tozero", row=1, col=len(names) + 1)
    fig.update_yaxes(range=[0, 1.05], row=1, col=len(names) + 1)
    fig.update_layout(title=f"Large-Window Laziness: the {measure} score of every full-attention head over training",
                      height=480, autosize=True, legend=dict(orientation="h", y=-0.22, title_text="NIAH: "))
    return fig


_SCAN_SETTINGS = dict(depths=(0.1, 0.3, 0.5, 0.7, 0.9), n_per_cell=2)


def log_every(steps: int) -> int:
    """Steps between two progress lines of a run trained without a bar (about 20 lines)."""
    return progress_every(steps)


def _train_and_scan(model_cfg, train_cfg, rd, *, progress, log, stop_when_formed: int = 0) -> float:
    """Train one run into ``rd`` and scan its checkpoints (with its report); returns the wall
    time in seconds. Without progress bars, training logs ``step k/N  loss ..  niah ..  1m12s``
    lines and the scan ``scanning k/n checkpoints`` lines through ``log``."""
    t0 = time.time()
    log(f"[demo] training {model_cfg.describe()} for {train_cfg.steps} steps -> {rd}")
    train_and_scan(model_cfg, train_cfg, rd, scan_kw=_SCAN_SETTINGS, progress=progress, log=log, report=True,
                   stop_when_formed=stop_when_formed or None, stop_measure="mass")
    log(f"[demo] {rd.name} done in {time.time() - t0:.0f} s")
    return time.time() - t0


def _worker(job) -> float:
    """One window in a worker process (module level: picklable)."""
    model_cfg, train_cfg, rd, stop = job
    return _train_and_scan(model_cfg, train_cfg, rd, progress=False, log=RunLog(rd.name), stop_when_formed=stop)


def run_demo(out="runs/demo", *, windows=(2, 8, 32), preset: str = "laziness-cpu", steps: int | None = None,
             seed: int = 0, progress: bool = True, log=print, jobs: int | None = 1,
             stop_when_formed: int = 3) -> Path:
    """Train one run per window, scan them, write ``out/report.html``; returns its path.

    ``jobs=1`` (the default here) trains in this process, one window after the other, with
    ``log`` and progress bars. ``jobs=N`` trains N windows at once, each in a spawned worker
    process with ``cpu_count // N`` torch threads, printing prefixed lines to the process's
    stdout; ``jobs=None`` picks one process per window, up to the number of cores (what
    ``retrieval-heads demo`` does). On 2 cores two single-threaded processes finish both runs
    about 1.4x sooner than one 2-thread process running them in turn. A script that uses
    ``jobs != 1`` must call this under ``if __name__ == "__main__":`` (spawned workers import
    the script)."""
    if len(windows) < 2 or len(set(windows)) != len(windows):
        raise ValueError(f"windows: give two or more distinct windows, got {windows}")
    cores = os.cpu_count() or 1
    if jobs is None:
        jobs = max(1, min(len(windows), cores))
    if jobs < 1:
        raise ValueError(f"jobs: must be at least 1, got {jobs}")
    jobs = min(jobs, len(windows))
    out = Path(out)
    t0 = time.time()
    configs = {}
    for w in windows:  # validate every run before training any, so bad input writes nothing
        try:
            model_cfg, train_cfg = _demo_configs(preset, w, steps, seed)
        except ValueError as e:
            raise ValueError(f"windows: {w} does not fit preset {preset!r} ({e})") from None
        if w > train_cfg.context_len:
            raise ValueError(f"windows: {w} is larger than the training context ({train_cfg.context_len})")
        configs[w] = (model_cfg, train_cfg)
    run_dirs = {f"window {w}": out / f"window_{w}" for w in configs}
    run_seconds = {}
    if jobs == 1:
        for w, (model_cfg, train_cfg) in configs.items():
            run_seconds[w] = _train_and_scan(model_cfg, train_cfg, out / f"window_{w}", progress=progress, log=log,
                                             stop_when_formed=stop_when_formed)
    else:
        threads = max(1, cores // jobs)
        log(f"[demo] {len(configs)} runs, {jobs} at a time, {threads} torch thread(s) each")
        seconds = map_in_processes(_worker, [(mc, tc, out / f"window_{w}", stop_when_formed)
                                             for w, (mc, tc) in configs.items()],
                                   workers=jobs, threads=threads, what="demo worker")
        run_seconds = dict(zip(configs, seconds))
    tables = {name: load_scan(rd) for name, rd in run_dirs.items()}
    cmp_path, summary = compare_runs([str(p) for p in run_dirs.values()], out / "compare.html")
    formation = pd.DataFrame([row for w in configs
                              for row in formation_rows(tables[f"window {w}"], f"window {w}", float(w), seed)])
    body = ["<h1>retrieval-heads demo: Large-Window Laziness</h1>",
            f"<p>{len(run_dirs)} hybrids identical but for the sliding window of their S layers, trained on the "
            "same data. Left panels: the attention mass on the answer (teacher-forced) of every head of the "
            "full-attention layer over training (vertical line: the first retrieval head forms, i.e. its score "
            "stays at or above the dashed threshold to the end of the run). Right: NIAH accuracy at the "
            "training context length.</p>",
            figure_html(demo_figure(tables, "mass"), True),
            "<h2>Formation of the first full-attention retrieval head, per measure</h2>",
            "<p>censored at X: not formed by the run's last checkpoint (X tokens seen).</p>",
            formation_summary_table(formation).drop(columns=["mean (formed seeds)", "95% CI (formed seeds)"])
            .to_html(index=False),
            "<h2>Summary</h2>",
            summary_display(summary[["label", "final_niah_accuracy"]]).to_html(index=False),
            "<p>Per-run reports: " + ", ".join(f"<a href='{rd.name}/scan/report.html'>{n}</a>"
                                                  for n, rd in run_dirs.items()) + "</p>",
            f"<p>Wall time: {time.time() - t0:.0f} s ({jobs} run(s) at a time on {cores} core(s)).</p>"]
    report = out / "report.html"
    report.write_text(html_page("retrieval-heads demo", body), encoding="utf-8")
    result = {"report": str(report), "wall_s": time.time() - t0, "jobs": jobs, "cores": cores,
              "run_wall_s": {str(w): round(t, 1) for w, t in run_seconds.items()},
              "runs": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                       for r in summary.to_dict("records")]}
    (out / "demo.json").write_text(json.dumps(result, indent=2, default=str))
    for line in formation_lines(run_dirs):
        log(line)
    log(f"[demo] wall time {result['wall_s']:.0f} s; compare page: {cmp_path}")
    return report


def formation_lines(run_dirs: dict) -> list[str]:
    """The formation table the demo ends with: per measure, the tokens seen when each run's first
    full-attention retrieval head formed, or ``censored at X`` (not formed by its last checkpoint)."""
    runs = {name: json.loads((Path(rd) / "scan" / "formation.json").read_text()).get("measures", {})
            for name, rd in run_dirs.items()}
    order = ("mass", "copy_tf", "copy")  # the ones that exist before the model answers first
    measures = sorted(dict.fromkeys(m for r in runs.values() for m in r),
                      key=lambda m: (order.index(m) if m in order else len(order), m))
    width = max([len(n) for n in runs] + [22]) + 2
    lines = ["[demo] formation of the first full-attention retrieval head (tokens seen; censored = not formed "
             "by the run's last checkpoint):", "  " + f"{'measure (threshold)':<22}" + "".join(
                 f"{n:>{width}}" for n in runs)]
    for m in measures:
        cells = []
        for r in runs.values():
            f = r.get(m, {})
            cells.append(f"{f['tokens_seen']:,}" if f.get("formed") else
                         f"censored at {f['censored_at_tokens']:,}" if f.get("censored_at_tokens") is not None
                         else "-")
        thr = next((r[m].get("threshold") for r in runs.values() if m in r), None)
        lines.append("  " + f"{m + (f' ({thr:g})' if thr is not None else ''):<22}"
                     + "".join(f"{c:>{width}}" for c in cells))
    return lines
