"""Gradient influence: how strongly does the output at the end of a sequence depend on each
input position, by distance from the end?

For held-out text rows (and, separately, needle prompts) of ``L`` tokens, the objective is
the study's: the mean over the last 20 positions of the logits summed over the vocabulary;
also the mean next-token NLL over the same positions (``--objective`` both by default). Its
gradient with respect to the input embeddings (``hook_embed``, [batch, pos, d_model]) gives
one L2 norm per input position; the table holds that norm by distance ``d = L - 1 - i`` from
the last position, averaged over samples, per run. Summary per run: the share of gradient
norm beyond the SWA window (distance >= window + 20, i.e. out of reach of every sliding-window
layer at every scored position) and the distance that holds 50% / 90% of the total.

Give several runs (``--runs a b c``) to compare layouts or windows; a run folder stands for
its last checkpoint, ``RUN@STEP`` for a given step (e.g. before and after retrieval heads
form: ``/work/tiny_run@1000 /work/tiny_run@2000``).

How to run::

    python analyses/gradient_influence.py --quick --runs /work/tiny_run@0 /work/tiny_run@1000 /work/tiny_run
    python analyses/gradient_influence.py --device cuda --runs runs/w16 runs/w64 runs/w256
    python analyses/gradient_influence.py --smoke                      # seconds (tests): micro-trained model
    python analyses/gradient_influence.py --quick --seeds 0,1,2        # three trained models (the --quick default)

Several seeds (issue 20): ``--seeds`` (default 0,1,2 in ``--quick`` and full; ``--seed S`` = one
seed) runs the one-seed analysis per seed into ``--out``/seed_S/ (training with that seed when no
``--runs`` are given, else only the text rows and needle prompts change), ``--jobs`` at once;
``--out``/results.json holds ``per_seed`` and ``aggregate``: per run (by its position in
``--runs``), source and objective, the beyond-window share, d50 and d90 over seeds (mean, 95%
bootstrap interval, n); ``summary_seeds.csv`` has one row per seed and the ``all`` rows.

Writes ``influence.csv`` (+ ``.parquet``: run, source, objective, distance, grad_norm,
grad_norm_rel), ``summary.csv``, ``influence.html`` (PNG where kaleido works) and
``results.json`` to ``--out`` (default ``analyses/out/gradient_influence/``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

import retrieval_heads as rh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyses.common import (DEFAULT_TRAIN, last_checkpoint, parse_common, results_head, save_fig,  # noqa: E402
                             save_table, script_log, train_preset, write_json, write_results)
from analyses.seeds import SEED_FIELD, fill_seed, format_summary, run_per_seed, seeds_from_args, summarize_values  # noqa: E402

NAME = "gradient_influence"
LAST = 20  # positions whose output is differentiated
MODES = {"smoke": dict(n=2, batch=2), "quick": dict(n=64, batch=8), "full": dict(n=256, batch=16)}


log = script_log(NAME)


def resolve(spec: str) -> Path:
    """``RUN``, ``RUN@STEP`` or a checkpoint folder -> a checkpoint folder."""
    path, _, step = spec.partition("@")
    p = Path(path)
    if step:
        return rh.storage.step_dir(p, int(step))
    return last_checkpoint(p, f"--runs {spec}")


# ----------------------------------------------------------------------------- measurement
def influence(model, tokens: torch.Tensor, objective: str, batch: int) -> torch.Tensor:
    """Mean over rows of ||d objective / d hook_embed[i]||_2 for every input position i: (T,)."""
    was = model.training
    model.eval()
    total = torch.zeros(tokens.shape[1], dtype=torch.float64)
    try:
        for i in range(0, tokens.shape[0], batch):
            x = tokens[i:i + batch].to(model.device)
            store = {}

            def keep(e, hook, store=store):
                e = e.detach().requires_grad_(True)  # a leaf, so .grad holds d obj / d embed
                store["e"] = e
                return e

            with torch.enable_grad():
                logits = model.run_with_hooks(x, fwd_hooks=[("hook_embed", keep)]).float()  # (b, T, V)
                if objective == "logit_sum":
                    obj = logits[:, -LAST:].sum(-1).mean(-1)  # (b,) mean over positions of the summed logits
                else:  # mean next-token NLL over the last LAST predictions (targets inside the row)
                    lg = logits[:, -LAST - 1:-1]
                    obj = F.cross_entropy(lg.transpose(1, 2), x[:, -LAST:], reduction="none").mean(-1)
                g, = torch.autograd.grad(obj.sum(), store["e"])  # rows are independent: one backward
            total += g.norm(dim=-1).double().sum(0).cpu()
    finally:
        model.train(was)
    return (total / tokens.shape[0]).float()


def summarize(df: pd.DataFrame, window: int) -> dict:
    g = df.sort_values("distance")
    v = g["grad_norm"].to_numpy()
    tot = v.sum()
    cum = v.cumsum() / tot if tot > 0 else v * 0
    d = g["distance"].to_numpy()
    far = d >= window + LAST
    edges = [0, LAST]
    while edges[-1] <= d.max():
        edges.append(edges[-1] * 2)
    bins = {f"[{a},{b})": round(float(v[(d >= a) & (d < b)].sum() / tot), 4) if tot > 0 else None
            for a, b in zip(edges[:-1], edges[1:])}
    return {"beyond_window_share": float(v[far].sum() / tot) if tot > 0 else float("nan"),
            "d50": int(d[(cum >= 0.5).argmax()]), "d90": int(d[(cum >= 0.9).argmax()]),
            "last_quarter_share": float(v[d >= 0.75 * d.max()].sum() / tot) if tot > 0 else float("nan"),
            "share_by_distance": bins}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="*", default=[], help="runs / checkpoints (RUN, RUN@STEP; {seed} = each seed's, "
                                                           "e.g. runs/nope_seed{seed}@2000); default: train one")
    ap.add_argument("--context-len", type=int, default=0, help="row length [default: each run's training length]")
    ap.add_argument("--objective", default="both", choices=["logit_sum", "nll", "both"])
    ap.add_argument("--sources", default="text,needle", help="text (held-out essay rows) and/or needle prompts")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds [default: 0,1,2 in --quick and full, "
                                                  "--seed in --smoke; --seed S alone = one seed]")
    ap.add_argument("--jobs", type=int, default=0, help="seeds run at once, one thread each "
                                                        "[0 = one per core in --quick, else 1]")
    a, mode_name, out = parse_common(ap, argv, NAME)
    mode = MODES[mode_name]
    t0 = time.time()
    seeds = seeds_from_args(a, argv, mode_name)
    if len(seeds) > 1:
        return main_seeds(a, argv, mode_name, out, seeds, t0)
    a.seed = seeds[0]
    specs = [fill_seed(r, a.seed) for r in a.runs]
    if not specs:
        specs = [str(train_preset({**DEFAULT_TRAIN[mode_name], "seed": a.seed}, out / "run", a.device, log))]
    train_s = time.time() - t0
    objectives = ["logit_sum", "nll"] if a.objective == "both" else [a.objective]
    sources = [s.strip() for s in a.sources.split(",") if s.strip()]
    frames, summ = [], []
    for spec in specs:
        ck = resolve(spec)
        model = rh.load_checkpoint(ck, device=a.device)
        cfg = model.cfg
        L = a.context_len or rh.eval.train_len(model) or 256
        run_name = ck.parent.name if ck.name.startswith("step_") else ck.name
        label = f"{run_name}: {cfg.layout} w={cfg.window} F={cfg.pos['F']} @{model.checkpoint['step']}"
        for src in sources:
            if src == "text":
                toks = rh.eval.text_rows(L, mode["n"], seed=a.seed)
            elif src == "needle":
                toks = rh.tasks.niah_batch(n=mode["n"], context_len=L, seed=a.seed + 31).tokens
            else:
                raise SystemExit(f"--sources: unknown {src!r}; use text, needle")
            for obj in objectives:
                t1 = time.time()
                gn = influence(model, toks, obj, mode["batch"])  # (L,)
                d = pd.DataFrame({"distance": torch.arange(L - 1, -1, -1).tolist(), "grad_norm": gn.tolist()})
                d = d.sort_values("distance").reset_index(drop=True)
                d["grad_norm_rel"] = d["grad_norm"] / d["grad_norm"].sum()
                d.insert(0, "objective", obj)
                d.insert(0, "source", src)
                d.insert(0, "run", label)
                d.insert(1, "checkpoint", str(ck))
                d["layout"], d["window"], d["pos_F"] = cfg.layout, cfg.window, cfg.pos["F"]
                d["step"], d["context_len"] = int(model.checkpoint["step"]), L
                frames.append(d)
                s = {"run": label, "checkpoint": str(ck), "layout": cfg.layout, "window": cfg.window,
                     "pos_F": cfg.pos["F"], "step": int(model.checkpoint["step"]), "source": src, "objective": obj,
                     "context_len": L, "n": mode["n"], **summarize(d, cfg.window),
                     "seconds": round(time.time() - t1, 1)}
                summ.append(s)
                log(f"{label} {src} {obj}: beyond-window share {s['beyond_window_share']:.3f}, "
                    f"d50 {s['d50']}, d90 {s['d90']} ({s['seconds']}s)")
    df = pd.concat(frames, ignore_index=True)
    sm = pd.DataFrame([{k: v for k, v in s.items() if k != "share_by_distance"} for s in summ])
    save_table(df, out, "influence", log)
    save_table(sm, out, "summary", log)

    import plotly.express as px
    fig = px.line(df, x="distance", y="grad_norm", color="run", facet_row="objective", facet_col="source",
                  log_y=True, title="Gradient influence of the input embeddings by distance from the end "
                                    f"(last {LAST} outputs)")
    fig.update_yaxes(matches=None)
    for w in sorted(df["window"].unique()):
        fig.add_vline(x=int(w) + LAST, line_dash="dot", annotation_text=f"w+{LAST}={int(w) + LAST}")
    files = save_fig(fig, out, "influence", log)

    results = {
        **results_head(NAME, mode_name, a), "last_positions": LAST, "objectives": objectives,
        "sources": sources, "summary": summ,
        "wall_s": {"total": round(time.time() - t0, 1), "train": round(train_s, 1)},
        "files": sorted({"influence.csv", "summary.csv", *files}),
    }
    return write_results(out, results, t0, log)


# ----------------------------------------------------------------------------- several seeds
STATS = ("beyond_window_share", "d50", "d90")


def aggregate(per_seed: dict) -> list[dict]:
    """``{seed: one-seed summary rows}`` -> one row per (run index, source, objective) with each
    of ``STATS`` over seeds (``summarize_values``). Runs are matched by their position in the
    seed's list (the same ``--runs``, or the one model each seed trained)."""
    cells: dict = {}
    for s, rows in per_seed.items():
        n_sources_obj = {}
        for r in rows:
            key = (r["source"], r["objective"])
            i = n_sources_obj.get(key, 0)
            n_sources_obj[key] = i + 1
            cells.setdefault((i, *key), {})[s] = r
    out = []
    for (i, src, obj), by_seed in sorted(cells.items(), key=lambda kv: kv[0]):
        first = next(iter(by_seed.values()))
        out.append({"run_index": i, "run": first["run"], "step": first["step"], "source": src, "objective": obj,
                    **{st: summarize_values({s: by_seed.get(s, {}).get(st) for s in per_seed}, digits=4)
                       for st in STATS}})
    return out


def main_seeds(a, argv, mode_name: str, out: Path, seeds: list[int], t0: float) -> dict:
    """Each seed as a one-seed run into ``out/seed_S``, then the aggregate (results.json, summary_seeds.csv)."""
    done, workers = run_per_seed(NAME, argv, seeds, out, a.jobs, mode_name, main, log)
    per_seed = {str(s): [{k: v for k, v in r.items() if k != "share_by_distance"} for r in res["summary"]]
                for s, res in zip(seeds, done)}
    agg = aggregate(per_seed)
    for r in agg:  # a run named per seed ({seed} in --runs): label the over-seeds row by its template
        template = a.runs[r["run_index"]] if r["run_index"] < len(a.runs) else ""
        if SEED_FIELD in template:
            r["run"] = f"{Path(template.rsplit('@', 1)[0]).name}: {r['run'].split(': ', 1)[-1]}"
    rows = [{"seed": s, **{k: r[k] for k in ("run", "source", "objective", *STATS)}}
            for s, rs in per_seed.items() for r in rs]
    rows += [{"seed": "all", "run": r["run"], "source": r["source"], "objective": r["objective"],
              **{st: format_summary(r[st], "{:.3f}" if st == STATS[0] else "{:.1f}") for st in STATS}} for r in agg]
    table = pd.DataFrame(rows)
    table.to_csv(out / "summary_seeds.csv", index=False)
    with pd.option_context("display.width", 250, "display.max_colwidth", 60):
        log("per seed and over seeds (mean [95% bootstrap interval] (n)):\n" + table.to_string(index=False))
    results = {**results_head(NAME, mode_name, a), "seeds": seeds,
               "seed_scope": "text rows and needle prompts only (given --runs)" if a.runs
               else "training data, text rows and needle prompts",
               "per_seed": per_seed, "aggregate": agg, "seed_outputs": {str(s): f"seed_{s}" for s in seeds},
               "wall_s": {"total": round(time.time() - t0, 1), "jobs_at_once": workers,
                          "per_seed": {str(s): r["wall_s"]["total"] for s, r in zip(seeds, done)}},
               "files": ["results.json", "summary_seeds.csv"]}
    write_json(out / "results.json", results)
    log(f"wrote {out} in {time.time() - t0:.0f}s")
    return json.loads((out / "results.json").read_text())


if __name__ == "__main__":
    main()
