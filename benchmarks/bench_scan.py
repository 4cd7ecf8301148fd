"""Detection cost: time and peak memory of scoring a `tiny` model (SSSF, d_model 128, 4 heads)
at long contexts, against a plain forward pass and against the pattern-caching baseline
(``run_with_cache`` on every ``hook_pattern``, i.e. T x T per head).

How to run (CPU):
    python benchmarks/bench_scan.py --quick          # T = 2k, 8k; a few minutes
    python benchmarks/bench_scan.py                  # T = 2k, 8k, 32k
    python benchmarks/bench_scan.py --T 4096 --n-samples 2 --device cuda

Every (T, mode) runs in a fresh subprocess. Peak memory is that of the first call (peak RSS,
reset through /proc/self/clear_refs, minus the RSS just before the call); time is the best of
``--repeats`` warm calls, forward and detect alternating, and their ratio the median over
back-to-back pairs (robust on a shared, noisy machine). Modes:

    forward   one plain forward pass over the needle prompts (the cost unit)
    detect    ``rh.detect.score_heads`` (copy by greedy decoding + mass + entropy): one fast
              prefill, then one attention row per head per decode step
    scan      ``rh.scan`` of a one-checkpoint run at that length (load, hash, score, tables)
    baseline  ``run_with_cache`` of every ``hook_pattern`` over the prompts. Its memory is
              known analytically: (attention layers + 2 transient) x B x H x T^2 x 4 bytes; it is
              only *run* when that is under ``--baseline-limit-gb`` (default 8), otherwise the
              row reports the analytic number and "refused" (the machine would OOM).

The timing child also runs ``model.generate`` for the same number of greedy steps: the NIAH
evaluation that detection replaces (a scan takes NIAH accuracy from the same decode), so
detect/generate is the detector's own overhead.

Targets (issue 4): detect <= 1.5x forward; detect memory linear in T; T = 32k fits 24 GB
where the baseline cannot. Prints a table and writes JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRESET = Path(__file__).resolve().parents[1] / "retrieval_heads" / "data" / "presets" / "tiny.json"
DEFAULT_MODEL = dict(layout="SSSF", d_model=128, n_heads=4, window=64)


def tiny_config(T: int) -> dict:
    """The `tiny` preset's model (if present), with max_seq_len raised to fit T."""
    cfg = dict(DEFAULT_MODEL)
    source = "defaults (SSSF, d_model 128, 4 heads, window 64)"
    if PRESET.exists():
        d = json.loads(PRESET.read_text())
        d = d.get("model", d)
        cfg.update({k: v for k, v in d.items() if k in (
            "layout", "d_model", "n_heads", "n_kv_heads", "d_mlp", "window", "pos", "rope_base", "vocab_size")})
        source = f"preset {PRESET.name}"
    cfg["max_seq_len"] = T + 128
    return cfg, source


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> bool:
    """Reset the peak RSS (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def baseline_bytes(cfg: dict, B: int, T: int) -> int:
    n_attn = sum(c in "FS" for c in cfg["layout"])
    per = B * cfg["n_heads"] * T * T * 4  # one float32 (B, H, T, T) tensor
    return (n_attn + 2) * per  # cached patterns + scores/softmax transients of one layer


def child(mode: str, T: int, n: int, device: str, limit_gb: float, repeats: int = 3,
          threads: int = 0) -> dict:
    """``mode``: forward | detect | scan | baseline (memory of one cold call) or ``time``
    (forward and detect called alternately, ``repeats`` times each after a warm-up)."""
    import torch

    import retrieval_heads as rh

    if threads:
        torch.set_num_threads(threads)
    cfg_d, source = tiny_config(T)
    cfg = rh.ModelConfig(**cfg_d)
    torch.manual_seed(0)
    model = rh.HybridLM(cfg).to(device).eval()
    batch = rh.tasks.niah_batch(n=n, context_len=T, seed=0)
    tokens = batch.tokens.to(device)
    out = {"mode": mode, "T": T, "n": n, "model": source, "layout": cfg.layout,
           "baseline_analytic_gb": baseline_bytes(cfg_d, n, T) / 2**30, "refused": False}
    tmp = None
    if mode == "scan":
        tmp = Path(tempfile.mkdtemp())
        rh.save_checkpoint(tmp / "run", 0, model)
    if mode == "baseline" and out["baseline_analytic_gb"] > limit_gb:
        out.update(refused=True, seconds=None, peak_gb=None)
        return out

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def op(m: str):
        if m == "forward":
            with torch.no_grad():
                model(tokens)
        elif m == "detect":
            res = rh.detect.score_heads(model, batch)
            out["decode_steps_max"] = max(len(s.answer_tokens) for s in batch.samples) + 1
            out["n_counted"] = res.n_counted
        elif m == "scan":
            rh.scan(tmp / "run", context_lens=(T,), depths=(0.5,), n_per_cell=n, progress=False,
                    report=False, batch_size=n)
        elif m == "baseline":
            with torch.no_grad():
                _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
            out["cached_gb"] = sum(v.numel() * v.element_size() for v in cache.values()) / 2**30
            del cache
        sync()

    steps = max(len(s.answer_tokens) for s in batch.samples) + 1  # what score_heads decodes

    def generate():
        with torch.no_grad():
            model.generate(tokens, steps, stop_token=rh.tasks.TOKENIZER.EOS)
        sync()

    if mode == "time":
        times = {"forward": [], "detect": [], "generate": []}
        op("forward"), op("detect"), generate()  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            generate()
            times["generate"].append(time.perf_counter() - t0)
            for m in ("forward", "detect"):
                t0 = time.perf_counter()
                op(m)
                times[m].append(time.perf_counter() - t0)
        out["times"] = times
        out["forward_s"], out["detect_s"] = min(times["forward"]), min(times["detect"])
        # calls of a pair ran back to back, under the same machine load: their ratio is robust
        ratios = sorted(d / f for f, d in zip(times["forward"], times["detect"]))
        out["pair_ratio_median"] = ratios[len(ratios) // 2]
        out["generate_s"] = min(times["generate"])
        g = sorted(d / g for g, d in zip(times["generate"], times["detect"]))
        out["detect_over_generate"] = g[len(g) // 2]
        return out
    # memory of the first (cold) call, from a reset peak, so that allocator pools kept from
    # an earlier call cannot hide it
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out["peak_reset"] = reset_peak()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    op(mode)
    out["seconds"] = time.perf_counter() - t0  # cold: includes one-time costs
    out["peak_gb"] = max(0, peak_bytes() - rss0) / 2**30
    if device == "cuda":
        out["cuda_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def run_child(mode, T, args) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--T", str(T), "--n-samples", str(args.n_samples),
           "--device", args.device, "--baseline-limit-gb", str(args.baseline_limit_gb),
           "--repeats", str(args.repeats), "--threads", str(args.threads)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode or not lines:
        return {"mode": mode, "T": T, "error": (p.stderr or p.stdout).strip().splitlines()[-1:]}
    return json.loads(lines[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", default=None, help="comma-separated context lengths")
    ap.add_argument("--quick", action="store_true", help="T = 2048, 8192 only")
    ap.add_argument("--n-samples", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--baseline-limit-gb", type=float, default=8.0)
    ap.add_argument("--modes", default="forward,detect,scan,baseline")
    ap.add_argument("--out", default=None)
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed warm (forward, detect) pairs per T [default: 5, --quick: 3]")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared, loaded machine multi-threaded tiny "
                         "ops stall on OpenMP barriers and timings become noise; 0 = torch's default)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.child:
        print(json.dumps(child(args.child, int(args.T), args.n_samples, args.device, args.baseline_limit_gb,
                               repeats=args.repeats, threads=args.threads)))
        return
    Ts = [int(x) for x in args.T.split(",")] if args.T else ([2048, 8192] if args.quick else [2048, 8192, 32768])
    rows = []
    for T in Ts:
        for mode in ["time"] + args.modes.split(","):
            r = run_child(mode, T, args)
            rows.append(r)
            if "error" in r:
                msg = f"error {r['error']}"
            elif mode == "time":
                msg = (f"forward {r['forward_s']:.2f} s, detect {r['detect_s']:.2f} s (best of {args.repeats}); "
                       f"detect/forward {r['pair_ratio_median']:.2f} (median of back-to-back pairs); "
                       f"greedy generate {r['generate_s']:.2f} s, detect/generate {r['detect_over_generate']:.2f}")
            elif r.get("refused"):
                msg = f"refused: analytic {r['baseline_analytic_gb']:.1f} GB > --baseline-limit-gb"
            else:
                msg = f"{r['seconds']:.2f} s (cold), peak +{r['peak_gb']:.3f} GB"
            print(f"  T={T:>6} {mode:>8}: {msg}", flush=True)
    by = {(r["T"], r["mode"]): r for r in rows}
    fmt = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"
    print(f"\n{'T':>6} {'forward s':>10} {'detect s':>9} {'ratio':>6} {'det/gen':>7} {'scan s':>7} {'fwd GB':>7} "
          f"{'detect GB':>9} {'MB/ktok':>8} {'baseline GB':>18}")
    summary = []
    for T in Ts:
        t, f, d, s, b = (by.get((T, m), {}) for m in ("time", "forward", "detect", "scan", "baseline"))
        ratio = t.get("pair_ratio_median")
        if b.get("refused"):
            base = f"{b['baseline_analytic_gb']:.1f} (refused)"
        elif b.get("peak_gb") is not None:
            base = f"{b['peak_gb']:.2f} (analytic {b['baseline_analytic_gb']:.1f})"
        else:
            base = "-"
        per_k = 1024 * d["peak_gb"] / (T / 1024) if d.get("peak_gb") is not None else None
        summary.append({"T": T, "forward_s": t.get("forward_s"), "detect_s": t.get("detect_s"),
                        "detect_over_forward": ratio, "generate_s": t.get("generate_s"),
                        "detect_over_generate": t.get("detect_over_generate"), "scan_cold_s": s.get("seconds"),
                        "forward_peak_gb": f.get("peak_gb"), "detect_peak_gb": d.get("peak_gb"),
                        "detect_mb_per_ktok": per_k, "scan_peak_gb": s.get("peak_gb"),
                        "baseline_peak_gb": b.get("peak_gb"), "baseline_analytic_gb": b.get("baseline_analytic_gb"),
                        "baseline_refused": b.get("refused")})
        print(f"{T:>6} {fmt(t.get('forward_s')):>10} {fmt(t.get('detect_s')):>9} {fmt(ratio):>6} "
              f"{fmt(t.get('detect_over_generate')):>7} "
              f"{fmt(s.get('seconds')):>7} {fmt(f.get('peak_gb'), 3):>7} {fmt(d.get('peak_gb'), 3):>9} "
              f"{fmt(per_k, 2):>8} {base:>18}")
    ok_ratio = all(r["detect_over_forward"] is not None and r["detect_over_forward"] <= 1.5 for r in summary)
    print(f"\ndetect <= 1.5x forward at every T: {ok_ratio}")
    pts = [(r["T"], r["detect_peak_gb"]) for r in summary if r["detect_peak_gb"] is not None]
    for (t0, m0), (t1, m1) in zip(pts, pts[1:]):
        slope = 1024 * (m1 - m0) / ((t1 - t0) / 1024)
        quad = m0 * (t1 / t0) ** 2
        print(f"detect peak {t0} -> {t1} tokens: +{1024 * (m1 - m0):.0f} MB, {slope:.2f} MB per 1k tokens "
              f"(x{m1 / max(m0, 1e-9):.1f} for x{t1 / t0:.0f} tokens; quadratic growth would reach {quad:.2f} GB)")
    for r in summary:
        if r["baseline_refused"]:
            print(f"baseline at T={r['T']}: {r['baseline_analytic_gb']:.1f} GB of patterns (analytic; not run) vs "
                  f"detect {r['detect_peak_gb']:.2f} GB")
    out = Path(args.out or f"benchmarks/results/bench_scan{'_quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    import torch

    meta = {"machine": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": args.threads or torch.get_num_threads(), "device": args.device, "n_samples": args.n_samples,
            "model": tiny_config(Ts[0])[1], "baseline_limit_gb": args.baseline_limit_gb,
            "memory_total_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30}
    out.write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
