"""Scaling / emergence: how fast does long-context ability emerge in each hybrid, and do they converge?

Trains hybrids that differ only in their efficient layers — SWA of several windows and the
recurrent mixers Mamba-2-style (M), gated DeltaNet (D) and lightning attention (L) — against
the all-full-attention model (F), on the same data. For every checkpoint it records NIAH
accuracy (training evaluation) and held-out long-context loss (``rh.eval.long_context_loss``
on the essay tail; "long" = the last position bucket). It then

* compares final NIAH accuracy of each hybrid with F's (``converged`` = within ``--tol``),
  and when each first reaches NIAH >= 0.5 (tokens seen);
* fits ``L(N, D) = B / N^alpha + C / D^beta`` (no constant; Huber loss on log L,
  ``scipy.optimize``) per hybrid family trained at >= 3 sizes, N = non-embedding parameters,
  D = tokens seen, using every checkpoint past warm-up; and again without the largest size,
  to report how well the fit extrapolates to it.

How to run::

    python analyses/emergence.py --quick                  # CPU: 3 seeds, micro sizes, 500 steps (NIAH not formed yet)
    python analyses/emergence.py --device cuda            # GPU, gpu-small-sized hybrids, 3 sizes
    python analyses/emergence.py --quick --hybrids S:8,M --sizes 16,32,48 --out /tmp/emg
    python analyses/emergence.py --quick --seed 1            # one seed (--quick defaults to 0,1,2)

Several seeds (issue 20): ``--seeds`` (default 0,1,2 in ``--quick`` and full; ``--seed S`` = one
seed, the training seed of every run) runs the one-seed analysis per seed, one seed after the
other (each with ``--jobs`` runs at once: one per core in ``--quick``), into ``--out``/seed_S/;
``--out``/results.json then holds ``per_seed`` and ``aggregate``: per layout at the main size
the final NIAH and long-context loss over seeds (mean, 95% bootstrap interval, n), the step of
NIAH >= 0.5 with censoring (k/n, Kaplan-Meier median, "not learned by step N"), convergence to F
"reproduced on k of n seeds" (not measurable on a seed where F itself did not learn), and each
fit's exponents over seeds.

Writes under ``--out`` (default ``analyses/out/emergence/``): ``runs.csv/.parquet`` (one row per
run), ``evals.parquet`` (one row per run x checkpoint), ``position_loss.parquet`` (final loss per
position bucket), ``fit.csv/.parquet`` and ``fit_residuals.parquet``, figures
``niah_vs_tokens``, ``loss_vs_tokens``, ``scaling_fit``, ``position_loss`` (.html, .png where
kaleido works) and ``results.json``. Runs go to ``OUT/runs/`` and are reused when re-run.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyses.seeds import (  # noqa: E402
    default_jobs,
    format_summary,
    reproduced,
    seeds_from_args,
    strip_options,
    summarize_learning,
    summarize_values,
)
from analyses.common import (  # noqa: E402
    RunLog,
    analysis_parser,
    map_in_processes,
    Timer,
    apply_overrides,
    jsonable,
    non_embedding_params,
    out_dir,
    save_figure,
    setup_threads,
    train_and_scan,
    write_json,
)

NAME = "emergence"

# Each mode: a base model/train config whose `S` letters mark the efficient slots; `hybrids`
# fill them ("S:w" = SWA of window w, "M", "D", "L" = recurrent mixers; "F" = all full
# attention, the reference, always added); `sizes` = d_model values (heads = d_model / d_head).
QUICK = dict(
    model=dict(layout="SSSF", d_model=32, n_heads=4, d_mlp=64, window=8, pos={"F": "nope", "S": "rope"},
               max_seq_len=256),
    train=dict(steps=500, batch_size=8, context_len=144, lr=5e-3, warmup_steps=30, niah_fraction=0.25,
               induction_fraction=0.25, niah_variant="single_1", haystack="essay", eval_every=50,
               eval_samples=8, save_every=50, save_log_spaced=True),
    hybrids=("S:8", "S:32", "M", "D", "L"), sizes=(16, 32, 48), main_size=32, d_head=8,
    fit=("F", "S:8"), eval=dict(n=8, buckets=4), niah=dict(n=2),
)
# the smoke mode: QUICK shrunk to seconds (what differs from QUICK only)
SMOKE = dict(
    model={**QUICK["model"], "layout": "SF", "d_model": 16, "n_heads": 2, "d_mlp": 32, "max_seq_len": 192},
    train={**QUICK["train"], "steps": 3, "batch_size": 2, "warmup_steps": 1, "niah_fraction": 0.5,
           "induction_fraction": 0.0, "eval_every": 1, "eval_samples": 1, "save_every": 1,
           "save_log_spaced": False},
    hybrids=("S:8", "M"), sizes=(8, 16, 24), main_size=16, d_head=8,
    fit=("F",), eval=dict(n=1, buckets=2), niah=dict(n=1),
)
FULL_MODE = dict(
    preset="gpu-small", hybrids=("S:64", "S:256", "M", "D", "L"), sizes=(128, 192, 256), main_size=256,
    d_head=32, fit=("F", "S:64", "M", "D", "L"), train=dict(save_log_spaced=True),
    eval=dict(n=16, buckets=8), niah=dict(n=8),
)


def parse_list(s, cast=str):
    return tuple(cast(x.strip()) for x in s.split(",") if x.strip()) if s else None


def hybrid_config(base, spec: str, d_model: int, d_head: int):
    """ModelConfig for hybrid ``spec`` ("S:w", "M", "D", "L", "F") at width ``d_model``."""
    kind, _, w = spec.partition(":")
    kind = kind.upper()
    if kind not in ("S", "M", "D", "L", "F"):
        raise ValueError(f"hybrid {spec!r}: use S:<window>, M, D, L or F")
    layout = base.layout.replace("S", kind)
    ratio = base.d_mlp / base.d_model
    if d_model % d_head:
        raise ValueError(f"sizes: d_model {d_model} is not a multiple of d_head {d_head}")
    return base.replace(layout=layout, window=int(w) if (kind == "S" and w) else base.window,
                        d_model=d_model, n_heads=d_model // d_head, d_mlp=int(round(ratio * d_model)),
                        n_kv_heads=None, n_layers=None)  # re-derive them (replace keeps resolved values)


def label_of(spec: str, layout: str) -> str:
    kind, _, w = spec.partition(":")
    return f"{layout} w={w}" if kind.upper() == "S" else layout


def build(a):
    import retrieval_heads as rh

    if a.smoke or a.quick:
        mode = SMOKE if a.smoke else QUICK
        base = rh.ModelConfig(**mode["model"])
        tc = rh.TrainConfig(**mode["train"])
    else:
        mode = FULL_MODE
        base, tc = rh.train.presets.load_preset(a.preset or mode["preset"])
        tc = tc.replace(**mode["train"])
    base, tc = apply_overrides(base, tc, a.set)
    changes = {"device": a.device, "seed": a.seed}
    if a.steps:
        changes.update(steps=a.steps, save_every=max(1, a.steps // 10), eval_every=max(1, a.steps // 10))
    tc = tc.replace(**changes)
    hybrids = parse_list(a.hybrids) or mode["hybrids"]
    sizes = parse_list(a.sizes, int) or mode["sizes"]
    main_size = a.main_size or mode["main_size"]
    if main_size not in sizes:
        raise ValueError(f"main size {main_size} is not one of the sizes {sizes}")
    fit = parse_list(a.fit) or mode["fit"]
    specs = list(dict.fromkeys([*hybrids, "F"]))
    jobs = []
    for spec in specs:
        for d in sizes:
            if d != main_size and spec not in fit:
                continue
            mc = hybrid_config(base, spec, d, mode["d_head"])
            if "S" in mc.layout and mc.window > tc.context_len:
                raise ValueError(f"hybrid {spec}: window {mc.window} exceeds the context {tc.context_len}")
            lab = label_of(spec, mc.layout)
            jobs.append({"spec": spec, "label": lab, "family": spec, "d_model": d, "main": d == main_size,
                         "model": mc.to_dict(), "train": tc.to_dict(),
                         "eval": dict(mode["eval"]), "niah": dict(mode["niah"]),
                         "run_dir": None})
    return base, tc, jobs, dict(hybrids=hybrids, sizes=sizes, main_size=main_size, fit=fit, mode=mode)


def one_run(job: dict) -> dict:
    """Train one hybrid, then evaluate every checkpoint: held-out loss by position bucket; the
    last checkpoint also gets a larger NIAH grid."""
    setup_threads(1)
    import pandas as pd

    import retrieval_heads as rh

    mc, tc = rh.ModelConfig.from_dict(job["model"]), rh.TrainConfig.from_dict(job["train"])
    r = train_and_scan(mc, tc, job["run_dir"], scan=False, log=RunLog(f"{NAME} {Path(job['run_dir']).name}"))
    t = Timer()
    m = r["metrics"]
    N = non_embedding_params(mc)
    rows, pos_rows = [], []
    ckpts = rh.list_checkpoints(job["run_dir"])
    dev = "cuda" if tc.device.startswith("cuda") else "cpu"
    for i, ck in enumerate(ckpts):
        model = rh.load_checkpoint(ck, device=dev)
        lc = rh.eval.long_context_loss(model, context_len=tc.context_len, n=job["eval"]["n"],
                                       buckets=job["eval"]["buckets"], text="essay")
        step = int(model.checkpoint["step"])
        rows.append({"step": step, "tokens_seen": int(model.checkpoint["tokens_seen"]),
                     "heldout_loss": float((lc["loss"] * lc["n_tokens"]).sum() / lc["n_tokens"].sum()),
                     "long_loss": float(lc["loss"].iloc[-1]), "long_from": int(lc["start"].iloc[-1])})
        if i == len(ckpts) - 1:
            pos_rows = lc.assign(step=step).to_dict("records")
            final_niah = rh.eval.niah_accuracy(model, [tc.context_len], n=job["niah"]["n"], seed=1,
                                               variant=tc.niah_variant)
    ev = pd.DataFrame(rows).merge(m[["step", "niah_acc", "niah_token_acc", "lm_loss"]], on="step", how="left")
    ev = ev.assign(label=job["label"], family=job["family"], layout=mc.layout, d_model=mc.d_model, N=N,
                   main=job["main"])
    last = m.iloc[-1]
    reach = m[m["niah_acc"] >= 0.5]
    row = {"label": job["label"], "family": job["family"], "layout": mc.layout,
           "window": mc.window if "S" in mc.layout else None, "d_model": mc.d_model, "n_heads": mc.n_heads,
           "N": N, "main": job["main"], "steps": int(last["step"]), "tokens_seen": int(last["tokens_seen"]),
           "final_niah_acc_train_eval": float(last["niah_acc"]), "final_niah_acc": final_niah,
           "final_long_loss": rows[-1]["long_loss"], "final_heldout_loss": rows[-1]["heldout_loss"],
           "niah50_tokens": int(reach["tokens_seen"].iloc[0]) if len(reach) else None,
           "niah50_step": int(reach["step"].iloc[0]) if len(reach) else None, "seed": tc.seed,
           "train_s": round(r["train_s"], 1), "eval_s": round(t(), 1)}
    return {"row": row, "evals": ev.to_dict("records"),
            "pos": [dict(p, label=job["label"], main=job["main"]) for p in pos_rows]}


# ------------------------------------------------------------------------------ scaling-law fit
def fit_scaling(N, D, L, delta: float = 1e-3):
    """Fit ``L = B/N^alpha + C/D^beta`` minimising sum Huber_delta(log pred - log L) over a grid
    of starting points (L-BFGS-B). Returns a dict of parameters, objective and residuals."""
    import numpy as np
    from scipy.optimize import minimize

    N, D, L = (np.asarray(x, dtype=float) for x in (N, D, L))
    logN, logD, logL = np.log(N), np.log(D), np.log(L)

    def pred_log(p):
        b, alpha, c, beta = p
        return np.logaddexp(b - alpha * logN, c - beta * logD)

    def obj(p):  # (value, gradient) of the summed Huber loss of the log residuals
        b, alpha, c, beta = p
        u, v = b - alpha * logN, c - beta * logD
        lp = np.logaddexp(u, v)
        wu = np.exp(u - lp)  # d lp / d u; d lp / d v = 1 - wu
        r = lp - logL
        a = np.abs(r)
        val = float(np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)).sum())
        psi = np.clip(r, -delta, delta)  # Huber derivative
        grad = np.array([(psi * wu).sum(), -(psi * wu * logN).sum(), (psi * (1 - wu)).sum(),
                         -(psi * (1 - wu) * logD).sum()])
        return val, grad

    best = None
    bounds = [(-20, 40), (0.0, 3.0), (-20, 40), (0.0, 3.0)]
    for b0 in (0.0, 5.0, 10.0):
        for a0 in (0.1, 0.5, 1.0):
            for c0 in (0.0, 5.0, 10.0):
                for be0 in (0.1, 0.5, 1.0):
                    r = minimize(obj, [b0, a0, c0, be0], jac=True, method="L-BFGS-B", bounds=bounds)
                    if best is None or r.fun < best.fun:
                        best = r
    b, alpha, c, beta = best.x
    res = pred_log(best.x) - logL
    return {"B": float(np.exp(b)), "alpha": float(alpha), "C": float(np.exp(c)), "beta": float(beta),
            "log_B": float(b), "log_C": float(c), "huber_objective": float(best.fun), "huber_delta": delta,
            "rmse_log": float(np.sqrt(np.mean(res ** 2))), "max_abs_log_residual": float(np.abs(res).max()),
            "n_points": int(len(L)), "n_sizes": int(len(set(N.tolist()))), "optimizer_success": bool(best.success),
            "at_bound": [bool(abs(v - lo) < 1e-6 or abs(v - hi) < 1e-6) for v, (lo, hi) in zip(best.x, bounds)],
            "residuals": res.tolist(), "params": best.x.tolist()}


def predict(fit: dict, N, D):
    import numpy as np

    return fit["B"] / np.asarray(N, float) ** fit["alpha"] + fit["C"] / np.asarray(D, float) ** fit["beta"]


def run_fits(evals, fit_families, min_step: int, target: str):
    """Per family with >= 3 sizes: a fit on all points, and one without the largest size
    (its prediction error on the held-out size)."""
    import numpy as np
    import pandas as pd

    fits, resid = [], []
    for fam in fit_families:
        e = evals[(evals["family"] == fam) & (evals["step"] >= min_step) & (evals["tokens_seen"] > 0)]
        e = e[np.isfinite(e[target])]
        sizes = sorted(e["N"].unique())
        if len(sizes) < 3:
            fits.append({"family": fam, "target": target, "status": f"skipped: {len(sizes)} sizes (< 3)"})
            continue
        f = fit_scaling(e["N"], e["tokens_seen"], e[target])
        row = {"family": fam, "label": e["label"].iloc[0], "target": target, "status": "ok",
               "sizes_N": [int(s) for s in sizes], "min_step": min_step,
               **{k: v for k, v in f.items() if k not in ("residuals", "params")}}
        held = e[e["N"] == sizes[-1]]
        rest = e[e["N"] != sizes[-1]]
        f2 = fit_scaling(rest["N"], rest["tokens_seen"], rest[target])
        pr = np.log(predict(f2, held["N"], held["tokens_seen"])) - np.log(held[target].to_numpy())
        row.update({"holdout_largest_alpha": f2["alpha"], "holdout_largest_beta": f2["beta"],
                    "holdout_largest_rmse_log": float(np.sqrt(np.mean(pr ** 2))),
                    "holdout_largest_mean_log_error": float(np.mean(pr))})
        fits.append(row)
        resid.append(e[["label", "family", "d_model", "N", "step", "tokens_seen", target]].assign(
            predicted=predict(f, e["N"], e["tokens_seen"]), log_residual=f["residuals"]))
    return pd.DataFrame(fits), (pd.concat(resid, ignore_index=True) if resid else pd.DataFrame())


# ------------------------------------------------------------------------------ figures
def figures(runs, evals, pos, fits, out: Path, target: str, log=print):
    import numpy as np
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    main = evals[evals["main"]]
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    labels = list(dict.fromkeys(main["label"]))
    color = {lab: palette[i % len(palette)] for i, lab in enumerate(labels)}
    for name, col, title in (("niah_vs_tokens", "niah_acc", "NIAH accuracy (training eval) vs tokens seen"),
                             ("loss_vs_tokens", target, f"held-out long-context loss ({target}) vs tokens seen")):
        fig = go.Figure()
        for lab, g in main.groupby("label", sort=False):
            g = g.sort_values("step")
            g = g[g["tokens_seen"] > 0] if col != "niah_acc" else g
            fig.add_trace(go.Scatter(x=g["tokens_seen"], y=g[col], mode="lines+markers", name=lab,
                                     line=dict(color=color[lab], dash="dash" if lab.startswith("F") and
                                               set(lab.split()[0]) == {"F"} else "solid")))
        fig.update_xaxes(title_text="tokens seen", type="log" if col != "niah_acc" else "linear")
        fig.update_yaxes(title_text=col, **({"range": [-0.02, 1.05]} if col == "niah_acc" else {"type": "log"}))
        fig.update_layout(title=title, height=450, width=900)
        save_figure(fig, out / name, log=log)

    ok = fits[fits["status"] == "ok"] if len(fits) else fits
    if len(ok):
        fig = make_subplots(rows=1, cols=len(ok), subplot_titles=[
            f"{r.label}: α={r.alpha:.2f} β={r.beta:.2f} rmse(log)={r.rmse_log:.3f}" for r in ok.itertuples()])
        for i, r in enumerate(ok.itertuples(), start=1):
            e = evals[(evals["family"] == r.family) & (evals["step"] >= r.min_step) & (evals["tokens_seen"] > 0)]
            fit = {"B": r.B, "alpha": r.alpha, "C": r.C, "beta": r.beta}
            for j, (N, g) in enumerate(e.groupby("N")):
                g = g.sort_values("tokens_seen")
                c = palette[j % len(palette)]
                fig.add_trace(go.Scatter(x=g["tokens_seen"], y=g[target], mode="markers", marker=dict(color=c),
                                         name=f"N={N:,}", legendgroup=f"N{N}", showlegend=i == 1), row=1, col=i)
                Ds = np.geomspace(g["tokens_seen"].min(), g["tokens_seen"].max(), 50)
                fig.add_trace(go.Scatter(x=Ds, y=predict(fit, [N] * len(Ds), Ds), mode="lines",
                                         line=dict(color=c), showlegend=False, legendgroup=f"N{N}"), row=1, col=i)
            fig.update_xaxes(type="log", title_text="tokens seen D", row=1, col=i)
            fig.update_yaxes(type="log", title_text=target if i == 1 else None, row=1, col=i)
        fig.update_layout(title="Scaling fit L = B/N^α + C/D^β (points: checkpoints; lines: fit)",
                          height=450, width=max(500, 420 * len(ok)))
        save_figure(fig, out / "scaling_fit", log=log)

    if len(pos):
        fig = go.Figure()
        pm = pos[pos["main"]]
        for lab, g in pm.groupby("label", sort=False):
            fig.add_trace(go.Scatter(x=(g["start"] + g["end"]) / 2, y=g["loss"], mode="lines+markers", name=lab,
                                     line=dict(color=color.get(lab))))
        fig.update_xaxes(title_text="position (bucket centre)")
        fig.update_yaxes(title_text="held-out loss")
        fig.update_layout(title="Final held-out loss by position", height=420, width=800)
        save_figure(fig, out / "position_loss", log=log)


def main(argv=None) -> dict:
    ap = analysis_parser(__doc__, quick="CPU micro sizes (~4 min on 2 cores)",
                         preset="base preset of the full mode [gpu-small]")
    ap.add_argument("--hybrids", default=None, help="comma list of S:<window>, M, D, L (F is always added)")
    ap.add_argument("--sizes", default=None, help="comma list of d_model values (>= 3 for the fit)")
    ap.add_argument("--main-size", type=int, default=None, help="d_model at which every hybrid is trained")
    ap.add_argument("--fit", default=None, help="hybrids trained at every size and fitted (e.g. F,S:8)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--tol", type=float, default=0.1, help="converged = final NIAH within tol of F's")
    ap.add_argument("--min-ref-niah", type=float, default=0.5,
                    help="convergence is undetermined while F's final NIAH is below this")
    ap.add_argument("--target", default="long_loss", choices=["long_loss", "heldout_loss", "lm_loss"],
                    help="loss used in the scaling fit")
    ap.add_argument("--fit-min-step", type=int, default=None, help="fit only checkpoints from this step [2 x warm-up]")
    ap.add_argument("--set", default=None, help="config overrides: train.lr=0.01,model.d_model=64")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--jobs", type=int, default=0, help="runs trained in parallel, one thread each "
                                                        "[0 = one per core in --quick, else 1]")
    ap.add_argument("--seed", type=int, default=0, help="training seed of every run (one seed)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds, run one after the other "
                                                  "[default: 0,1,2 in --quick and full, --seed in --smoke]")
    ap.add_argument("--out", default=None, help="output folder [analyses/out/emergence]")
    ap.add_argument("--machine", default=None, help="free-text machine description for results.json")
    ap.add_argument("--record", default=None,
                    help="also write results.json here (e.g. analyses/results/emergence.json)")
    a = ap.parse_args(argv)
    setup_threads(1)
    import pandas as pd

    timer = Timer()
    out = out_dir(NAME, a.out)
    mode = "smoke" if a.smoke else "quick" if a.quick else "full"
    seeds = seeds_from_args(a, argv, mode)
    if len(seeds) > 1:
        return main_seeds(a, argv, mode, out, seeds, timer)
    a.seed = seeds[0]
    base, tc, jobs, info = build(a)
    for j in jobs:
        j["run_dir"] = str(out / "runs" / f"{j['spec'].replace(':', '')}_d{j['d_model']}")
    names = ", ".join(f"{j['label']} d{j['d_model']}" for j in jobs)
    print(f"[emergence] {mode}: {len(jobs)} runs ({names}); "
          f"{tc.steps} steps of {tc.batch_size}x{tc.context_len} tokens; out {out}", flush=True)
    results = []

    def log_run(r):
        row = r["row"]
        print(f"[emergence] {row['label']} d{row['d_model']} (N={row['N']:,}): NIAH {row['final_niah_acc']:.2f}, "
              f"long loss {row['final_long_loss']:.3f}; train {row['train_s']:.0f} s, eval {row['eval_s']:.0f} s "
              f"(total {timer():.0f} s)", flush=True)

    workers = default_jobs(a.jobs, len(jobs), mode)
    results = map_in_processes(one_run, jobs, workers=workers, threads=1, what=f"{NAME} worker", on_result=log_run)

    runs = pd.DataFrame([r["row"] for r in results])
    for c in ("window", "niah50_tokens"):
        runs[c] = pd.to_numeric(runs[c], errors="coerce").astype("float64")
    evals = pd.DataFrame([e for r in results for e in r["evals"]])
    pos = pd.DataFrame([p for r in results for p in r["pos"]])

    # convergence vs the full-attention reference at the main size
    ref = runs[(runs["family"] == "F") & runs["main"]].iloc[0]
    runs["niah_gap_vs_F"] = runs["final_niah_acc"] - ref["final_niah_acc"]
    # "converged" only means something once the reference itself has learned the task
    determined = ref["final_niah_acc"] >= a.min_ref_niah
    runs["converged"] = pd.array([bool(abs(g) <= a.tol) if determined else pd.NA for g in runs["niah_gap_vs_F"]],
                                 dtype="boolean")
    runs["convergence_status"] = [
        ("converged" if abs(g) <= a.tol else "not converged") if determined else
        f"undetermined: F reaches only {ref['final_niah_acc']:.2f} NIAH (< {a.min_ref_niah})"
        for g in runs["niah_gap_vs_F"]]
    runs["long_loss_ratio_vs_F"] = runs["final_long_loss"] / ref["final_long_loss"]
    min_step = a.fit_min_step if a.fit_min_step is not None else 2 * tc.warmup_steps
    fits, resid = run_fits(evals, info["fit"], min_step, a.target)

    runs.to_csv(out / "runs.csv", index=False)
    runs.to_parquet(out / "runs.parquet", index=False)
    evals.to_parquet(out / "evals.parquet", index=False)
    pos.to_parquet(out / "position_loss.parquet", index=False)
    fits_t = fits.copy()
    for c in ("sizes_N", "at_bound"):
        if c in fits_t:
            fits_t[c] = fits_t[c].map(lambda v: ",".join(map(str, v)) if isinstance(v, list) else v)
    fits_t.to_csv(out / "fit.csv", index=False)
    fits_t.to_parquet(out / "fit.parquet", index=False)
    resid.to_parquet(out / "fit_residuals.parquet", index=False)
    figures(runs, evals, pos, fits, out, a.target)

    main_runs = runs[runs["main"]]
    res = {
        "analysis": NAME, "mode": mode,
        "command": "python analyses/emergence.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": a.machine or f"{platform.machine()} {platform.system()}, {os.cpu_count()} cpus",
        "device": tc.device, "wall_s": round(timer(), 1),
        "settings": {"base_model": base.to_dict(), "train": tc.to_dict(),
                     **{k: v for k, v in info.items() if k != "mode"},
                     "tol": a.tol, "min_ref_niah": a.min_ref_niah, "fit_target": a.target, "fit_min_step": min_step,
                     "long_loss": "held-out essay tail, mean loss of the last position bucket",
                     "fit_form": "L = B/N^alpha + C/D^beta, Huber(delta=1e-3) on log L, L-BFGS-B from a 81-point grid"},
        "final_niah_per_layout": {r.label: r.final_niah_acc for r in main_runs.itertuples()},
        "converged_within_tol_of_F": {r.label: r.convergence_status for r in main_runs.itertuples()},
        "niah50_tokens_per_layout": {r.label: (None if pd.isna(r.niah50_tokens) else int(r.niah50_tokens))
                                     for r in main_runs.itertuples()},
        "final_long_loss_per_layout": {r.label: r.final_long_loss for r in main_runs.itertuples()},
        "fits": fits.to_dict("records"),
        "runs": runs.to_dict("records"),
        "files": sorted(p.name for p in out.iterdir() if p.is_file()),
    }
    write_json(out / "results.json", res)
    if a.record:
        write_json(a.record, res)
    print(main_runs[["label", "N", "final_niah_acc", "niah_gap_vs_F", "convergence_status", "niah50_tokens",
                     "final_long_loss"]].to_string(index=False), flush=True)
    if len(fits):
        cols = [c for c in ("family", "status", "B", "alpha", "C", "beta", "rmse_log", "holdout_largest_rmse_log")
                if c in fits]
        print(fits[cols].to_string(index=False), flush=True)
    print(f"[emergence] wall {timer():.0f} s; wrote {out}", flush=True)
    return jsonable(res)


# ------------------------------------------------------------------------------ several seeds
def aggregate(per_seed: dict) -> dict:
    """``{seed: one-seed results}`` -> per layout at the main size: final NIAH and long-context
    loss over seeds, NIAH >= 0.5 step with censoring, convergence verdicts; fits over seeds."""
    seeds = list(per_seed)
    main = {s: [r for r in per_seed[s]["runs"] if r["main"]] for s in seeds}
    labels = list(dict.fromkeys(r["label"] for rs in main.values() for r in rs))

    def cell(s, lab, key):
        return next((r.get(key) for r in main[s] if r["label"] == lab), None)

    layouts = {}
    for lab in labels:
        have = [s for s in seeds if any(r["label"] == lab for r in main[s])]
        conv = {s: cell(s, lab, "converged") for s in have}
        layouts[lab] = {
            "final_niah_acc": summarize_values({s: cell(s, lab, "final_niah_acc") for s in have}, digits=4),
            "final_long_loss": summarize_values({s: cell(s, lab, "final_long_loss") for s in have}, digits=4),
            "niah50": summarize_learning({s: cell(s, lab, "niah50_step") for s in have},
                                         {s: cell(s, lab, "steps") for s in have}),
            "converged_to_F": (None if all(cell(s, lab, "family") == "F" for s in have)  # F is the reference
                               else reproduced(conv, f"{lab} final NIAH within tol of F's")),
        }
    fams = list(dict.fromkeys(f["family"] for s in seeds for f in per_seed[s]["fits"]))
    fits = {}
    for fam in fams:
        rows = {s: next((f for f in per_seed[s]["fits"] if f["family"] == fam), {}) for s in seeds}
        fits[fam] = {k: summarize_values({s: r.get(k) for s, r in rows.items()}, digits=4)
                     for k in ("alpha", "beta", "rmse_log")}
        fits[fam]["status"] = {s: r.get("status") for s, r in rows.items()}
    return {"seeds": seeds, "layouts": layouts, "fits": fits}


def main_seeds(a, argv, mode: str, out: Path, seeds: list[int], timer) -> dict:
    """Each seed as a one-seed run into ``out/seed_S`` (one after the other; ``--jobs`` inside
    each), then the aggregate (results.json, runs_seeds.csv)."""
    import pandas as pd

    args = strip_options(list(argv) if argv is not None else sys.argv[1:], ["--seeds", "--seed", "--out", "--record"])
    print(f"[emergence] {mode}: seeds {seeds}, one after the other; each into {out}/seed_S", flush=True)
    done = [main([*args, "--seed", str(s), "--out", str(out / f"seed_{s}")]) for s in seeds]
    per_seed = {str(s): {k: r[k] for k in ("runs", "fits", "final_niah_per_layout", "converged_within_tol_of_F",
                                           "niah50_tokens_per_layout", "wall_s")} for s, r in zip(seeds, done)}
    agg = aggregate(per_seed)
    rows = [{"seed": s, "label": r["label"], "final_niah_acc": round(r["final_niah_acc"], 3),
             "niah>=0.5 at step": r["niah50_step"] if r["niah50_step"] is not None else f"not by {r['steps']}",
             "final_long_loss": round(r["final_long_loss"], 4),
             "convergence": r["convergence_status"]}
            for s, d in per_seed.items() for r in d["runs"] if r["main"]]
    rows += [{"seed": "all", "label": lab, "final_niah_acc": format_summary(v["final_niah_acc"]),
              "niah>=0.5 at step": f"{v['niah50']['learned_text']}, KM median {v['niah50']['km_median_text']}",
              "final_long_loss": format_summary(v["final_long_loss"], "{:.4f}"),
              "convergence": (v["converged_to_F"]["verdict"].split(": ", 1)[-1] if v["converged_to_F"]
                              else "(the reference)")} for lab, v in agg["layouts"].items()]
    table = pd.DataFrame(rows)
    table.to_csv(out / "runs_seeds.csv", index=False)
    with pd.option_context("display.width", 250, "display.max_colwidth", 70):
        print(table.to_string(index=False), flush=True)
    res = {"analysis": NAME, "mode": mode,
           "command": "python analyses/emergence.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
           "machine": a.machine or f"{platform.machine()} {platform.system()}, {os.cpu_count()} cpus",
           "seeds": seeds, "seed_scope": "training seed of every run (evaluation sets fixed)",
           "per_seed": per_seed, "aggregate": agg, "seed_outputs": {str(s): f"seed_{s}" for s in seeds},
           "wall_s": round(timer(), 1), "files": ["results.json", "runs_seeds.csv"]}
    write_json(out / "results.json", res)
    if a.record:
        write_json(a.record, res)
    print(f"[emergence] wall {timer():.0f} s; wrote {out}", flush=True)
    return jsonable(res)


if __name__ == "__main__":
    main()
