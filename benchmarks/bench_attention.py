"""Speed of sliding-window vs full attention: forward + backward of one attention layer.

How to run (CPU: about 20 s with --quick, about a minute without)::

    python benchmarks/bench_attention.py --quick
    python benchmarks/bench_attention.py --out benchmarks/results/attention_cpu.json
    python benchmarks/bench_attention.py --threads 1     # steadier on a busy, shared machine
    python benchmarks/bench_attention.py --no-cpu        # GPU machine: the GPU section only

CPU section: one `Attention` layer (d_model=128, 4 heads, so d_head=32) on T=4096 tokens,
batch 1, float32. It compares

- ``swa-blocked``  an `S` layer, w=64, fast path (``kernels.blocked_swa``): O(T·w)
- ``full-sdpa``    an `F` layer, fast path (``F.scaled_dot_product_attention``): O(T²)
- ``swa-eager``    the `S` layer on the eager reference path (materialises T×T scores)

and prints a table and the full/SWA ratio (target: SWA at least 3× faster).

GPU section (only when CUDA is available; skipped cleanly otherwise): the raw kernels at
T=32768, bf16, B=4, H=8, D=64: FlexAttention sliding window (``kernels.flex_swa``, w=128)
vs SDPA full causal attention, forward + backward.

Results go to ``--out`` as JSON (machine, torch version, settings, timings in ms).
Timings are medians over ``--repeats`` runs after ``--warmup`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from retrieval_heads.config import ModelConfig
from retrieval_heads.model import kernels
from retrieval_heads.model.attention import Attention


def _time(fns: dict, warmup: int, repeats: int, sync=lambda: None) -> dict:
    """Time each callable; the repeats are interleaved (a, b, a, b, ...) so that both
    paths see the same background load on a shared machine."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: {"median_ms": 1e3 * statistics.median(t), "min_ms": 1e3 * min(t), "repeats": repeats}
            for name, t in times.items()}


def cpu_section(T: int, d_model: int, n_heads: int, window: int, warmup: int, repeats: int,
                eager: bool) -> dict:
    torch.manual_seed(0)
    x = torch.randn(1, T, d_model, requires_grad=True)  # (B, T, d_model)
    positions = torch.arange(T)

    def layer(kind: str, force_eager: bool = False) -> Attention:
        cfg = ModelConfig(layout=kind, d_model=d_model, n_heads=n_heads, window=window,
                          max_seq_len=max(T, window))
        attn = Attention(cfg, 0)
        attn.force_eager = force_eager
        return attn

    def fwd_bwd(attn):
        def run():
            attn.zero_grad(set_to_none=True)
            x.grad = None
            attn(x, positions).sum().backward()
        return run

    rows = _time({"swa-blocked": fwd_bwd(layer("S")), "full-sdpa": fwd_bwd(layer("F"))}, warmup, repeats)
    if eager:
        rows.update(_time({"swa-eager": fwd_bwd(layer("S", force_eager=True))}, 1, max(1, repeats // 3)))
    ratio = rows["full-sdpa"]["median_ms"] / rows["swa-blocked"]["median_ms"]
    return {"settings": {"T": T, "d_model": d_model, "n_heads": n_heads, "window": window,
                         "batch": 1, "dtype": "float32", "threads": torch.get_num_threads()},
            "timings": rows, "full_over_swa": ratio}


def gpu_section(T: int, B: int, H: int, D: int, window: int, warmup: int, repeats: int) -> dict:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))  # (B, H, T, D)
    sync = torch.cuda.synchronize

    def fwd_bwd(fn):
        def run():
            q.grad = k.grad = v.grad = None
            fn(q, k, v).sum().backward()
        return run

    rows = _time({"swa-flex": fwd_bwd(lambda q, k, v: kernels.flex_swa(q, k, v, window)),
                  "full-sdpa": fwd_bwd(kernels.sdpa_attention)}, warmup, repeats, sync)
    return {"settings": {"T": T, "batch": B, "heads": H, "d_head": D, "window": window, "dtype": "bfloat16",
                         "device": torch.cuda.get_device_name()},
            "timings": rows, "full_over_swa": rows["full-sdpa"]["median_ms"] / rows["swa-flex"]["median_ms"]}


def print_table(title: str, section: dict, ref: str) -> None:
    print(f"\n{title}  {section['settings']}")
    print(f"{'path':<14}{'median ms':>12}{'min ms':>10}{'vs ' + ref:>12}")
    base = section["timings"][ref]["median_ms"]
    for name, t in section["timings"].items():
        print(f"{name:<14}{t['median_ms']:>12.2f}{t['min_ms']:>10.2f}{t['median_ms'] / base:>11.2f}x")
    print(f"full / SWA = {section['full_over_swa']:.2f}x")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/attention_cpu.json", help="JSON output path")
    ap.add_argument("--quick", action="store_true", help="fewer repeats, smaller GPU run, no eager at full T")
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-gpu", action="store_true", help="skip the GPU section even if CUDA is available")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU section (GPU machines)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice). On a shared, busy machine "
                         "--threads 1 avoids OpenMP stalls that make many-small-op paths look slow")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 10)
    if args.threads:
        torch.set_num_threads(args.threads)

    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpu_count": os.cpu_count(), "torch": torch.__version__},
              "command": " ".join(["python", "benchmarks/bench_attention.py", *(argv if argv is not None else sys.argv[1:])])}
    result["cpu"] = None
    if not args.no_cpu:
        cpu = cpu_section(T=args.T, d_model=128, n_heads=4, window=64, warmup=args.warmup,
                          repeats=repeats, eager=True)
        result["cpu"] = cpu
        print_table("CPU: one attention layer, forward + backward", cpu, "swa-blocked")
        target = cpu["full_over_swa"] >= 3.0
        print(f"target SWA >= 3x faster than full: {'met' if target else 'NOT met'}")

    if torch.cuda.is_available() and not args.no_gpu:
        gT = 8192 if args.quick else 32768
        gpu = gpu_section(T=gT, B=4, H=8, D=64, window=128, warmup=3, repeats=repeats)
        result["gpu"] = gpu
        print_table("GPU: raw kernels, forward + backward", gpu, "swa-flex")
    else:
        result["gpu"] = None
        print("\nGPU section skipped: CUDA not available")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
