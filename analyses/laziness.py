"""Large-Window Laziness: does a larger SWA window delay the first full-attention retrieval head?

Trains hybrids that share one layout (``SSSF``) and differ only in the sliding window of their
``S`` layers, plus an all-full-attention reference (``FFFF``), several seeds each; scans every
checkpoint with ``rh.scan`` and reads the formation step of the run's first full-attention
retrieval head (copy score >= 0.1 from that checkpoint on). A run in which no full-attention
head forms is *censored*: it is reported as "not formed by step N", never given a made-up step.

How to run::

    python analyses/laziness.py --quick                    # CPU, < 15 min on 2 cores (micro config)
    python analyses/laziness.py --quick --windows 8,32,128 --full-ref   # + window 128 and FFFF (> 20 min)
    python analyses/laziness.py --device cuda              # GPU, gpu-small preset, windows 16/64/256
    python analyses/laziness.py --quick --windows 8,64 --seeds 0,1 --out /tmp/lazy

The quick config (SSSF, d_model 32, context 144, 16 rows/step: 6 needle + 8 induction + 2
noise-text rows, single_1 needles) is the fastest-forming one found on the CPU: with window 8
NIAH and the F retrieval head appear after ~1600-2000 steps (~4M tokens, 3-4 CPU-minutes per
run; about 2 wall-minutes per run with two runs at once on 2 cores): ``--quick`` trains windows
8 and 32, three seeds each, for the whole 2000-step schedule (measured 6 min 54 s). Larger
windows cost more per step at this context (a window-128 run took 5 min), so
``--windows 8,32,128`` takes about 16 minutes and ``--full-ref`` (the all-full reference)
longer still. Runs stop early once their F head has held for 3 checkpoints
(``--stop-when-formed``); ``--max-steps`` caps every run without changing the schedule, and a
re-run with a larger cap continues the same runs exactly.

Writes under ``--out`` (default ``analyses/out/laziness/``): ``runs.csv/.parquet`` (one row per
run), ``summary.csv/.parquet`` (one row per window: mean ± std over formed seeds, counts of
censored seeds), ``curves.parquet`` (per run and checkpoint: NIAH accuracy, best F-head copy
score), ``formation_vs_window.html/.png``, ``curves.html/.png`` and ``results.json``.
Run folders go to ``OUT/runs/``; re-running reuses finished runs and cached scans.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyses.common import (  # noqa: E402
    RunLog,
    analysis_parser,
    map_in_processes,
    Timer,
    apply_overrides,
    jsonable,
    out_dir,
    save_figure,
    setup_threads,
    train_and_scan,
    write_json,
)

NAME = "laziness"
FULL = "full"  # label of the all-full-attention reference in the `window` column's string form

# ---------------------------------------------------------------------------------------- settings
# quick: a micro config tuned so that retrieval heads form within about a minute of CPU training
# (needle-heavy batches with the `noise` haystack, short context, small model); see README/report.
QUICK = dict(
    model=dict(layout="SSSF", d_model=32, n_heads=4, d_mlp=64, pos={"F": "nope", "S": "rope"},
               max_seq_len=256),
    train=dict(steps=2000, batch_size=16, context_len=144, lr=5e-3, warmup_steps=30, niah_fraction=0.375,
               induction_fraction=0.5, niah_variant="single_1", haystack="noise", eval_every=50,
               eval_samples=8, save_every=50, save_log_spaced=False),
    max_steps=None, windows=(8, 32), seeds=(0, 1, 2), full_ref=False,
    scan=dict(depths=(0.1, 0.3, 0.5, 0.7, 0.9), n_per_cell=1),
)
# smoke: a few steps, to test the pipeline and the output schema (numbers are meaningless)
SMOKE = dict(
    model=dict(layout="SF", d_model=16, n_heads=2, d_mlp=32, pos={"F": "nope", "S": "rope"}, max_seq_len=192),
    train=dict(steps=2, batch_size=2, context_len=144, lr=5e-3, warmup_steps=1, niah_fraction=0.5,
               induction_fraction=0.0, niah_variant="single_1", haystack="noise", eval_every=1,
               eval_samples=1, save_every=1, save_log_spaced=False),
    max_steps=None, windows=(8, 16), seeds=(0,), full_ref=True,
    scan=dict(depths=(0.5,), n_per_cell=1),
)
# full: the gpu-small preset (SSSF SSSF, d_model 256, context 1024, 5000 steps), a checkpoint every
# 200 steps. rh.scan scores native checkpoints on the CPU (it has no device option), hence workers.
FULL_MODE = dict(preset="gpu-small", windows=(16, 64, 256), seeds=(0, 1, 2), max_steps=None, full_ref=True,
                 train=dict(save_every=200, eval_every=200, save_log_spaced=False),
                 scan=dict(depths=(0.1, 0.3, 0.5, 0.7, 0.9), n_per_cell=2, workers=8))


def ints(s: str | None):
    return tuple(int(x) for x in s.split(",") if x.strip()) if s else None


def build_configs(a):
    """(base ModelConfig, base TrainConfig, windows, seeds, scan settings, max steps, whether to
    train the all-full reference) for the chosen mode."""
    import retrieval_heads as rh

    if a.smoke or a.quick:
        mode = SMOKE if a.smoke else QUICK
        mc = rh.ModelConfig(window=mode["windows"][0], **mode["model"])
        tc = rh.TrainConfig(**mode["train"])
    else:
        mode = FULL_MODE
        mc, tc = rh.train.presets.load_preset(a.preset or mode["preset"])
        tc = tc.replace(**mode["train"])
    if a.preset and (a.quick or a.smoke):
        mc, tc = rh.train.presets.load_preset(a.preset)
    mc, tc = apply_overrides(mc, tc, a.set)
    changes = {"device": a.device}
    if a.steps:
        changes["steps"] = a.steps
    if a.save_every:
        changes.update(save_every=a.save_every, eval_every=a.save_every)
    tc = tc.replace(**changes)
    windows = ints(a.windows) or mode["windows"]
    seeds = ints(a.seeds) or mode["seeds"]
    scan = dict(mode["scan"])
    if a.n_per_cell:
        scan["n_per_cell"] = a.n_per_cell
    max_steps = a.max_steps if a.max_steps is not None else mode["max_steps"]
    full_ref = a.full_ref if a.full_ref is not None else mode["full_ref"]
    return mc, tc, windows, seeds, scan, (max_steps or None), full_ref


def run_configs(mc, tc, windows, seeds, full_ref: bool):
    """[(label, window or None, seed, ModelConfig, TrainConfig)]; the reference replaces every
    ``S`` of the layout by ``F`` (same depth, width, positional encodings)."""
    out = []
    for w in windows:
        if w > tc.context_len:
            raise ValueError(f"windows: {w} is larger than the training context ({tc.context_len})")
        for s in seeds:
            out.append((f"w{w}", w, s, mc.replace(window=w), tc.replace(seed=s)))
    if full_ref:
        full_layout = mc.layout.replace("S", "F")
        for s in seeds:
            out.append((FULL, None, s, mc.replace(layout=full_layout), tc.replace(seed=s)))
    return out


def _f_copy_curve(run_dir) -> pd.DataFrame:
    """Per checkpoint: the best full-attention copy score, its mean over F heads, and the best
    F-head mass score."""
    import pandas as pd

    s = pd.read_parquet(Path(run_dir) / "scan" / "scores.parquet")
    f = s[s["layer_type"] == "F"]
    g = f[f["metric"] == "copy"].groupby(["step", "tokens_seen"])["value"]
    out = pd.DataFrame({"f_copy_max": g.max(), "f_copy_mean": g.mean()})
    out["f_mass_max"] = f[f["metric"] == "mass"].groupby(["step", "tokens_seen"])["value"].max()
    return out.reset_index()


def _mass_formation(run_dir, threshold: float) -> dict:
    """Secondary formation measure: the first F head whose *mass* score (attention on the answer
    span at the query) stays >= threshold. It also catches heads that retrieve with an offset
    (argmax next to, not on, the copied token), which the copy score does not count."""
    import pandas as pd

    from retrieval_heads.detect.formation import formation_table, run_formation

    s = pd.read_parquet(Path(run_dir) / "scan" / "scores.parquet")
    return run_formation(formation_table(s, threshold=threshold, metric="mass"), "F")


def one_run(job: dict) -> dict:
    """Train + scan one configuration (a process-pool worker when --jobs > 1)."""
    setup_threads(1)
    import retrieval_heads as rh

    mc, tc = rh.ModelConfig.from_dict(job["model"]), rh.TrainConfig.from_dict(job["train"])
    r = train_and_scan(mc, tc, job["run_dir"], scan_kw=job["scan"], stop_when_formed=job["stop_when_formed"],
                       max_steps=job["max_steps"], log=RunLog(f"{NAME} {Path(job['run_dir']).name}"))
    m = r["metrics"]
    last = m.iloc[-1]
    form = r["formation"] or {}
    mass = _mass_formation(job["run_dir"], job["mass_threshold"])
    formed = form.get("step") is not None
    reach = m[m["niah_acc"] >= 0.5]
    row = {"label": job["label"], "window": job["window"], "seed": tc.seed, "layout": mc.layout,
           "formed": formed,
           "formation_step": form.get("step") if formed else None,
           "formation_tokens": form.get("tokens_seen") if formed else None,
           "formation_layer": form.get("layer"), "formation_head": form.get("head"),
           "censored_at_step": None if formed else int(last["step"]),
           "censored_at_tokens": None if formed else int(last["tokens_seen"]),
           "mass_formed": mass.get("step") is not None,
           "mass_formation_step": mass.get("step"), "mass_formation_tokens": mass.get("tokens_seen"),
           "mass_formation_layer": mass.get("layer"), "mass_formation_head": mass.get("head"),
           "niah50_step": int(reach["step"].iloc[0]) if len(reach) else None,
           "niah50_tokens": int(reach["tokens_seen"].iloc[0]) if len(reach) else None,
           "final_niah_acc": float(last["niah_acc"]), "final_niah_token_acc": float(last["niah_token_acc"]),
           "final_train_niah_loss": float(last["train_niah_loss"]) if last["train_niah_loss"] is not None else None,
           "final_lm_loss": float(last["lm_loss"]),
           "steps": int(last["step"]), "tokens_seen": int(last["tokens_seen"]), "stopped_early": r["stopped_early"],
           "train_s": round(r["train_s"], 1), "scan_s": round(r["scan_s"], 1), "run_dir": job["run_dir"]}
    curve = _f_copy_curve(job["run_dir"]).merge(
        m[["step", "niah_acc", "niah_token_acc", "lm_loss"]], on="step", how="left")
    curve = curve.assign(label=job["label"], window=job["window"], seed=tc.seed)
    return {"row": row, "curve": curve.to_dict("records")}


def summarize(runs):
    """One row per label (window / full): seeds, formed, mean ± std of formation tokens over
    formed seeds, and the smallest censoring point (a lower bound for the unformed ones)."""
    import pandas as pd

    rows = []
    order = {lab: i for i, lab in enumerate(dict.fromkeys(runs["label"]))}
    for lab, g in runs.groupby("label", sort=False):
        f = g[g["formed"]]
        tok = f["formation_tokens"].astype(float)
        rows.append({"label": lab, "window": g["window"].iloc[0], "n_seeds": len(g), "n_formed": len(f),
                     "formation_tokens_mean": tok.mean() if len(f) else math.nan,
                     "formation_tokens_std": tok.std(ddof=1) if len(f) > 1 else math.nan,
                     "formation_step_mean": f["formation_step"].astype(float).mean() if len(f) else math.nan,
                     "formation_tokens_min": tok.min() if len(f) else math.nan,
                     "formation_tokens_max": tok.max() if len(f) else math.nan,
                     "censored_seeds": ",".join(str(s) for s in g[~g["formed"]]["seed"]),
                     "not_formed_by_tokens": (g[~g["formed"]]["censored_at_tokens"].astype(float).min()
                                              if (~g["formed"]).any() else math.nan),
                     "n_mass_formed": int(g["mass_formed"].sum()),
                     "mass_formation_tokens_mean": g["mass_formation_tokens"].astype(float).mean(),
                     "mass_formation_tokens_std": (g["mass_formation_tokens"].astype(float).std(ddof=1)
                                                   if g["mass_formed"].sum() > 1 else math.nan),
                     "n_niah50": int(g["niah50_tokens"].notna().sum()),
                     "niah50_tokens_mean": g["niah50_tokens"].astype(float).mean(),
                     "final_niah_acc_mean": g["final_niah_acc"].mean(), "order": order[lab]})
    return pd.DataFrame(rows).sort_values("order").drop(columns="order").reset_index(drop=True)


def trend(runs) -> dict:
    """Spearman correlation of window vs formation tokens over the SWA runs (censored runs
    enter at their censoring point, a lower bound, which can only understate a rising trend)."""
    from scipy.stats import spearmanr

    swa = runs[runs["window"].notna()]
    y = swa["formation_tokens"].where(swa["formed"], swa["censored_at_tokens"]).astype(float)
    if swa["window"].nunique() < 2 or y.nunique() < 2:
        return {"spearman_rho": None, "p_value": None, "n": len(swa)}
    rho, p = spearmanr(swa["window"].astype(float), y)
    return {"spearman_rho": float(rho), "p_value": float(p), "n": int(len(swa)),
            "note": "censored runs counted at their censoring point (a lower bound)"}


def figures(runs, summary, curves, ctx: int, out: Path, log=print):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    swa_w = sorted(runs["window"].dropna().unique())
    full_x = max([ctx] + [2 * w for w in swa_w])  # where the reference is drawn on the window axis

    def xpos(w):
        return full_x if w is None or (isinstance(w, float) and math.isnan(w)) else w

    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "copy score >= 0.1 (primary)", "mass score >= threshold (secondary)"))
    markers = ["circle", "square", "diamond", "cross", "x", "star"]
    for col, (ok, tok, mean, std, n) in enumerate((
            ("formed", "formation_tokens", "formation_tokens_mean", "formation_tokens_std", "n_formed"),
            ("mass_formed", "mass_formation_tokens", "mass_formation_tokens_mean", "mass_formation_tokens_std",
             "n_mass_formed")), start=1):
        for i, (seed, g) in enumerate(runs.groupby("seed")):
            f, c = g[g[ok]], g[~g[ok]]
            fig.add_trace(go.Scatter(x=[xpos(w) for w in f["window"]], y=f[tok], mode="markers",
                                     name=f"seed {seed}", legendgroup=f"s{seed}", showlegend=col == 1,
                                     marker=dict(size=9, opacity=0.7, symbol=markers[i % len(markers)]),
                                     text=f["label"], hovertemplate="%{text}: %{y:,} tokens<extra></extra>"),
                          row=1, col=col)
            if len(c):
                fig.add_trace(go.Scatter(x=[xpos(w) for w in c["window"]], y=c["tokens_seen"], mode="markers",
                                         name=f"seed {seed}: not formed by (lower bound)", legendgroup=f"c{seed}",
                                         showlegend=col == 1, marker=dict(symbol="triangle-up-open", size=11),
                                         text=c["label"],
                                         hovertemplate="%{text}: not formed by %{y:,} tokens<extra></extra>"),
                              row=1, col=col)
        sm = summary[summary[n] > 0]
        fig.add_trace(go.Scatter(x=[xpos(w) for w in sm["window"]], y=sm[mean],
                                 error_y=dict(type="data", array=sm[std].fillna(0)), mode="lines+markers",
                                 name="mean ± std (formed seeds)", showlegend=col == 1,
                                 line=dict(color="black"), marker=dict(symbol="diamond", size=11)), row=1, col=col)
        fig.update_xaxes(type="log", title_text="SWA window (keys incl. itself)", row=1, col=col,
                         tickvals=[*swa_w, full_x], ticktext=[*(str(int(w)) for w in swa_w), "full attn"])
        fig.update_yaxes(title_text="tokens seen when the first F retrieval head forms" if col == 1 else None,
                         rangemode="tozero", row=1, col=col)
    fig.update_layout(title="Large-Window Laziness: formation of the first full-attention retrieval head "
                            "(open triangles: censored)", height=500, width=1200)
    save_figure(fig, out / "formation_vs_window", log=log)

    labels = list(dict.fromkeys(runs["label"]))
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    color = {lab: palette[i % len(palette)] for i, lab in enumerate(labels)}
    fig = make_subplots(rows=1, cols=3, subplot_titles=("best full-attention copy score",
                                                        "best full-attention mass score",
                                                        "NIAH accuracy (training eval)"))
    for (lab, seed), g in curves.groupby(["label", "seed"], sort=False):
        g = g.sort_values("step")
        kw = dict(mode="lines", line=dict(color=color[lab], width=1.5), legendgroup=lab)
        fig.add_trace(go.Scatter(x=g["tokens_seen"], y=g["f_copy_max"], name=f"{lab}",
                                 showlegend=bool(seed == runs["seed"].min()),
                                 hovertemplate=f"{lab} seed {seed}: %{{y:.2f}}<extra></extra>", **kw), row=1, col=1)
        fig.add_trace(go.Scatter(x=g["tokens_seen"], y=g["f_mass_max"], name=f"{lab}", showlegend=False,
                                 hovertemplate=f"{lab} seed {seed}: %{{y:.2f}}<extra></extra>", **kw), row=1, col=2)
        fig.add_trace(go.Scatter(x=g["tokens_seen"], y=g["niah_acc"], name=f"{lab}", showlegend=False,
                                 hovertemplate=f"{lab} seed {seed}: %{{y:.2f}}<extra></extra>", **kw), row=1, col=3)
    fig.add_hline(y=0.1, line_dash="dash", row=1, col=1)
    for c in (1, 2, 3):
        fig.update_xaxes(title_text="tokens seen", row=1, col=c)
        fig.update_yaxes(range=[-0.02, 1.05], row=1, col=c)
    fig.update_layout(title="Per-run curves (one line per seed)", height=450, width=1400)
    save_figure(fig, out / "curves", log=log)


def main(argv=None) -> dict:
    ap = analysis_parser(__doc__, quick="CPU micro config (~7 min on 2 cores)",
                         preset="preset for the full mode [gpu-small]")
    ap.add_argument("--windows", default=None, help="comma-separated SWA windows")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds")
    ap.add_argument("--steps", type=int, default=None, help="length of the LR schedule")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="stop every run after this step (schedule unchanged; re-run with a larger cap to "
                         "continue the same runs) [0 = no cap]")
    ap.add_argument("--save-every", type=int, default=None, help="checkpoint + eval cadence (formation resolution)")
    ap.add_argument("--n-per-cell", type=int, default=None, help="scan samples per depth")
    ap.add_argument("--stop-when-formed", type=int, default=None,
                    help="stop a run once its F retrieval head has held for K checkpoints (0 = off) "
                         "[quick 3, otherwise 0]")
    ap.add_argument("--mass-threshold", type=float, default=0.5,
                    help="threshold of the secondary, mass-score formation measure")
    ap.add_argument("--full-ref", action=argparse.BooleanOptionalAction, default=None,
                    help="train the all-full-attention reference too [quick: no; smoke and full: yes]")
    ap.add_argument("--set", default=None, help="config overrides: train.lr=0.01,model.d_model=64")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda")
    ap.add_argument("--jobs", type=int, default=0,
                    help="runs trained in parallel, one thread each [0 = one per core in --quick, 1 otherwise]")
    ap.add_argument("--out", default=None, help="output folder [analyses/out/laziness]")
    ap.add_argument("--machine", default=None, help="free-text machine description for results.json")
    ap.add_argument("--record", default=None, help="also write results.json here (e.g. analyses/results/laziness.json)")
    a = ap.parse_args(argv)
    setup_threads(1)
    import pandas as pd

    timer = Timer()
    out = out_dir(NAME, a.out)
    mode = "smoke" if a.smoke else "quick" if a.quick else "full"
    mc, tc, windows, seeds, scan_kw, max_steps, full_ref = build_configs(a)
    if a.jobs < 0:
        raise SystemExit("error: --jobs must be >= 0 (0 = one per core)")
    a.jobs = a.jobs or ((os.cpu_count() or 1) if a.quick else 1)  # full mode: one GPU, one run at a time
    cfgs = run_configs(mc, tc, windows, seeds, full_ref=full_ref)
    stop = a.stop_when_formed if a.stop_when_formed is not None else (3 if a.quick else 0)
    jobs = [{"label": lab, "window": w, "model": m.to_dict(), "train": t.to_dict(), "scan": scan_kw,
             "stop_when_formed": stop or None, "max_steps": max_steps, "mass_threshold": a.mass_threshold,
             "run_dir": str(out / "runs" / f"{lab}_seed{t.seed}")} for lab, w, _, m, t in cfgs]
    print(f"[laziness] {mode}: {len(jobs)} runs ({', '.join(dict.fromkeys(j['label'] for j in jobs))} "
          f"x seeds {list(seeds)}), schedule {tc.steps} steps (cap {max_steps}) of {tc.batch_size}x{tc.context_len} "
          f"tokens; out {out}", flush=True)
    results = map_in_processes(one_run, jobs, workers=a.jobs, threads=1, what=f"{NAME} worker",
                               on_result=lambda r: _log_run(r["row"], timer))

    runs = pd.DataFrame([r["row"] for r in results])
    for c in ("window", "formation_step", "formation_tokens", "censored_at_step", "censored_at_tokens",
              "niah50_step", "niah50_tokens", "mass_formation_step", "mass_formation_tokens",
              "formation_layer", "formation_head", "mass_formation_layer", "mass_formation_head"):
        runs[c] = pd.to_numeric(runs[c], errors="coerce").astype("float64")
    curves = pd.DataFrame([row for r in results for row in r["curve"]])
    curves["window"] = pd.to_numeric(curves["window"], errors="coerce").astype("float64")
    summary = summarize(runs)
    for name, df in (("runs", runs), ("summary", summary)):
        df.to_csv(out / f"{name}.csv", index=False)
        df.to_parquet(out / f"{name}.parquet", index=False)
    curves.to_parquet(out / "curves.parquet", index=False)
    figures(runs, summary, curves, tc.context_len, out)
    tr = trend(runs)

    per_window, per_window_mass = {}, {}
    for lab, g in runs.groupby("label", sort=False):
        per_window[lab] = {f"seed{int(r.seed)}": (int(r.formation_tokens) if r.formed
                                                 else f"not formed by {int(r.censored_at_tokens)} tokens "
                                                      f"(step {int(r.censored_at_step)})")
                           for r in g.itertuples()}
        per_window_mass[lab] = {f"seed{int(r.seed)}": (int(r.mass_formation_tokens) if r.mass_formed
                                                      else f"not formed by {int(r.tokens_seen)} tokens")
                                for r in g.itertuples()}
    res = {
        "analysis": NAME, "mode": mode,
        "command": "python analyses/laziness.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": a.machine or f"{platform.machine()} {platform.system()}, {__import__('os').cpu_count()} cpus",
        "device": tc.device, "wall_s": round(timer(), 1),
        "settings": {"model": mc.to_dict(), "train": tc.to_dict(), "windows": list(windows), "seeds": list(seeds),
                     "full_reference_layout": mc.layout.replace("S", "F") if full_ref else None,
                     "scan": scan_kw, "threshold": 0.1, "stop_when_formed": stop or None, "max_steps": max_steps,
                     "formation": "first checkpoint from which some full-attention head's copy score stays >= 0.1",
                     "mass_formation": f"secondary: same with the mass score >= {a.mass_threshold}"},
        "formation_tokens_per_window_per_seed": per_window,
        "mass_formation_tokens_per_window_per_seed": per_window_mass,
        "summary": summary.to_dict("records"),
        "trend_window_vs_formation": tr,
        "runs": runs.drop(columns=["run_dir"]).to_dict("records"),
        "files": sorted(p.name for p in out.iterdir() if p.is_file()),
    }
    write_json(out / "results.json", res)
    if a.record:
        write_json(a.record, res)
    print(summary[["label", "n_seeds", "n_formed", "formation_tokens_mean", "formation_tokens_std",
                   "not_formed_by_tokens", "n_mass_formed", "mass_formation_tokens_mean", "n_niah50",
                   "final_niah_acc_mean"]].to_string(index=False), flush=True)
    print(f"[laziness] trend: {tr}; wall {timer():.0f} s; wrote {out}", flush=True)
    return jsonable(res)


def _log_run(row, timer):
    f = (f"formed at step {int(row['formation_step'])} ({int(row['formation_tokens']):,} tokens)"
         if row["formed"] else f"not formed by step {row['censored_at_step']}")
    print(f"[laziness] {row['label']} seed {row['seed']}: {f}; final NIAH {row['final_niah_acc']:.2f}; "
          f"train {row['train_s']:.0f} s, scan {row['scan_s']:.0f} s (total {timer():.0f} s)", flush=True)


if __name__ == "__main__":
    main()
