"""Design: NoPE on the full-attention layers of a small-window SWA hybrid.

Two runs that differ only in the positional encoding of the full-attention (``F``) layers —
RoPE vs NoPE; the SWA layers keep RoPE; same layout, window, seed, data and steps — are
trained (or given), then compared on:

- short-context loss: held-out essay text at the training length (``rh.eval.short_context_loss``);
- NIAH accuracy (single_1, greedy ``string_match_all``) at 1x, 2x and 4x the training length;
- long-context loss by position bucket at 4x the training length;
- training curves (NIAH accuracy at the training length vs step, from ``metrics.jsonl``), and
  the first step where NIAH >= 0.5 / 0.9 (does one encoding need a larger budget?).

How to run::

    python analyses/nope.py --quick                                   # CPU: trains 2 small runs, then evaluates
    python analyses/nope.py --quick --rope runs/r --nope runs/n       # evaluate existing runs only
    python analyses/nope.py --device cuda                             # full: gpu-small (window 64) x {RoPE, NoPE}
    python analyses/nope.py --smoke                                   # seconds (tests)

Writes ``niah.csv``, ``loss.csv``, ``long_loss.csv``, ``training.csv`` (+ ``.parquet``),
``niah.html``, ``training.html``, ``long_loss.html`` (PNG where kaleido works) and
``results.json`` to ``--out`` (default ``analyses/out/nope/``); runs go to ``--out``/runs/.
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
    last_checkpoint,
    parse_common,
    progress_every,
    results_head,
    save_fig,
    save_table,
    script_log,
    write_results,
)

NAME = "nope"
POS = {"rope": {"F": "rope", "S": "rope"}, "nope": {"F": "nope", "S": "rope"}}
# (preset, TrainConfig overrides); quick: the tiny preset (SSSF, d_model 64, window 16) at
# context 160 with a constant learning rate, 2500 steps, so that both runs fit the CPU budget
# (measured: RoPE-F reaches NIAH >= 0.9 at step 1200, NoPE-F only at 2300; at 1500 steps NoPE-F
# was still at 0, so 1500 steps would compare a trained model with an untrained one).
TRAIN = {
    "smoke": ("tiny", dict(context_len=160, batch_size=4, steps=2, eval_every=1, save_every=2)),
    "quick": ("tiny", dict(context_len=160, batch_size=16, steps=2500, min_lr_ratio=1.0, eval_every=100,
                             save_every=500)),
    "full": ("gpu-small", dict()),
}
MODES = {
    "smoke": dict(n=1, depths=[0.5], short_rows=2, long_rows=1, mults=[1, 2]),
    "quick": dict(n=4, depths=[0.1, 0.3, 0.5, 0.7, 0.9], short_rows=32, long_rows=8, mults=[1, 2, 4]),
    "full": dict(n=8, depths=[0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0], short_rows=128, long_rows=32, mults=[1, 2, 4]),
}


log = script_log(NAME)
_PNG = {}  # save_fig's PNG switch: after one kaleido failure, HTML only for this script


def first_step(curve: pd.DataFrame, thr: float):
    hit = curve[curve["niah_acc"] >= thr]
    return None if hit.empty else int(hit["step"].iloc[0])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rope", help="existing run (RoPE on F) instead of training one")
    ap.add_argument("--nope", help="existing run (NoPE on F) instead of training one")
    ap.add_argument("--preset", default=None, help="preset to train [default: tiny (quick), gpu-small (full)]")
    ap.add_argument("--steps", type=int, default=0, help="training steps [default: the mode's]")
    ap.add_argument("--window", type=int, default=0, help="SWA window [default: the preset's]")
    a, mode_name, out = parse_common(ap, argv, NAME)
    mode = MODES[mode_name]
    t0 = time.time()

    # ---- the two runs
    preset, over = TRAIN[mode_name]
    model_cfg, train_cfg = rh.train.presets.load_preset(a.preset or preset)
    train_cfg = train_cfg.replace(device=a.device, seed=a.seed, **over)
    if a.steps:
        train_cfg = train_cfg.replace(steps=a.steps)
    if a.window:
        model_cfg = model_cfg.replace(window=a.window)
    runs, train_s = {}, {}
    for name in ("rope", "nope"):
        given = getattr(a, name)
        if given:
            runs[name] = Path(given)
            continue
        mc = model_cfg.replace(pos=dict(POS[name]))
        t1 = time.time()
        log(f"training {name}: {mc.describe()}, {train_cfg.steps} steps, context {train_cfg.context_len}, "
            f"batch {train_cfg.batch_size}, seed {train_cfg.seed}")
        res = rh.train.loop.train(mc, train_cfg, out / "runs" / name, resume=True, progress=False, log=log,
                                  log_every=progress_every(train_cfg.steps))
        runs[name] = Path(res["out"])
        train_s[name] = round(time.time() - t1, 1)
        log(f"trained {name} in {train_s[name]}s: {res.get('final')}")

    # ---- evaluation
    t1 = time.time()
    niah, losses, long, curves, info = [], [], [], [], {}
    for name, run in runs.items():
        ck = last_checkpoint(run)
        model = rh.load_checkpoint(ck, device=a.device)
        cfg = model.cfg
        if cfg.pos["F"] != POS[name]["F"]:
            log(f"warning: --{name} run {run} has F={cfg.pos['F']}")
        tl = rh.eval.train_len(model) or 256
        lens = [m * tl for m in mode["mults"]]
        lens = [L for L in lens if L + 10 <= cfg.max_seq_len]
        info[name] = {"checkpoint": str(ck), "step": int(model.checkpoint["step"]), "model": cfg.describe(),
                      "train_len": tl, "params": model.num_params()}
        grid = rh.eval.niah_grid(model, lens, mode["depths"], n=mode["n"], seed=a.seed, progress=False)
        grid.insert(0, "pos_F", name)
        niah.append(grid)
        sc = rh.eval.short_context_loss(model, context_len=tl, n=mode["short_rows"], seed=a.seed)
        losses.append({"pos_F": name, "short_context_loss": sc, "context_len": tl})
        lc = rh.eval.long_context_loss(model, context_len=max(lens), n=mode["long_rows"], buckets=8, seed=a.seed)
        lc.insert(0, "pos_F", name)
        long.append(lc)
        m = run / "metrics.jsonl"
        if m.exists():
            c = pd.DataFrame(rh.train.loop.read_metrics(run))
            c.insert(0, "pos_F", name)
            curves.append(c)
        acc = grid.groupby("context_len").apply(lambda g: float((g["accuracy"] * g["n"]).sum() / g["n"].sum()),
                                                include_groups=False)
        log(f"{name}: short-context loss {sc:.4f}; NIAH " + ", ".join(f"{L}: {v:.2f}" for L, v in acc.items()))
    eval_s = round(time.time() - t1, 1)
    niah = pd.concat(niah, ignore_index=True)
    losses = pd.DataFrame(losses)
    long = pd.concat(long, ignore_index=True)
    curves = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    for df, nm in ((niah, "niah"), (losses, "loss"), (long, "long_loss"), (curves, "training")):
        if len(df):
            save_table(df, out, nm, log)

    # ---- figures
    import plotly.express as px
    files = []
    by_len = (niah.assign(w=niah["accuracy"] * niah["n"]).groupby(["pos_F", "context_len"], as_index=False)
              .agg(w=("w", "sum"), n=("n", "sum")))
    by_len["accuracy"] = by_len["w"] / by_len["n"]
    fig = px.line(by_len, x="context_len", y="accuracy", color="pos_F", markers=True, log_x=True,
                  title="NIAH accuracy vs context length (training length = 1x): RoPE vs NoPE on F layers")
    files += save_fig(fig, out, "niah", log, _PNG)
    long["mid"] = (long["start"] + long["end"]) / 2
    fig = px.line(long, x="mid", y="loss", color="pos_F", markers=True,
                  title=f"Held-out loss by position at {int(long['context_len'].max())} tokens")
    files += save_fig(fig, out, "long_loss", log, _PNG)
    if len(curves):
        cm = curves.melt(id_vars=["pos_F", "step"], value_vars=[c for c in ("niah_acc", "lm_loss") if c in curves])
        fig = px.line(cm, x="step", y="value", color="pos_F", facet_row="variable", markers=True,
                      title="Training: NIAH accuracy at the training length and LM loss")
        fig.update_yaxes(matches=None)
        files += save_fig(fig, out, "training", log, _PNG)

    def acc(name, L):
        d = by_len[(by_len["pos_F"] == name) & (by_len["context_len"] == L)]
        return None if d.empty else round(float(d["accuracy"].iloc[0]), 4)

    results = {
        **results_head(NAME, mode_name, a), "runs": {k: str(v) for k, v in runs.items()}, "info": info,
        "train_config": train_cfg.to_dict() if not (a.rope and a.nope) else None,
        "niah_acc": {name: {f"{L // info[name]['train_len']}x ({L})": acc(name, L)
                            for L in sorted(by_len[by_len["pos_F"] == name]["context_len"])} for name in runs},
        "short_context_loss": {r["pos_F"]: round(r["short_context_loss"], 4) for r in losses.to_dict("records")},
        "long_loss_by_bucket": {name: [round(v, 4) for v in g["loss"]] for name, g in long.groupby("pos_F")},
        "long_loss_mean": {name: round(float((g["loss"] * g["n_tokens"]).sum() / g["n_tokens"].sum()), 4)
                           for name, g in long.groupby("pos_F")},
        "first_step_niah": ({name: {"0.5": first_step(g, 0.5), "0.9": first_step(g, 0.9)}
                             for name, g in curves.groupby("pos_F")} if len(curves) else {}),
        "final_train_metrics": ({name: {k: g.iloc[-1][k] for k in ("step", "niah_acc", "lm_loss") if k in g}
                                 for name, g in curves.groupby("pos_F")} if len(curves) else {}),
        "wall_s": {"total": round(time.time() - t0, 1), "train": train_s, "eval": eval_s},
        "files": sorted({"niah.csv", "loss.csv", "long_loss.csv", *(["training.csv"] if len(curves) else []),
                         *files}),
    }
    results = json.loads(json.dumps(results, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    return write_results(out, results, t0, log)


if __name__ == "__main__":
    main()
