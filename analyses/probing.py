"""Probing: at which layer does the last-token residual know which needle value is present?

Needle prompts (RULER single_1 format) carry one of 8 fixed 7-digit values; a multinomial
logistic-regression probe per layer reads ``blocks.{l}.hook_resid_post`` (and ``hook_embed``
as a chance-level control) at the query position (the last prompt token) and predicts which
of the 8 values it is. Two value sets:

- ``hard``: the 8 values share their first 6 digits and differ only in the last digit, so the
  query position (whose next token is the shared first digit) must carry the *whole* value
  to decode it;
- ``easy``: 8 values that differ in every digit (the first digit alone identifies them).

Stratified train/test split; accuracy per (checkpoint, layer, value set); chance is 1/8.
The probe is an L2-regularised softmax regression fitted with L-BFGS in torch (``fit_probe``),
its L2 strength chosen by 3-fold cross-validation on the training split.

How to run::

    python analyses/probing.py --quick --run runs/tiny --steps 1000,1800,2000   # CPU, ~1 min
    python analyses/probing.py --quick                               # trains a quick model first
    python analyses/probing.py --device cuda --run runs/x            # full: more samples, all checkpoints
    python analyses/probing.py --smoke                               # seconds (tests)
    python analyses/probing.py --quick --seeds 0,1,2                 # three seeds (the --quick default)

Several seeds (issue 20): ``--seeds`` (default 0,1,2 in ``--quick`` and full; ``--seed S`` = one
seed) runs the one-seed analysis per seed into ``--out``/seed_S/ (training with that seed when
no ``--run`` is given; the value sets, prompts and splits follow the seed too), ``--jobs`` at
once; ``--out``/results.json holds ``per_seed`` and ``aggregate``: final-step probe accuracy per
value set and hook over seeds (mean, 95% bootstrap interval, n), final NIAH, and the verdict
"the value is decoded only from the F layers' residual" per seed ("reproduced on k of n seeds").

Writes ``probes.csv`` (+ ``.parquet``), ``probes.html`` (PNG where kaleido works) and
``results.json`` to ``--out`` (default ``analyses/out/probing/``).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

import retrieval_heads as rh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyses.common import (DEFAULT_TRAIN, parse_common, results_head, run_checkpoints, save_fig,  # noqa: E402
                             save_table, script_log, train_preset, write_json, write_results)
from analyses.seeds import fill_seed, format_summary, reproduced, run_per_seed, seeds_from_args, summarize_values  # noqa: E402

NAME = "probing"
N_VALUES = 8
MODES = {
    # samples per value, checkpoints probed (max), L2 grid
    "smoke": dict(per_value=4, n_ckpts=1, l2=[1e-2]),
    "quick": dict(per_value=40, n_ckpts=5, l2=[1e-3, 1e-2, 1e-1]),
    "full": dict(per_value=100, n_ckpts=12, l2=[1e-4, 1e-3, 1e-2, 1e-1]),
}


log = script_log(NAME)


# ----------------------------------------------------------------------------- data
def value_sets(seed: int) -> dict[str, list[str]]:
    rng = random.Random(f"probing-values/{seed}")
    base = str(rng.randint(100_000, 999_999))
    last = rng.sample(range(10), N_VALUES)
    hard = [f"{base}{d}" for d in last]
    firsts = rng.sample(range(1, 10), N_VALUES)
    easy = [f"{f}{rng.randint(0, 999_999):06d}" for f in firsts]
    return {"hard": hard, "easy": easy}


def probe_prompts(values: list[str], per_value: int, context_len: int, seed: int):
    """Needle prompts whose (7-digit) value is replaced by ``values[label]``; returns (tokens, labels)."""
    n = len(values) * per_value
    labels = torch.arange(n) % len(values)
    rng = random.Random(f"probing-depths/{seed}")
    batch = rh.tasks.niah_batch(n=n, context_len=context_len, seed=seed, variant="single_1",
                                depths=[rng.random() for _ in range(n)])
    toks = batch.tokens.clone()
    for i, s in enumerate(batch.samples):
        a, b = s.answer_spans[0]
        v = rh.tasks.TOKENIZER.encode(values[int(labels[i])])
        assert b - a == len(v), (a, b, v)
        toks[i, a:b] = torch.tensor(v)
    return toks, labels


@torch.no_grad()
def query_residuals(model, tokens, batch_size=32):
    """{hook name: (n, d_model)} at the last position, for hook_embed and every hook_resid_post."""
    names = ["hook_embed"] + [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    outs = {n: [] for n in names}

    def keep(x, hook):
        outs[hook.name].append(x[:, -1].float().cpu())

    for i in range(0, tokens.shape[0], batch_size):
        model.run_with_hooks(tokens[i:i + batch_size].to(model.device), fwd_hooks=[(n, keep) for n in names])
    return {n: torch.cat(v) for n, v in outs.items()}


# ----------------------------------------------------------------------------- probe
def fit_probe(X: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, iters: int = 200):
    """Multinomial logistic regression (softmax + L2 on the weights), L-BFGS. Features are
    standardised with the training mean/std. Returns predict(X) -> class ids."""
    X = X.double()
    mu, sd = X.mean(0), X.std(0).clamp_min(1e-6)
    Z = (X - mu) / sd
    W = torch.zeros(X.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(Z @ W + b, y) + l2 * (W ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    W, b = W.detach(), b.detach()
    return lambda Xn: (((Xn.double() - mu) / sd) @ W + b).argmax(-1)


def split(y: torch.Tensor, test_frac: float, seed: int):
    """Stratified train/test indices."""
    g = torch.Generator().manual_seed(seed)
    tr, te = [], []
    for c in y.unique():
        idx = (y == c).nonzero()[:, 0]
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = max(1, int(round(len(idx) * test_frac)))
        te.append(idx[:k])
        tr.append(idx[k:])
    return torch.cat(tr), torch.cat(te)


def choose_l2(X, y, grid, seed, folds=3):
    if len(grid) == 1:
        return grid[0]
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    best, best_acc = grid[0], -1.0
    for l2 in grid:
        accs = []
        for f in range(folds):
            te = perm[f::folds]
            tr = torch.cat([perm[j::folds] for j in range(folds) if j != f])
            pred = fit_probe(X[tr], y[tr], N_VALUES, l2, iters=100)
            accs.append(float((pred(X[te]) == y[te]).float().mean()))
        acc = sum(accs) / folds
        if acc > best_acc + 1e-9:
            best, best_acc = l2, acc
    return best


def probe_layers(model, step, tasks, mode, seed):
    rows = []
    cfg = model.cfg
    for task, (tokens, y) in tasks.items():
        feats = query_residuals(model, tokens)
        tr, te = split(y, 0.3, seed)
        for name, X in feats.items():
            layer = -1 if name == "hook_embed" else int(name.split(".")[1])
            l2 = choose_l2(X[tr], y[tr], mode["l2"], seed)
            pred = fit_probe(X[tr], y[tr], N_VALUES, l2)
            rows.append({"step": step, "task": task, "layer": layer, "hook": name,
                         "layer_type": "embed" if layer < 0 else cfg.layer_kind(layer),
                         "train_acc": float((pred(X[tr]) == y[tr]).float().mean()),
                         "test_acc": float((pred(X[te]) == y[te]).float().mean()),
                         "n_train": len(tr), "n_test": len(te), "l2": l2, "chance": 1 / N_VALUES})
    return rows


def value_attention(model, tokens, batch_size=32) -> dict:
    """Attention mass that the F heads put, at the query position, on the first token of the
    value vs on the whole value (``mass`` score of ``rh.retrieval_scores`` with the answer span
    cut to its first token): tells whether the query residual can hold the whole value."""
    import dataclasses

    b = rh.tasks.niah_batch(n=min(32, tokens.shape[0]), context_len=tokens.shape[1], seed=12345)
    first = rh.tasks.NeedleBatch(b.tokens, [dataclasses.replace(s, values=[s.values[0][0]], answer_spans=[
        (s.answer_spans[0][0], s.answer_spans[0][0] + 1)]) for s in b.samples])
    F = [l for l in model.cfg.attention_layers if model.cfg.layer_kind(l) == "F"]
    full = rh.retrieval_scores(model, b, method="mass")[F]
    one = rh.retrieval_scores(model, first, method="mass")[F]
    return {"attn_value_span": float(full.mean()), "attn_first_token": float(one.mean()),
            "attn_value_span_max": float(full.max()), "attn_first_token_max": float(one.max())}


def pick_checkpoints(path: Path, n: int) -> list[Path]:
    ck = run_checkpoints(path, f"--run {path}")
    if n <= 1 or len(ck) <= n:
        return ck[-max(n, 1):]
    # n checkpoints spread evenly in step (the last one included)
    steps = [int(p.name.split("_")[1]) for p in ck]
    targets = [steps[-1] * (i + 1) / n for i in range(n)]
    idx = sorted({min(range(len(ck)), key=lambda j: abs(steps[j] - t)) for t in targets})
    return [ck[i] for i in idx]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="checkpoint folder or run folder ({seed} = each seed's, e.g. "
                                  "runs/nope_seed{seed}); default: train one")
    ap.add_argument("--steps", default="", help="checkpoint steps to probe, e.g. 1000,1500,2000 "
                                                "[default: spread over the run]")
    ap.add_argument("--context-len", type=int, default=0, help="prompt length [default: training length]")
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
    if a.run:
        run = Path(fill_seed(a.run, a.seed))
    else:
        run = train_preset({**DEFAULT_TRAIN[mode_name], "seed": a.seed}, out / "run", a.device, log)
    train_s = time.time() - t0
    if a.steps:
        want = {int(s) for s in a.steps.split(",")}
        ckpts = [p for p in rh.list_checkpoints(run) if int(p.name.split("_")[1]) in want]
    else:
        ckpts = pick_checkpoints(run, mode["n_ckpts"])
    vals = value_sets(a.seed)
    rows, tasks, niah = [], None, {}
    for ck in ckpts:
        model = rh.load_checkpoint(ck, device=a.device)
        L = a.context_len or rh.eval.train_len(model) or 256
        if tasks is None:
            tasks = {t: probe_prompts(v, mode["per_value"], L, a.seed + 1 + i) for i, (t, v) in enumerate(vals.items())}
            log(f"values: {vals}; {len(tasks['hard'][1])} prompts of {L} tokens per value set")
        step = int(model.checkpoint["step"])
        niah[step] = rh.eval.niah_accuracy(model, [L], depths=[0.1, 0.5, 0.9], n=2 if mode_name == "smoke" else 8)
        r = probe_layers(model, step, tasks, mode, a.seed)
        att = value_attention(model, tasks["hard"][0]) if "F" in model.cfg.layout else {}
        r = [{**x, "niah_acc": niah[step], **att} for x in r]
        rows += r
        d = pd.DataFrame(r).pivot(index="task", columns="hook", values="test_acc")
        log(f"step {step} (NIAH {niah[step]:.2f}; F-head attention at the query: whole value "
            f"{att.get('attn_value_span', float('nan')):.2f}, "
            f"its first token {att.get('attn_first_token', float('nan')):.2f})"
            f" test accuracy:\n{d.round(3).to_string()}")
    df = pd.DataFrame(rows)
    save_table(df, out, "probes", log)

    import plotly.express as px
    d = df.copy()
    d["layer_label"] = [("embed" if l < 0 else f"L{l} ({t})") for l, t in zip(d["layer"], d["layer_type"])]
    d["step"] = d["step"].astype(str)
    fig = px.line(d, x="layer_label", y="test_acc", color="step", facet_col="task", markers=True,
                  hover_data=["train_acc", "l2"],
                  title=f"Probe accuracy at the query position (8 values, chance 0.125) — {model.cfg.layout}")
    fig.add_hline(y=1 / N_VALUES, line_dash="dash")
    files = save_fig(fig, out, "probes", log)

    final = df[df["step"] == df["step"].max()]
    results = {
        **results_head(NAME, mode_name, a), "run": str(run), "model": model.cfg.describe(),
        "values": vals, "per_value": mode["per_value"], "context_len": L, "chance": 1 / N_VALUES,
        "steps": [int(c.name.split("_")[1]) for c in ckpts], "niah_acc": {str(k): v for k, v in niah.items()},
        "f_attention": ({str(s): {c: round(float(g[c].iloc[0]), 4) for c in g if c.startswith("attn_")}
                         for s, g in df.groupby("step")} if "attn_value_span" in df else {}),
        "final_test_acc": {t: {h: round(float(v), 4) for h, v in g.set_index("hook")["test_acc"].items()}
                           for t, g in final.groupby("task")},
        "best_layer": {t: g.sort_values("test_acc", ascending=False).iloc[0]["hook"] for t, g in final.groupby("task")},
        "test_acc": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                     for r in df[["step", "task", "hook", "test_acc", "train_acc"]].to_dict("records")],
        "wall_s": {"total": round(time.time() - t0, 1), "train": round(train_s, 1)},
        "files": sorted({"probes.csv", *files}),
    }
    return write_results(out, results, t0, log)


# ----------------------------------------------------------------------------- several seeds
def _layer_kinds(model_desc: str) -> str:
    """``"layout=SSSF d_model=..."`` -> ``"SSSF"``."""
    m = re.search(r"layout=(\S+)", model_desc or "")
    return m.group(1) if m else ""


def only_f_decodes(final_acc: dict, layout: str, chance: float) -> bool | None:
    """One seed's verdict on a value set: the best probe is on an ``F`` layer's residual, and the
    embedding and every layer before the first ``F`` layer stay below twice chance. None (not
    measurable) when no probe reaches twice chance: nothing decodes the value, so no layer can
    be said to be the one that does."""
    if "F" not in layout or not final_acc or max(final_acc.values()) < 2 * chance:
        return None
    first_f = layout.index("F")

    def layer(hook):
        m = re.match(r"blocks\.(\d+)\.", hook)
        return int(m.group(1)) if m else -1

    best = max(final_acc, key=lambda h: final_acc[h])
    before = [v for h, v in final_acc.items() if layer(h) < first_f]
    return layer(best) >= 0 and layout[layer(best)] == "F" and all(v < 2 * chance for v in before)


def aggregate(per_seed: dict) -> dict:
    """``{seed: one-seed results}`` -> final-step accuracy per value set and hook over seeds,
    final NIAH over seeds, and the 'only the F layers decode' verdict per value set."""
    seeds = list(per_seed)
    tasks = list(dict.fromkeys(t for r in per_seed.values() for t in r["final_test_acc"]))
    acc = {t: {h: summarize_values({s: per_seed[s]["final_test_acc"].get(t, {}).get(h) for s in seeds}, digits=4)
               for h in dict.fromkeys(h for r in per_seed.values() for h in r["final_test_acc"].get(t, {}))}
           for t in tasks}
    niah = summarize_values({s: (per_seed[s]["niah_acc"] or {}).get(str(max(per_seed[s]["steps"])))
                             if per_seed[s]["steps"] else None for s in seeds}, digits=4)
    verdicts = {t: reproduced({s: only_f_decodes(per_seed[s]["final_test_acc"].get(t, {}),
                                                 _layer_kinds(per_seed[s]["model"]), per_seed[s]["chance"])
                               for s in seeds}, f"{t} values decoded only from the F layers' residual")
                for t in tasks}
    return {"seeds": seeds, "final_test_acc": acc, "final_niah": niah,
            "best_layer": {t: {s: per_seed[s]["best_layer"].get(t) for s in seeds} for t in tasks},
            "verdicts": verdicts}


def main_seeds(a, argv, mode_name: str, out: Path, seeds: list[int], t0: float) -> dict:
    """Each seed as a one-seed run into ``out/seed_S``, then the aggregate (results.json, probes_seeds.csv)."""
    done, workers = run_per_seed(NAME, argv, seeds, out, a.jobs, mode_name, main, log)
    keep = ("run", "model", "values", "context_len", "chance", "steps", "niah_acc", "final_test_acc", "best_layer",
            "f_attention", "wall_s")
    per_seed = {str(s): {k: r.get(k) for k in keep} for s, r in zip(seeds, done)}
    agg = aggregate(per_seed)
    rows = [{"seed": s, "task": t, "hook": h, "final_test_acc": v}
            for s, r in per_seed.items() for t, d in r["final_test_acc"].items() for h, v in d.items()]
    table = pd.DataFrame(rows)
    table.to_csv(out / "probes_seeds.csv", index=False)
    show = table.pivot_table(index=["task", "hook"], columns="seed", values="final_test_acc")
    show["all"] = [format_summary(agg["final_test_acc"][t][h]) for t, h in show.index]
    log("final-step probe accuracy per seed and over seeds (mean [95% bootstrap interval] (n)):\n"
        + show.to_string(float_format=lambda v: f"{v:.3f}")
        + f"\nfinal NIAH {format_summary(agg['final_niah'])}"
        + "".join(f"\n{v['verdict']}" for v in agg["verdicts"].values()))
    results = {**results_head(NAME, mode_name, a), "seeds": seeds,
               "seed_scope": "value sets, prompts and splits only (given --run)" if a.run
               else "training data, value sets, prompts and splits",
               "per_seed": per_seed, "aggregate": agg, "seed_outputs": {str(s): f"seed_{s}" for s in seeds},
               "wall_s": {"total": round(time.time() - t0, 1), "jobs_at_once": workers,
                          "per_seed": {str(s): r["wall_s"]["total"] for s, r in zip(seeds, done)}},
               "files": ["probes_seeds.csv", "results.json"]}
    write_json(out / "results.json", results)
    log(f"wrote {out} in {time.time() - t0:.0f}s")
    return json.loads((out / "results.json").read_text())


if __name__ == "__main__":
    main()
