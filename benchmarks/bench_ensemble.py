"""Batched ensemble vs one run at a time: training tokens/s summed over K small members.

The Large-Window Laziness sweep trains many tiny models (windows 4..64 plus the all-F
reference, several seeds). On a CPU such models are dominated by per-operation overhead, so
``train_ensemble`` runs all members in one batched step. This script measures, for K members
of a ``tiny``-like model (the tiny preset's layout and mixture, d_model 32, context 256):

- ``ensemble``: ``train_ensemble`` of all K members in one process, 1 torch thread;
- ``sequential``: the members trained one after another by ``train()`` in one process, 1 thread;
- ``parallel2``: two processes (1 thread each), each training half the members with ``train()``;
- ``ensemble_2t``: ``train_ensemble`` of all K members in one process with 2 torch threads
  (one process using both cores, against ``parallel2``).

Steady state: every run trains ``--warmup + --steps`` steps with an evaluation at step
``--warmup``; the rate is ``--steps`` x tokens per step over the training time between the two
evaluations' ``time_s`` (metrics.jsonl), so start-up, the warm-up steps, evaluations and
checkpoints are left out. ``parallel2`` adds the two processes' rates (they run at once).

    python benchmarks/bench_ensemble.py                      # K = 6 and 12, ~3 min on 2 cores
    python benchmarks/bench_ensemble.py --ks 6 --steps 8     # quicker

Prints the load average first (a shared machine's numbers depend on it), then a table, and
writes ``benchmarks/results/ensemble_cpu.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import write_result  # noqa: E402

import retrieval_heads as rh  # noqa: E402
from retrieval_heads.train import load_preset, read_metrics, train  # noqa: E402
from retrieval_heads.train.ensemble import train_ensemble  # noqa: E402

WINDOWS = (4, 8, 16, 32, 64, None)  # None: the all-F reference (layout S -> F)


def members_for(k: int, args) -> list[tuple[rh.ModelConfig, rh.TrainConfig]]:
    """K members: the windows in turn (then the full reference), seeds 0, 1, ... per round."""
    mc, tc = load_preset("tiny")
    mc = mc.replace(d_model=args.d_model, d_mlp=2 * args.d_model)
    tc = tc.replace(steps=args.warmup + args.steps, context_len=args.context_len, batch_size=args.batch_size,
                    eval_every=args.warmup, eval_samples=1, save_every=args.warmup + args.steps,
                    save_log_spaced=False, device="cpu")
    out = []
    for i in range(k):
        w, seed = WINDOWS[i % len(WINDOWS)], i // len(WINDOWS)
        m = mc.replace(layout=mc.layout.replace("S", "F")) if w is None else mc.replace(window=w)
        out.append((m, tc.replace(seed=seed)))
    return out


def steady(run: Path, warmup: int, tok_per_step: int) -> tuple[int, float]:
    """(tokens, training seconds) between the evaluation at ``warmup`` and the last one."""
    rows = {r["step"]: r for r in read_metrics(run)}
    last = max(rows)
    return (last - warmup) * tok_per_step, rows[last]["time_s"] - rows[warmup]["time_s"]


def _quiet(*a):
    pass


def run_sequential(members, root: Path, warmup: int) -> dict:
    """train() of each member in turn; returns summed tokens and seconds."""
    tokens = secs = 0.0
    for i, (mc, tc) in enumerate(members):
        out = root / f"m{i}"
        train(mc, tc, out, progress=False, log=_quiet)
        t, s = steady(out, warmup, tc.batch_size * tc.context_len)
        tokens, secs = tokens + t, secs + s
    return {"tokens": tokens, "train_s": secs}


def _worker(members, root: str, warmup: int) -> dict:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = run_sequential(members, Path(root), warmup)
    return {**res, "wall_s": time.perf_counter() - t0}


def bench_k(k: int, args, root: Path) -> dict:
    members = members_for(k, args)
    tok_per_step = args.batch_size * args.context_len
    row = {"k": k, "members": [f"{m.layout} w{m.window} seed{t.seed}" for m, t in members]}

    # warm the process up once (imports, kernels, allocator), outside every measurement
    train(*members[0], root / f"k{k}_warm", progress=False, log=_quiet)

    for mode, threads in (("ensemble", 1), ("ensemble_2t", 2)):
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        train_ensemble([(m, t, root / f"k{k}_{mode}" / f"m{i}") for i, (m, t) in enumerate(members)], log=_quiet)
        wall = time.perf_counter() - t0
        torch.set_num_threads(1)
        tok = sec = 0.0
        for i in range(k):  # every member reports the same ensemble time: count it once
            t, s = steady(root / f"k{k}_{mode}" / f"m{i}", args.warmup, tok_per_step)
            tok, sec = tok + t, s
        row[mode] = {"tokens": tok, "train_s": sec, "tokens_per_s": tok / sec, "wall_s": wall, "threads": threads}
        print(f"  K={k} {mode}: {tok / sec:,.0f} tokens/s", flush=True)

    t0 = time.perf_counter()
    seq = run_sequential(members, root / f"k{k}_seq", args.warmup)
    row["sequential"] = {**seq, "tokens_per_s": seq["tokens"] / seq["train_s"], "wall_s": time.perf_counter() - t0}
    print(f"  K={k} sequential: {row['sequential']['tokens_per_s']:,.0f} tokens/s", flush=True)

    halves = [members[0::2], members[1::2]]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        parts = list(pool.map(_worker, halves, [str(root / f"k{k}_par{j}") for j in range(2)],
                              [args.warmup] * 2))
    rate = sum(p["tokens"] / p["train_s"] for p in parts)
    row["parallel2"] = {"tokens_per_s": rate, "per_process": parts, "wall_s": time.perf_counter() - t0}
    print(f"  K={k} parallel2: {rate:,.0f} tokens/s", flush=True)
    for mode in ("sequential", "parallel2"):
        row[f"speedup_vs_{mode}"] = row["ensemble"]["tokens_per_s"] / row[mode]["tokens_per_s"]
    row["speedup_2t_vs_parallel2"] = row["ensemble_2t"]["tokens_per_s"] / row["parallel2"]["tokens_per_s"]
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ks", default="6,12", help="ensemble sizes (comma-separated)")
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--context-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--warmup", type=int, default=3, help="steps before the measurement (not timed)")
    p.add_argument("--steps", type=int, default=12, help="timed steps per run")
    p.add_argument("--sweep-steps", type=int, default=2000,
                   help="steps of one run of the projected sweep (18 runs) in the table")
    p.add_argument("--out", default="benchmarks/results/ensemble_cpu.json")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    load0 = os.getloadavg()
    print(f"load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} on {os.cpu_count()} CPUs", flush=True)
    ks = [int(x) for x in args.ks.split(",") if x.strip()]
    with tempfile.TemporaryDirectory(prefix="bench_ens_") as tmp:
        rows = [bench_k(k, args, Path(tmp)) for k in ks]
    load1 = os.getloadavg()
    tok_run = args.sweep_steps * args.batch_size * args.context_len
    print(f"\nd_model={args.d_model} d_mlp={2 * args.d_model} SSSF/FFFF T={args.context_len} B={args.batch_size} "
          f"1 thread per process; {args.steps} timed steps after {args.warmup}")
    modes = ("ensemble", "sequential", "parallel2", "ensemble_2t")
    print(f"{'K':>3} {'ensemble tok/s':>15} {'sequential':>11} {'2 processes':>12} {'ens 2 thr':>10} {'x seq':>6}"
          f" {'x 2proc':>8} {'2thr x 2proc':>13} {'18-run sweep min (ens/seq/2proc/ens2t)':>40}")
    for r in rows:
        mins = [18 * tok_run / r[m]["tokens_per_s"] / 60 for m in modes]
        r["sweep_minutes_18_runs"] = dict(zip(modes, mins))
        print(f"{r['k']:>3} {r['ensemble']['tokens_per_s']:>15,.0f} {r['sequential']['tokens_per_s']:>11,.0f} "
              f"{r['parallel2']['tokens_per_s']:>12,.0f} {r['ensemble_2t']['tokens_per_s']:>10,.0f} "
              f"{r['speedup_vs_sequential']:>6.2f} {r['speedup_vs_parallel2']:>8.2f} "
              f"{r['speedup_2t_vs_parallel2']:>13.2f} {' / '.join(f'{m:.0f}' for m in mins):>40}")
    print(f"load average at the end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    meta = {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "load_avg_start": load0, "load_avg_end": load1, "args": vars(args),
            "model": members_for(1, args)[0][0].to_dict(),
            "note": "tokens/s are training steps only (steady state between two evaluations), summed over "
                    "members; sweep minutes project 18 runs of --sweep-steps steps at these rates (training "
                    "only, no evaluation/checkpoints/scans)"}
    write_result(args.out, {"meta": meta, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
