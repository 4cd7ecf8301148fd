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
    pass

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyses.common import (  # noqa: E402
    RunLog,
    analysis_parser,
    map_in_processes,
    Timer,
    apply_overrides,
    jsonable,
    out_dir,
    setup_threads,
    train_and_scan,
    write_json,
)

NAME = "laziness"
FULL = "full"  # label of the all-full-attention reference in the `window` column's string form

# ---------------------------------------------------------------------------------------- settings
# quick: the CPU recipe, preset laziness-cpu (tuning log: analyses/results/logs/laziness_tuning_2026-12-03.md).
# SSSF, d_model 64, 8 heads of 8 (with 4 heads one run in 15 stayed censored per sweep), NoPE on F,
# context 144, batch 8, constant learning rate after warmup, a 4000-step budget; half of the rows
# are needle prompts (noise haystack: the needle's value lies 52-86 tokens before the answer, beyond
# every window), the other half induction rows (a random string of 8-48 bytes repeated); no
# plain-text rows (with 2 of 16 rows of noise text, formation came 2-5x later: tuning log). Windows
# 2-32 (16x) at context 144 (4.5x the largest). Two scan samples per depth. Runs stop once their
# first F head has held the mass measure for 3 checkpoints.
QUICK = dict(preset="laziness-cpu", max_steps=None, windows=(2, 4, 8, 32), seeds=(0, 1, 2), full_ref=True,
             scan=dict(depths=(0.1, 0.3, 0.5, 0.7, 0.9), n_per_cell=2))
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

    if a.smoke:
        mode = SMOKE
        mc = rh.ModelConfig(window=mode["windows"][0], **mode["model"])
        tc = rh.TrainConfig(**mode["train"])
    elif a.quick:
        mode = QUICK
        mc, tc = rh.train.presets.load_preset(mode["preset"])
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


def run_configs(mc, tc, windows, seeds, full_ref: bool, reference_pos: str = "rope"):
    """[(label, window or None, seed, ModelConfig, TrainConfig)]; the reference replaces every
    ``S`` of the layout by ``F`` (same depth and width), with RoPE in every layer
    (``reference_pos="rope"``: a standard transformer) or the hybrid's F encoding in every layer
    (``"same"``; with NoPE on F that is a model without positional encodings)."""
    out = []
    for w in windows:
        if w > tc.context_len:
            raise ValueError(f"windows: {w} is larger than the training context ({tc.context_len})")
        for s in seeds:
            out.append((f"w{w}", w, s, mc.replace(window=w), tc.replace(seed=s)))
    if full_ref:
        full_layout = mc.layout.replace("S", "F")
        for s in seeds:
            pos = {"F": "rope", "S": "rope"} if reference_pos == "rope" else mc.pos
            out.append((FULL, None, s, mc.replace(layout=full_layout, pos=pos), tc.replace(seed=s)))
    return out


MEASURES = ("mass", "copy_tf", "copy")  # the formation measures, primary first


def _reference_layout(layout: str) -> str:
    return layout.replace("S", "F")


def one_run(job: dict) -> dict:
    """Train + scan one configuration (a process-pool worker when --jobs > 1). Returns the run's
    row, its formation rows (one per measure, the laziness_plots summary schema) and curves."""
    setup_threads(1)
    import retrieval_heads as rh
    from retrieval_heads.pipeline.report import curve_rows, formation_rows, load_scan

    mc, tc = rh.ModelConfig.from_dict(job["model"]), rh.TrainConfig.from_dict(job["train"])
    r = train_and_scan(mc, tc, job["run_dir"], scan_kw=job["scan"], stop_when_formed=job["stop_when_formed"],
                       stop_measure=job["stop_measure"], stop_niah=job.get("stop_niah"),
                       max_steps=job["max_steps"],
                       log=RunLog(f"{NAME} {Path(job['run_dir']).name}"))
    m = r["metrics"]
    last = m.iloc[-1]
    t = load_scan(job["run_dir"])
    window = math.nan if job["window"] is None else float(job["window"])
    tok_per_step = tc.batch_size * tc.context_len
    budget_tokens = float((job["max_steps"] or tc.steps) * tok_per_step)
    form = formation_rows(t, job["label"], window, tc.seed)
    for f in form:  # the schedule's budget, not the (early-stopped) last checkpoint
        f["budget_tokens"] = budget_tokens
        f["formation_step"] = f["formation_tokens"] / tok_per_step if f["formed"] else math.nan
        f["share_of_budget"] = f["formation_tokens"] / budget_tokens if f["formed"] else math.nan
        if not f["formed"] and r["stopped_early"]:
            f["censored_at_tokens"] = float(last["tokens_seen"])
    curves = curve_rows(t, job["label"], window, tc.seed, [f["measure"] for f in form])
    row = {"label": job["label"], "window": window, "seed": tc.seed, "layout": mc.layout,
           "budget_steps": job["max_steps"] or tc.steps, "steps": int(last["step"]),
           "tokens_seen": int(last["tokens_seen"]), "stopped_early": r["stopped_early"],
           "final_niah_acc": float(last["niah_acc"]), "final_lm_loss": float(last["lm_loss"]),
           "train_s": round(r["train_s"], 1), "scan_s": round(r["scan_s"], 1), "run_dir": job["run_dir"]}
    for f in form:
        k = f["measure"]
        row[f"{k}_formed"] = f["formed"]
        row[f"{k}_step"] = f["formation_step"]
        row[f"{k}_share"] = f["share_of_budget"]
    return {"row": row, "formation": form, "curves": curves.to_dict("records")}


def statistics(formation, measures) -> dict:
    """Per measure: a Kaplan-Meier estimate per window (median tokens to formation, fraction
    formed by the budget), the log-rank test for a trend in log2(window) over the SWA runs, a
    Cox model on log2(window) where lifelines is installed, and Spearman's rho of window vs
    tokens (censored runs counted at their censoring point, a lower bound: secondary)."""
    import numpy as np

    from retrieval_heads import stats

    out = {}
    for meas in measures:
        d = formation[formation["measure"] == meas]
        t = d["formation_tokens"].where(d["formed"].astype(bool), d["censored_at_tokens"]).astype(float)
        d = d.assign(time=t, observed=d["formed"].astype(bool))
        per_window = {}
        for w, g in d.groupby(d["window"].fillna(math.inf), sort=True):
            km = stats.kaplan_meier(g["time"], g["observed"])
            per_window["full attention" if math.isinf(w) else str(int(w))] = {
                "n": int(len(g)), "formed": int(g["observed"].sum()),
                "km_median_tokens": stats.km_median(g["time"], g["observed"]),
                "km_fraction_formed_by_budget": float(1 - km["survival"].iloc[-1]) if len(km) else 0.0}
        swa = d[d["window"].notna()]
        res = {"per_window": per_window}
        if swa["window"].nunique() >= 2:
            lr = stats.logrank_trend(swa["time"], swa["observed"], swa["window"].astype(float))
            res["logrank_trend"] = {"statistic": lr["statistic"], "z": lr["z"], "p": lr["p"],
                                    "scores": "log2(window)",
                                    "reading": "z < 0: larger windows form later than expected"}
            rho, p = stats.spearman(np.log2(swa["window"].astype(float)), swa["time"])
            res["spearman"] = {"rho": rho, "p": p, "n": int(len(swa)),
                               "note": "censored runs at their censoring point (a lower bound)"}
            try:
                res["cox_log2_window"] = stats.cox_log_window(swa["time"], swa["observed"], swa["window"])
            except ImportError:
                res["cox_log2_window"] = ("not computed: lifelines is not installed "
                                          "(pip install 'retrieval-heads[survival]')")
            except Exception as e:  # e.g. no events at all: report, do not fail the analysis
                res["cox_log2_window"] = f"not computed: {type(e).__name__}: {e}"
        out[meas] = res
    return out


def stats_table(st: dict):
    """One row per measure: the log-rank trend test, Spearman and (if any) the Cox hazard ratio."""
    import pandas as pd

    rows = []
    for meas, r in st.items():
        lr, sp, cox = r.get("logrank_trend") or {}, r.get("spearman") or {}, r.get("cox_log2_window")
        row = {"measure": meas,
               "log-rank trend z (log2 window)": _fmt(lr.get("z"), 2), "log-rank p": _fmt(lr.get("p"), 3),
               "Spearman rho (log2 window vs tokens)": _fmt(sp.get("rho"), 2), "Spearman p": _fmt(sp.get("p"), 3)}
        if isinstance(cox, dict):
            row["Cox hazard ratio per doubling [95% CI]"] = (f"{cox['hazard_ratio']:.2f} [{cox['hr_ci_low']:.2f}, "
                                                             f"{cox['hr_ci_high']:.2f}], p {cox['p']:.3f}")
        else:
            row["Cox hazard ratio per doubling [95% CI]"] = cox or "-"
        rows.append(row)
    return pd.DataFrame(rows)


def km_table(st: dict):
    import pandas as pd

    rows = []
    for meas, r in st.items():
        for w, k in r["per_window"].items():
            med = k["km_median_tokens"]
            rows.append({"measure": meas, "window": w, "formed": f"{k['formed']}/{k['n']}",
                         "Kaplan-Meier median tokens": "not reached" if not math.isfinite(med) else f"{int(med):,}",
                         "fraction formed by the budget (KM)": f"{k['km_fraction_formed_by_budget']:.2f}"})
    return pd.DataFrame(rows)


def _fmt(v, nd):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{nd}f}"


def share_table(formation, measure: str):
    """Per window: each seed's formation step as a share of its budget (the <= 70% check)."""
    import pandas as pd

    d = formation[formation["measure"] == measure]
    rows = []
    for w, g in d.groupby(d["window"].fillna(math.inf), sort=True):
        per = "; ".join(f"seed {int(r.seed)}: " + (f"{r.share_of_budget:.0%} (step {int(r.formation_step)})"
                                                  if r.formed else "censored")
                        for r in g.sort_values("seed").itertuples())
        mx = g["share_of_budget"].max() if g["formed"].all() else math.nan
        rows.append({"window": "full attention" if math.isinf(w) else str(int(w)), "measure": measure,
                     "formation step / budget, per seed": per,
                     "largest share": "-" if not math.isfinite(mx) else f"{mx:.0%}"})
    return pd.DataFrame(rows)


def write_page(out: Path, formation, curves, st, settings_html: str, thresholds: dict, head: str) -> Path:
    """``OUT/laziness.html``: the statistics, the budget shares, then the compare page's laziness
    sections (formation vs window per measure, the censoring-aware table, score and NIAH curves)."""
    from retrieval_heads.pipeline.report import html_page, laziness_sections

    body = [f"<h1>Large-Window Laziness</h1><p>{head}</p>", settings_html,
            "<h2>Does formation grow with the window? (censoring-aware)</h2>",
            stats_table(st).to_html(index=False),
            "<h3>Kaplan-Meier per window</h3>", km_table(st).to_html(index=False),
            "<h3>Formation step as a share of the budget (primary measure)</h3>",
            share_table(formation, MEASURES[0]).to_html(index=False),
            *laziness_sections(formation, curves, first_fig=True, thresholds=thresholds)]
    page = out / "laziness.html"
    page.write_text(html_page("Large-Window Laziness", body), encoding="utf-8")
    return page


def build_parser():
    """The command line of this script (``main`` parses with it; tests build configs from it)."""
    ap = analysis_parser(__doc__, quick="CPU recipe: 4 windows x 3 seeds + the full-attention reference "
                                        "(< 15 min on 2 cores)",
                         preset="preset for the full mode [gpu-small]")
    ap.add_argument("--windows", default=None, help="comma-separated SWA windows")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds")
    ap.add_argument("--steps", type=int, default=None, help="length of the LR schedule (the budget)")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="stop every run after this step (schedule unchanged; re-run with a larger cap to "
                         "continue the same runs) [0 = no cap]")
    ap.add_argument("--save-every", type=int, default=None, help="checkpoint + eval cadence (formation resolution)")
    ap.add_argument("--n-per-cell", type=int, default=None, help="scan samples per depth")
    ap.add_argument("--stop-when-formed", type=int, default=None,
                    help="stop a run once its F retrieval head (by --stop-measure) has held for K checkpoints "
                         "(0 = off) [quick 3, otherwise 0]")
    ap.add_argument("--stop-measure", default="mass", choices=MEASURES,
                    help="formation measure that --stop-when-formed watches [mass]")
    ap.add_argument("--stop-niah", type=float, default=None,
                    help="with --stop-when-formed, also require the trainer's NIAH accuracy at the stopping "
                         "checkpoint to be at least this (an attention pattern that does not retrieve yet can "
                         "fade again; at small windows the mass pattern can form long before the model "
                         "retrieves, so this makes those runs train their whole budget) [off]")
    ap.add_argument("--thresholds", default=None,
                    help="formation thresholds, e.g. mass=0.5,copy_tf=0.1,copy=0.1 [the scan's defaults]")
    ap.add_argument("--full-ref", action=argparse.BooleanOptionalAction, default=None,
                    help="train the all-full-attention reference too [default: yes]")
    ap.add_argument("--reference-pos", default="rope", choices=("rope", "same"),
                    help="positional encoding of the full-attention reference: RoPE in every layer, or the "
                         "hybrid's F encoding in every layer [rope]")
    ap.add_argument("--set", default=None, help="config overrides: train.lr=0.01,model.d_model=64")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda")
    ap.add_argument("--jobs", type=int, default=0,
                    help="runs trained in parallel, one thread each [0 = one per core in --quick, 1 otherwise]")
    ap.add_argument("--out", default=None, help="output folder [analyses/out/laziness]")
    ap.add_argument("--machine", default=None, help="free-text machine description for results.json")
    ap.add_argument("--record", default=None, help="also write results.json here (e.g. analyses/results/laziness.json)")
    return ap


def main(argv=None) -> dict:
    a = build_parser().parse_args(argv)
    setup_threads(1)
    import pandas as pd

    from retrieval_heads.detect.formation import check_thresholds, measure_thresholds

    timer = Timer()
    load_before = os.getloadavg()
    out = out_dir(NAME, a.out)
    mode = "smoke" if a.smoke else "quick" if a.quick else "full"
    mc, tc, windows, seeds, scan_kw, max_steps, full_ref = build_configs(a)
    thresholds = measure_thresholds(check_thresholds(_pairs(a.thresholds)) if a.thresholds else None)
    scan_kw = {**scan_kw, "thresholds": thresholds}
    if a.jobs < 0:
        raise SystemExit("error: --jobs must be >= 0 (0 = one per core)")
    a.jobs = a.jobs or ((os.cpu_count() or 1) if a.quick else 1)  # full mode: one GPU, one run at a time
    cfgs = run_configs(mc, tc, windows, seeds, full_ref=full_ref, reference_pos=a.reference_pos)
    stop = a.stop_when_formed if a.stop_when_formed is not None else (3 if a.quick else 0)
    stop_niah = None if (a.stop_niah is None or a.stop_niah < 0 or not stop) else a.stop_niah
    jobs = [{"label": lab, "window": w, "model": m.to_dict(), "train": t.to_dict(), "scan": scan_kw,
             "stop_when_formed": stop or None, "stop_measure": a.stop_measure, "stop_niah": stop_niah,
             "max_steps": max_steps, "run_dir": str(out / "runs" / f"{lab}_seed{t.seed}")} for lab, w, _, m, t in cfgs]
    # the longest runs first: the pool's last job is then a short one
    jobs.sort(key=lambda j: -(j["window"] or 10**9))
    print(f"[laziness] {mode}: {len(jobs)} runs ({', '.join(dict.fromkeys(j['label'] for j in jobs))} "
          f"x seeds {list(seeds)}), budget {tc.steps} steps (cap {max_steps}) of {tc.batch_size}x{tc.context_len} "
          f"tokens, {a.jobs} at once; load average {load_before[0]:.2f}; out {out}", flush=True)
    results = map_in_processes(one_run, jobs, workers=a.jobs, threads=1, what=f"{NAME} worker",
                               on_result=lambda r: _log_run(r["row"], timer))

    runs = pd.DataFrame([r["row"] for r in results]).sort_values(["window", "seed"], na_position="last")
    formation = pd.DataFrame([f for r in results for f in r["formation"]])
    formation = formation.sort_values(["window", "seed", "measure"], na_position="last").reset_index(drop=True)
    curves = pd.DataFrame([c for r in results for c in r["curves"]])
    measures = [m for m in MEASURES if m in set(formation["measure"])]
    st = statistics(formation, measures)
    from retrieval_heads.laziness_plots import formation_summary_table

    table = formation_summary_table(formation)
    for name, df in (("runs", runs), ("formation", formation), ("table", table)):
        df.to_csv(out / f"{name}.csv", index=False)
    runs.to_parquet(out / "runs.parquet", index=False)
    formation.to_parquet(out / "formation.parquet", index=False)
    curves.to_parquet(out / "curves.parquet", index=False)

    settings = {"model": mc.to_dict(), "train": tc.to_dict(), "windows": list(windows), "seeds": list(seeds),
                "full_reference_layout": _reference_layout(mc.layout) if full_ref else None,
                "full_reference_pos": a.reference_pos if full_ref else None,
                "scan": scan_kw, "thresholds": thresholds, "stop_when_formed": stop or None,
                "stop_measure": a.stop_measure, "stop_niah": stop_niah, "max_steps": max_steps,
                "formation": "per measure: the first checkpoint from which some full-attention head's score stays "
                             "at or above its threshold to the end of the run (a run stopped early by "
                             "--stop-when-formed ends K checkpoints after that, and with --stop-niah only once "
                             "the trainer's NIAH accuracy there is at least that); runs where none does are "
                             "censored at their last checkpoint"}
    wall = timer()
    head = (f"{len(runs)} runs: windows {', '.join(map(str, windows))}"
            f"{' and the full-attention reference' if full_ref else ''}, seeds {', '.join(map(str, seeds))}; "
            f"budget {tc.steps} steps of {tc.batch_size}x{tc.context_len} tokens; wall {wall:.0f} s; "
            f"command <code>python analyses/laziness.py {' '.join(argv if argv is not None else sys.argv[1:])}</code>")
    settings_html = ("<details><summary>settings</summary><pre>"
                     + __import__("html").escape(__import__("json").dumps(settings, indent=1)) + "</pre></details>")
    page = write_page(out, formation, curves, st, settings_html, thresholds, head)
    res = {
        "analysis": NAME, "mode": mode,
        "command": "python analyses/laziness.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": a.machine or f"{platform.machine()} {platform.system()}, {os.cpu_count()} cpus",
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
        "device": tc.device, "wall_s": round(wall, 1), "settings": settings,
        "formation_table": table.to_dict("records"),
        "budget_shares": share_table(formation, measures[0]).to_dict("records") if measures else [],
        "statistics": st,
        "runs": runs.drop(columns=["run_dir"]).to_dict("records"),
        "formation": formation.to_dict("records"),
        "files": sorted(p.name for p in out.iterdir() if p.is_file()),
    }
    write_json(out / "results.json", res)
    if a.record:
        write_json(a.record, res)
    with pd.option_context("display.width", 250, "display.max_colwidth", 120):
        print(table.to_string(index=False), flush=True)
        if measures:
            print(share_table(formation, measures[0]).to_string(index=False), flush=True)
        print(stats_table(st).to_string(index=False), flush=True)
    print(f"[laziness] wall {wall:.0f} s; load average {os.getloadavg()[0]:.2f}; page {page}; wrote {out}",
          flush=True)
    return jsonable(res)


def _pairs(spec: str) -> dict:
    out = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        k, sep, v = item.partition("=")
        try:
            out[k.strip()] = float(v)
        except ValueError:
            raise SystemExit(f"error: --thresholds: expected MEASURE=NUMBER, got {item!r}") from None
        if not sep:
            raise SystemExit(f"error: --thresholds: expected MEASURE=NUMBER, got {item!r}")
    return out


def _log_run(row, timer):
    k = MEASURES[0]
    f = (f"{k} formed at step {int(row[f'{k}_step'])} ({row[f'{k}_share']:.0%} of the budget)"
         if row.get(f"{k}_formed") else f"{k}: not formed by step {row['steps']}")
    print(f"[laziness] {row['label']} seed {row['seed']}: {f}; final NIAH {row['final_niah_acc']:.2f}; "
          f"train {row['train_s']:.0f} s, scan {row['scan_s']:.0f} s (total {timer():.0f} s)", flush=True)


if __name__ == "__main__":
    main()
