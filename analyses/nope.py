"""Design: NoPE on the full-attention layers of a small-window SWA hybrid.

Two runs that differ only in the positional encoding of the full-attention (``F``) layers —
RoPE vs NoPE; the SWA layers keep RoPE; same layout, window, seed, data and steps — are
trained (or given), then compared on:

- short-context loss: held-out essay text at the training length (``rh.eval.short_context_loss``);
- NIAH accuracy (single_1, greedy ``string_match_all``) at 1x, 2x and 4x the training length;
- long-context loss by position bucket at 4x the training length;
- training curves (NIAH accuracy at the training length vs step, from ``metrics.jsonl``), and
  the first step where NIAH >= 0.5 / 0.9 (does one encoding need a larger budget?).

Several seeds (issue 20): ``--seeds 0,1,2`` (the default in ``--quick`` and the full mode;
``--seed S`` runs one seed) trains both arms per seed -- each (seed, arm) run trained and
evaluated as a single-seed run is, with that seed for training data and evaluation prompts --
``--jobs`` of them at once in processes of one torch thread. Reported per seed and aggregated
(``analyses/seeds.py``): NIAH per length and arm (mean, 95% bootstrap interval, n); the step
each arm learned NIAH at 1x (``--learned-rule``: by default the first evaluation with training
NIAH >= ``--learned-at`` whose mean over it and every later evaluation is also >= ``--learned-at``;
``every`` asks for every later evaluation; ``learned.csv`` holds both; a seed that never
does is censored at its budget: k/n learned, Kaplan-Meier median, share of the budget); the
short-context loss per arm and the paired relative difference NoPE vs RoPE with its interval;
verdicts "reproduced on k of n seeds".

How to run::

    python analyses/nope.py --quick                                   # CPU: 2 arms x seeds 0,1,2, then evaluates
    python analyses/nope.py --quick --seed 5                          # one seed
    python analyses/nope.py --quick --rope runs/r --nope runs/n       # evaluate existing runs only
    python analyses/nope.py --quick --rope 'o/runs/rope_seed{seed}' --nope 'o/runs/nope_seed{seed}'  # ... of 3 seeds
    python analyses/nope.py --device cuda                             # full: gpu-small (window 64) x {RoPE, NoPE}
    python analyses/nope.py --smoke                                   # seconds (tests)

Writes ``niah.csv``, ``loss.csv``, ``long_loss.csv``, ``training.csv``, ``learned.csv`` (+
``.parquet``; every table has a ``seed`` column), ``niah.html``, ``training.html``,
``long_loss.html`` (PNG where kaleido works) and ``results.json`` to ``--out`` (default
``analyses/out/nope/``); runs go to ``--out``/runs/``rope_seedS`` and ``nope_seedS``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

import retrieval_heads as rh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyses.common import (  # noqa: E402
    QUICK_RECIPE,
    apply_overrides,
    jsonable,
    last_checkpoint,
    parse_common,
    preset_configs,
    progress_every,
    results_head,
    save_fig,
    save_table,
    script_log,
    write_results,
)
from analyses.seeds import (  # noqa: E402
    default_jobs,
    fill_seed,
    format_summary,
    paired_relative_difference,
    reproduced,
    run_in_processes,
    seeds_from_args,
    summarize_learning,
    summarize_values,
)

NAME = "nope"
ARMS = ("rope", "nope")
POS = {"rope": {"F": "rope", "S": "rope"}, "nope": {"F": "nope", "S": "rope"}}
# The training spec per mode (``common.preset_configs``: preset, model overrides, TrainConfig
# overrides); quick: common.QUICK_RECIPE, the CPU recipe every --quick analysis trains (tiny with 8
# heads of 8, context 144, batch 8, 3600 steps, warmup-stable-decay learning rate), so the NoPE-F
# arm of a seed is the run probing.py / gradient_influence.py --quick train. Measured with 3 seeds
# in analyses/RESULTS.md (NoPE, 2026-12-03), next to the earlier recipes (4 heads, batch 16, 2500
# steps: NoPE-F untrained on 2 of 3 seeds at window 8 and on seed 5 at window 16; 8 heads with a
# constant learning rate for 4000 steps: 18 min).
TRAIN = {
    "smoke": dict(preset="tiny", context_len=160, batch_size=4, steps=2, eval_every=1, save_every=2),
    "quick": QUICK_RECIPE,
    "full": dict(preset="gpu-small"),
}
MODES = {
    "smoke": dict(n=1, depths=[0.5], short_rows=2, long_rows=1, mults=[1, 2]),
    "quick": dict(n=4, depths=[0.1, 0.3, 0.5, 0.7, 0.9], short_rows=32, long_rows=8, mults=[1, 2, 4]),
    "full": dict(n=8, depths=[0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0], short_rows=128, long_rows=32, mults=[1, 2, 4]),
}
# the claim "at ~no short-context cost": NoPE-F's short-context loss at most this much above RoPE-F's
SHORT_COST_TOL = 0.01


log = script_log(NAME)
_PNG = {}  # save_fig's PNG switch: after one kaleido failure, HTML only for this script


def first_step(curve: pd.DataFrame, thr: float):
    hit = curve[curve["niah_acc"] >= thr]
    return None if hit.empty else int(hit["step"].iloc[0])


LEARNED_RULES = {
    "mean": "training NIAH >= the threshold at this evaluation and on average over it and every later one",
    "every": "training NIAH >= the threshold at this and every later evaluation",
}


def learned_step(curve: pd.DataFrame, thr: float, rule: str = "mean"):
    """The first evaluated step from which the arm has learned NIAH at 1x; None when it never
    does (censored). ``rule="every"``: training NIAH stays >= ``thr`` at every later evaluation
    (one evaluation below ``thr``, however late, moves the step past it); ``rule="mean"``: NIAH
    >= ``thr`` at that evaluation and its mean over that and every later evaluation >= ``thr``
    (isolated dips after learning are tolerated, a relapse that lasts is not).

        >>> c = pd.DataFrame({"step": [0, 100, 200, 300, 400], "niah_acc": [0.0, 0.95, 0.8, 1.0, 1.0]})
        >>> learned_step(c, 0.9, "every"), learned_step(c, 0.9, "mean")
        (300, 100)
    """
    if rule not in LEARNED_RULES:
        raise ValueError(f"learned rule: {rule!r}; use one of {', '.join(LEARNED_RULES)}")
    if curve is None or not len(curve) or "niah_acc" not in curve:
        return None
    c = curve.dropna(subset=["niah_acc"]).sort_values("step")
    acc = c["niah_acc"].to_numpy(dtype=float)
    steps = c["step"].to_numpy()
    for i in range(len(acc)):
        rest = acc[i:]
        if acc[i] >= thr and (rest.min() >= thr if rule == "every" else rest.mean() >= thr):
            return int(steps[i])
    return None


def base_configs(a, mode_name: str):
    """(ModelConfig, TrainConfig) both arms share before ``pos`` and the seed are set: the mode's
    spec (``TRAIN``, with ``--preset`` in place of its preset), then ``--steps``, ``--window``,
    ``--set`` from the parsed arguments ``a``."""
    spec = {**TRAIN[mode_name], **({"preset": a.preset} if a.preset else {})}
    model_cfg, train_cfg = preset_configs(spec, a.device)
    if a.steps:
        train_cfg = train_cfg.replace(steps=a.steps)
    if a.window:
        model_cfg = model_cfg.replace(window=a.window)
    try:
        return apply_overrides(model_cfg, train_cfg, a.set)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def run_dir(out: Path, arm: str, seed: int) -> Path:
    """``OUT/runs/ARM_seedS`` (so ``--run 'OUT/runs/nope_seed{seed}'`` names them all in the other
    scripts); an output folder from before 2026-12-03 holds seed 0 in ``OUT/runs/ARM``, which is
    reused when it holds a run."""
    legacy = out / "runs" / arm
    if seed == 0 and (legacy / "run.json").exists():
        return legacy
    return out / "runs" / f"{arm}_seed{seed}"


def arm_job(job: dict) -> dict:
    """Train (or take) one arm's run for one seed and evaluate it: the work of one (seed, arm),
    as the single-seed script did it. Picklable in and out (plain dicts and records)."""
    seed, name, mode, device = job["seed"], job["arm"], job["mode"], job["device"]
    tag = f"seed {seed} {name}"
    train_s = None
    if job["given"]:
        run = Path(job["given"])
    else:
        mc = rh.ModelConfig.from_dict(job["model"])
        tc = rh.TrainConfig.from_dict(job["train"])
        t1 = time.time()
        log(f"{tag}: training {mc.describe()}, {tc.steps} steps, context {tc.context_len}, batch {tc.batch_size}, "
            f"seed {tc.seed}")
        res = rh.train.loop.train(mc, tc, job["run_dir"], resume=True, progress=False,
                                  log=lambda m: log(f"{tag}: {m}"), log_every=progress_every(tc.steps))
        run = Path(res["out"])
        train_s = round(time.time() - t1, 1)
        log(f"{tag}: trained in {train_s}s: {res.get('final')}")
    t1 = time.time()
    ck = last_checkpoint(run)
    model = rh.load_checkpoint(ck, device=device)
    cfg = model.cfg
    if cfg.pos["F"] != POS[name]["F"]:
        log(f"warning: --{name} run {run} has F={cfg.pos['F']}")
    tl = rh.eval.train_len(model) or 256
    lens = [m * tl for m in mode["mults"]]
    lens = [L for L in lens if L + 10 <= cfg.max_seq_len]
    info = {"checkpoint": str(ck), "step": int(model.checkpoint["step"]), "model": cfg.describe(),
            "train_len": tl, "params": model.num_params()}
    grid = rh.eval.niah_grid(model, lens, mode["depths"], n=mode["n"], seed=seed, progress=False)
    grid.insert(0, "pos_F", name)
    grid.insert(0, "seed", seed)
    sc = rh.eval.short_context_loss(model, context_len=tl, n=mode["short_rows"], seed=seed)
    lc = rh.eval.long_context_loss(model, context_len=max(lens), n=mode["long_rows"], buckets=8, seed=seed)
    lc.insert(0, "pos_F", name)
    lc.insert(0, "seed", seed)
    curve = pd.DataFrame(rh.train.loop.read_metrics(run)) if (run / "metrics.jsonl").exists() else pd.DataFrame()
    if len(curve):
        curve.insert(0, "pos_F", name)
        curve.insert(0, "seed", seed)
    acc = grid.groupby("context_len").apply(lambda g: float((g["accuracy"] * g["n"]).sum() / g["n"].sum()),
                                            include_groups=False)
    log(f"{tag}: short-context loss {sc:.4f}; NIAH " + ", ".join(f"{L}: {v:.2f}" for L, v in acc.items()))
    return {"seed": seed, "arm": name, "run": str(run), "info": info, "niah": grid.to_dict("records"),
            "short": {"seed": seed, "pos_F": name, "short_context_loss": sc, "context_len": tl},
            "long": lc.to_dict("records"), "curve": curve.to_dict("records"), "train_s": train_s,
            "eval_s": round(time.time() - t1, 1)}


def _r(v, nd=4):
    return None if v is None else round(float(v), nd)


def aggregate(by_len: pd.DataFrame, losses: pd.DataFrame, long: pd.DataFrame, learned: pd.DataFrame,
              info: dict, seeds: list[int]) -> dict:
    """The multi-seed summary of the tables (each with a ``seed`` column): per arm and length
    NIAH, learning step at 1x (censored), short-context loss and the paired relative
    difference NoPE vs RoPE, long-context loss, and the verdicts."""
    arms = [a for a in ARMS if a in set(by_len["pos_F"])]
    niah = {}
    for arm in arms:
        d = by_len[by_len["pos_F"] == arm]
        niah[arm] = {}
        for L, g in d.groupby("context_len"):
            tl = info[arm][str(int(g["seed"].iloc[0]))]["train_len"]
            niah[arm][f"{int(L) // tl}x ({int(L)})"] = summarize_values(dict(zip(g["seed"], g["accuracy"])),
                                                                       digits=4)
    learn = {arm: summarize_learning(dict(zip(g["seed"], g["learned_step"].astype(object).where(
        g["learned_step"].notna(), None))), dict(zip(g["seed"], g["budget"])))
        for arm, g in learned.groupby("pos_F")}
    short = {arm: dict(zip(g["seed"], g["short_context_loss"])) for arm, g in losses.groupby("pos_F")}
    agg = {
        "seeds": seeds, "niah_acc": niah, "learned_niah_1x": learn,
        "short_context_loss": {arm: summarize_values(v, digits=4) for arm, v in short.items()},
        "long_loss_mean": {arm: summarize_values(dict(zip(g["seed"], g["loss_mean"])), digits=4)
                           for arm, g in long.groupby("pos_F")},
    }
    if {"rope", "nope"} <= set(short):
        agg["short_loss_relative_difference"] = paired_relative_difference(short["rope"], short["nope"])
        agg["short_loss_relative_difference"]["definition"] = "(NoPE-F - RoPE-F) / RoPE-F per seed"
        steps = {arm: dict(zip(g["seed"], g["learned_step"])) for arm, g in learned.groupby("pos_F")}
        delay = {s: (steps["nope"][s] - steps["rope"][s]
                     if pd.notna(steps["nope"].get(s)) and pd.notna(steps["rope"].get(s)) else None)
                 for s in seeds}
        agg["learning_delay_nope_minus_rope"] = {
            **summarize_values(delay), "note": "steps; only seeds where both arms learned (others: see "
                                               "learned_niah_1x, censored)"}
        # verdicts per seed
        far = {}
        for s in seeds:
            r = by_len[(by_len["seed"] == s) & (by_len["pos_F"] == "rope")]
            n = by_len[(by_len["seed"] == s) & (by_len["pos_F"] == "nope")]
            L = max(set(r["context_len"]) & set(n["context_len"]), default=None)
            far[s] = (None if L is None or L <= min(r["context_len"]) else
                      bool(float(n.loc[n["context_len"] == L, "accuracy"].iloc[0])
                           > float(r.loc[r["context_len"] == L, "accuracy"].iloc[0])))
        rel = agg["short_loss_relative_difference"]["per_seed"]
        cheap = {s: (None if rel.get(str(s)) is None else rel[str(s)] <= SHORT_COST_TOL) for s in seeds}
        both = {s: all(learn[a]["per_seed"][str(s)]["learned"] and
                       learn[a]["per_seed"][str(s)]["share_of_budget"] <= learn[a]["share_limit"] + 1e-12
                       for a in ("rope", "nope")) for s in seeds}
        claim = {s: (None if far[s] is None or cheap[s] is None else far[s] and cheap[s]) for s in seeds}
        agg["verdicts"] = {
            "both_arms_learn_1x_within_70pct": reproduced(both, "both arms learn NIAH at 1x within 70% of the budget"),
            "nope_better_at_longest": reproduced(far, "NoPE-F NIAH above RoPE-F's at the longest length"),
            "short_cost_small": reproduced(cheap, f"NoPE-F short-context loss at most {SHORT_COST_TOL:.0%} above "
                                                  "RoPE-F's"),
            "claim": reproduced(claim, "NoPE on F improves long context at ~no short-context cost"),
        }
    return agg


def print_table(by_len: pd.DataFrame, losses: pd.DataFrame, learned: pd.DataFrame, agg: dict, info: dict) -> str:
    """The per-seed rows, then one aggregate row per arm and the verdict lines."""
    rows = []
    lens = sorted(set(by_len["context_len"]))
    groups = sorted(by_len.groupby(["seed", "pos_F"]), key=lambda kv: (kv[0][0], ARMS.index(kv[0][1])))
    for (s, arm), g in groups:
        row = {"seed": str(s), "arm": arm}
        for L in lens:
            v = g.loc[g["context_len"] == L, "accuracy"]
            row[f"NIAH {L}"] = "-" if v.empty else f"{float(v.iloc[0]):.2f}"
        lr = learned[(learned["seed"] == s) & (learned["pos_F"] == arm)]
        row["learned at 1x"] = agg["learned_niah_1x"][arm]["per_seed"][str(s)]["text"] if len(lr) else "-"
        other = next((c for c in learned.columns if c.startswith("learned_step_")), None)
        if other and len(lr):
            v = lr[other].iloc[0]
            row[f"{other.split('_')[-1]} rule"] = "never" if pd.isna(v) else f"step {int(v)}"
        sl = losses[(losses["seed"] == s) & (losses["pos_F"] == arm)]["short_context_loss"]
        row["short loss"] = f"{float(sl.iloc[0]):.4f}" if len(sl) else "-"
        rows.append(row)
    for arm in [a for a in ARMS if a in agg["niah_acc"]]:
        row = {"seed": "all", "arm": arm}
        for L, key in zip(lens, agg["niah_acc"][arm]):
            row[f"NIAH {L}"] = format_summary(agg["niah_acc"][arm][key], "{:.2f}")
        lr = agg["learned_niah_1x"].get(arm)
        row["learned at 1x"] = (f"{lr['learned_text']}, KM median {lr['km_median_text']}" if lr else "-")
        row["short loss"] = format_summary(agg["short_context_loss"][arm], "{:.4f}")
        rows.append(row)
    text = pd.DataFrame(rows).fillna("-").to_string(index=False)
    rd = agg.get("short_loss_relative_difference")
    if rd and rd.get("mean") is not None:
        text += (f"\nshort-context loss, NoPE vs RoPE (paired): {rd['mean']:+.2%} "
                 f"[{rd['ci_low']:+.2%}, {rd['ci_high']:+.2%}] (n={rd['n']})")
    for v in agg.get("verdicts", {}).values():
        text += f"\n{v['verdict']}"
    return text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rope", help="existing run (RoPE on F) instead of training one ({seed} = each seed's, "
                                   "e.g. out/runs/rope_seed{seed})")
    ap.add_argument("--nope", help="existing run (NoPE on F) instead of training one ({seed} = each seed's)")
    ap.add_argument("--preset", default=None, help="preset to train [default: tiny (quick), gpu-small (full)]")
    ap.add_argument("--steps", type=int, default=0, help="training steps [default: the mode's]")
    ap.add_argument("--window", type=int, default=0, help="SWA window [default: the preset's]")
    ap.add_argument("--set", default=None, help="config overrides for both arms, e.g. "
                                                "model.n_heads=8,model.n_kv_heads=8,train.batch_size=8")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds [default: 0,1,2 in --quick and full, "
                                                  "--seed in --smoke; --seed S alone = one seed]")
    ap.add_argument("--jobs", type=int, default=0, help="(seed, arm) runs at once, one thread each "
                                                        "[0 = one per core in --quick, else 1]")
    ap.add_argument("--learned-at", type=float, default=0.9,
                    help="the training-NIAH threshold of 'learned at 1x' [0.9]")
    ap.add_argument("--learned-rule", choices=sorted(LEARNED_RULES), default="mean",
                    help="mean: NIAH >= --learned-at at an evaluation and on average from then on (isolated "
                         "dips tolerated); every: >= --learned-at at every later evaluation [mean]")
    a, mode_name, out = parse_common(ap, argv, NAME)
    mode = MODES[mode_name]
    seeds = seeds_from_args(a, argv, mode_name)
    t0 = time.time()

    # ---- the (seed, arm) jobs
    model_cfg, train_cfg = base_configs(a, mode_name)
    train_cfg = train_cfg.replace(seed=seeds[0])
    jobs = [{"script": NAME, "fn": "arm_job", "pass_job": True, "seed": s, "arm": name, "mode": mode,
             "device": a.device, "given": fill_seed(getattr(a, name), s) if getattr(a, name) else None,
             "model": model_cfg.replace(pos=dict(POS[name])).to_dict(), "train": train_cfg.replace(seed=s).to_dict(),
             "run_dir": str(run_dir(out, name, s))} for s in seeds for name in ARMS]
    workers = default_jobs(a.jobs, len(jobs), mode_name)
    log(f"{mode_name}: seeds {seeds} x arms {list(ARMS)} = {len(jobs)} runs, {workers} at once")
    done = run_in_processes(jobs, workers, f"{NAME} worker") if workers > 1 else [arm_job(j) for j in jobs]

    # ---- tables (every one with a seed column)
    runs = {str(s): {r["arm"]: r["run"] for r in done if r["seed"] == s} for s in seeds}
    info = {arm: {str(r["seed"]): r["info"] for r in done if r["arm"] == arm} for arm in ARMS}
    niah = pd.DataFrame([x for r in done for x in r["niah"]])
    losses = pd.DataFrame([r["short"] for r in done])
    long = pd.DataFrame([x for r in done for x in r["long"]])
    curves = pd.DataFrame([x for r in done for x in r["curve"]])
    learned = []
    for r in done:
        c = curves[(curves["seed"] == r["seed"]) & (curves["pos_F"] == r["arm"])] if len(curves) else pd.DataFrame()
        budget = int(r["info"]["step"]) if not len(c) else int(max(c["step"].max(), r["info"]["step"]))
        step = learned_step(c, a.learned_at, a.learned_rule)
        other = "every" if a.learned_rule == "mean" else "mean"
        learned.append({"seed": r["seed"], "pos_F": r["arm"], "threshold": a.learned_at, "rule": a.learned_rule,
                        "learned": step is not None, "learned_step": step, "budget": budget,
                        f"learned_step_{other}": learned_step(c, a.learned_at, other),
                        "share_of_budget": None if step is None else step / budget,
                        "first_step_0.5": first_step(c, 0.5) if len(c) else None,
                        "first_step_0.9": first_step(c, 0.9) if len(c) else None})
    learned = pd.DataFrame(learned)
    for df, nm in ((niah, "niah"), (losses, "loss"), (long, "long_loss"), (curves, "training"),
                   (learned, "learned")):
        if len(df):
            save_table(df, out, nm, log)

    # ---- figures
    import plotly.express as px
    files = []
    by_len = (niah.assign(w=niah["accuracy"] * niah["n"]).groupby(["seed", "pos_F", "context_len"], as_index=False)
              .agg(w=("w", "sum"), n=("n", "sum")))
    by_len["accuracy"] = by_len["w"] / by_len["n"]
    fig = px.line(by_len.assign(seed=by_len["seed"].astype(str)), x="context_len", y="accuracy", color="pos_F",
                  line_dash="seed", markers=True, log_x=True,
                  title="NIAH accuracy vs context length (training length = 1x): RoPE vs NoPE on F layers, per seed")
    files += save_fig(fig, out, "niah", log, _PNG)
    long["mid"] = (long["start"] + long["end"]) / 2
    fig = px.line(long.assign(seed=long["seed"].astype(str)), x="mid", y="loss", color="pos_F", line_dash="seed",
                  markers=True, title=f"Held-out loss by position at {int(long['context_len'].max())} tokens, per seed")
    files += save_fig(fig, out, "long_loss", log, _PNG)
    if len(curves):
        cm = curves.assign(seed=curves["seed"].astype(str)).melt(
            id_vars=["seed", "pos_F", "step"], value_vars=[c for c in ("niah_acc", "lm_loss") if c in curves])
        fig = px.line(cm, x="step", y="value", color="pos_F", line_dash="seed", facet_row="variable", markers=True,
                      title="Training: NIAH accuracy at the training length and LM loss, per seed")
        fig.update_yaxes(matches=None)
        files += save_fig(fig, out, "training", log, _PNG)

    long_mean = pd.DataFrame([{"seed": s, "pos_F": arm,
                               "loss_mean": float((g["loss"] * g["n_tokens"]).sum() / g["n_tokens"].sum())}
                              for (s, arm), g in long.groupby(["seed", "pos_F"])])
    agg = aggregate(by_len, losses, long_mean, learned, info, seeds)

    def per_seed(s: int) -> dict:
        b = by_len[by_len["seed"] == s]
        c = curves[curves["seed"] == s] if len(curves) else curves
        lg = long[long["seed"] == s]
        return {
            "runs": runs[str(s)], "info": {arm: info[arm][str(s)] for arm in ARMS},
            "niah_acc": {arm: {f"{int(L) // info[arm][str(s)]['train_len']}x ({int(L)})": _r(v)
                               for L, v in zip(g["context_len"], g["accuracy"])} for arm, g in b.groupby("pos_F")},
            "short_context_loss": {r["pos_F"]: round(r["short_context_loss"], 4)
                                   for r in losses[losses["seed"] == s].to_dict("records")},
            "long_loss_by_bucket": {arm: [round(v, 4) for v in g["loss"]] for arm, g in lg.groupby("pos_F")},
            "long_loss_mean": {r["pos_F"]: round(r["loss_mean"], 4)
                               for r in long_mean[long_mean["seed"] == s].to_dict("records")},
            "first_step_niah": ({arm: {"0.5": first_step(g, 0.5), "0.9": first_step(g, 0.9)}
                                 for arm, g in c.groupby("pos_F")} if len(c) else {}),
            "learned_niah_1x": {arm: agg["learned_niah_1x"][arm]["per_seed"][str(s)]
                                for arm in agg["learned_niah_1x"]},
            "final_train_metrics": ({arm: {k: g.iloc[-1][k] for k in ("step", "niah_acc", "lm_loss") if k in g}
                                     for arm, g in c.groupby("pos_F")} if len(c) else {}),
        }

    given = [x for x in ARMS if getattr(a, x)]
    results = {
        **results_head(NAME, mode_name, a), "seeds": seeds,
        "seed_scope": ("training data and evaluation prompts" if not given else
                       "evaluation prompts only (given runs)" if len(given) == 2 else
                       f"evaluation prompts only for the given {given[0]} run"),
        "train_config": train_cfg.to_dict() if len(given) < 2 else None,
        "learned_at": a.learned_at,
        "learned_rule": {"name": a.learned_rule, "definition": LEARNED_RULES[a.learned_rule]},
    }
    if len(seeds) == 1:  # the single-seed keys, as before
        results.update(per_seed(seeds[0]))
    results.update({
        "per_seed": {str(s): per_seed(s) for s in seeds},
        "aggregate": agg,
        "wall_s": {"total": round(time.time() - t0, 1),
                   "train": {f"{r['arm']} seed {r['seed']}": r["train_s"] for r in done if r["train_s"] is not None},
                   "eval": {f"{r['arm']} seed {r['seed']}": r["eval_s"] for r in done},
                   "jobs_at_once": workers},
        "files": sorted({"niah.csv", "loss.csv", "long_loss.csv", "learned.csv",
                         *(["training.csv"] if len(curves) else []), *files}),
    })
    results = jsonable(json.loads(json.dumps(results, default=lambda o: o.item() if hasattr(o, "item") else str(o))))
    with pd.option_context("display.width", 250, "display.max_colwidth", 60):
        log("per seed and aggregate (mean [95% bootstrap interval] (n)):\n"
            + print_table(by_len, losses, learned, agg, info))
    return write_results(out, results, t0, log)


if __name__ == "__main__":
    main()
