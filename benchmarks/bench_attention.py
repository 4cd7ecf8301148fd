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
vs SDPA full causal attention, forward + backward (target, issue 8: SWA >= 8x faster).
``--kernel-*`` options change its shape and SWA backend; ``--kernel-device cpu`` runs the
same section on CPU (float32, blocked SWA) as a smoke test of the GPU machinery.
``--recurrent`` adds the recurrent mixers' kernels (scalar-decay linear attention and the
gated delta rule, fwd+bwd): the torch chunked form against flash-linear-attention's
kernels where fla is installed (CUDA only)::

    python benchmarks/bench_attention.py --no-cpu --recurrent --out /tmp/attention_gpu.json

Results go to ``--out`` as JSON (machine, torch version, settings, timings in ms).
Timings are medians over ``--repeats`` runs after ``--warmup`` runs.
"""

from __future__ import annotations

import argparse
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import write_result  # noqa: E402


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


def gpu_section(T: int, B: int, H: int, D: int, window: int, warmup: int, repeats: int,
                device: str = "cuda", backend: str = "flex") -> dict:
    """Raw kernels, fwd+bwd: SWA on ``backend`` vs SDPA full causal. bf16 on CUDA; on CPU
    (smoke runs) float32, with ``flex`` replaced by the blocked path."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    if not cuda and backend in ("flex", "flash"):
        backend = "blocked"
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device=dev, dtype=dtype, requires_grad=True)
               for _ in range(3))  # (B, H, T, D)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def fwd_bwd(fn):
        def run():
            q.grad = k.grad = v.grad = None
            fn(q, k, v).sum().backward()
        return run

    if backend == "flex":
        swa = lambda q, k, v: kernels.flex_swa(q, k, v, window)  # noqa: E731
    else:
        swa = lambda q, k, v: kernels.fast_attention(q, k, v, window, backend)  # noqa: E731
    name = f"swa-{backend}"
    rows = _time({name: fwd_bwd(swa), "full-sdpa": fwd_bwd(kernels.sdpa_attention)}, warmup, repeats, sync)
    return {"settings": {"T": T, "batch": B, "heads": H, "d_head": D, "window": window,
                         "dtype": str(dtype).replace("torch.", ""), "backend": backend,
                         "device": torch.cuda.get_device_name(dev) if cuda else "cpu"},
            "timings": rows, "swa_path": name,
            "full_over_swa": rows["full-sdpa"]["median_ms"] / rows[name]["median_ms"]}


def recurrent_section(T: int, B: int, H: int, D: int, warmup: int, repeats: int, device: str = "cuda") -> dict:
    """Recurrent mixers' kernels, fwd+bwd: the torch chunked forms, and fla's kernels where
    installed (CUDA only). bf16 on CUDA, float32 on CPU."""
    from retrieval_heads.model import recurrence

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    q = (torch.randn(B, H, T, D, device=dev) * D ** -0.5).to(dtype).requires_grad_(True)  # (B, H, T, D)
    k = torch.nn.functional.normalize(torch.randn(B, H, T, D, device=dev), dim=-1).to(dtype).requires_grad_(True)
    v = torch.randn(B, H, T, D, device=dev, dtype=dtype, requires_grad=True)
    log_a = (-torch.rand(B, H, T, device=dev) * 0.1).requires_grad_(True)  # (B, H, T)
    beta = torch.rand(B, H, T, device=dev).to(dtype).requires_grad_(True)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    amp = torch.autocast("cuda", dtype=dtype) if cuda else torch.autocast("cpu", enabled=False)

    backends = ["torch"] + (["fla"] if cuda and recurrence.fla_available() else [])
    # where fla's gated backward refuses to run (Hopper + Triton 3.4-3.7.0, fla #640), time
    # the forward pass only, for both paths
    backward = "fla" not in backends or recurrence.fla_backward_ok(dev.index or 0)

    def timed(fn):
        def run():
            for x in (q, k, v, log_a, beta):
                x.grad = None
            with amp, torch.set_grad_enabled(backward):
                o, _ = fn()
            if backward:
                o.float().sum().backward()
        return run

    fns = {}
    for b in backends:
        fns[f"decay-{b}"] = timed(lambda b=b: recurrence.decay_linear_attention(q, k, v, log_a, backend=b))
        fns[f"delta-{b}"] = timed(lambda b=b: recurrence.gated_delta_rule(q, k, v, beta, log_a, backend=b))
    rows = _time(fns, warmup, repeats, sync)
    out = {"settings": {"T": T, "batch": B, "heads": H, "d_head": D, "dtype": str(dtype).replace("torch.", ""),
                        "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
                        "fla": "fla" in backends, "pass": "fwd+bwd" if backward else "fwd only (fla #640)"},
           "timings": rows}
    if "fla" in backends:
        out["torch_over_fla"] = {kind: rows[f"{kind}-torch"]["median_ms"] / rows[f"{kind}-fla"]["median_ms"]
                                 for kind in ("decay", "delta")}
    return out


def print_table(title: str, section: dict, ref: str) -> None:
    print(f"\n{title}  {section['settings']}")
    print(f"{'path':<14}{'median ms':>12}{'min ms':>10}{'vs ' + ref:>17}")
    base = section["timings"][ref]["median_ms"]
    for name, t in section["timings"].items():
        print(f"{name:<14}{t['median_ms']:>12.2f}{t['min_ms']:>10.2f}{t['median_ms'] / base:>16.2f}x")
    print(f"full / SWA = {section['full_over_swa']:.2f}x")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", "--json", dest="out", default="benchmarks/results/attention_cpu.json",
                    help="JSON output path")
    ap.add_argument("--quick", action="store_true", help="fewer repeats, smaller GPU run, no eager at full T")
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-gpu", action="store_true", help="skip the GPU section even if CUDA is available")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU section (GPU machines)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice). On a shared, busy machine "
                         "--threads 1 avoids OpenMP stalls that make many-small-op paths look slow")
    g = ap.add_argument_group("kernel (GPU) section")
    g.add_argument("--kernel-T", type=int, default=None, help="sequence length (default 32768; 8192 with --quick)")
    g.add_argument("--kernel-batch", type=int, default=4)
    g.add_argument("--kernel-heads", type=int, default=8)
    g.add_argument("--kernel-dhead", type=int, default=64)
    g.add_argument("--kernel-window", type=int, default=128)
    g.add_argument("--kernel-backend", default="flex", choices=["flex", "flash", "auto", "blocked"],
                   help="SWA path timed against SDPA (default flex)")
    g.add_argument("--kernel-device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu: run the kernel section on CPU in float32 (a smoke test; blocked SWA)")
    g.add_argument("--recurrent", action="store_true",
                   help="also time the recurrent mixers' kernels (torch chunked vs fla where installed)")
    g.add_argument("--recurrent-T", type=int, default=None, help="their length (default min(kernel T, 8192))")
    g.add_argument("--no-swa", action="store_true", help="skip the SWA-vs-SDPA timing (with --recurrent: those only)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 10)
    if args.threads:
        torch.set_num_threads(args.threads)

    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpu_count": os.cpu_count(), "torch": torch.__version__},
              "command": " ".join(["python", "benchmarks/bench_attention.py",
                                   *(argv if argv is not None else sys.argv[1:])])}
    result["cpu"] = None
    if not args.no_cpu:
        cpu = cpu_section(T=args.T, d_model=128, n_heads=4, window=64, warmup=args.warmup,
                          repeats=repeats, eager=True)
        result["cpu"] = cpu
        print_table("CPU: one attention layer, forward + backward", cpu, "swa-blocked")
        target = cpu["full_over_swa"] >= 3.0
        print(f"target SWA >= 3x faster than full: {'met' if target else 'NOT met'}")

    kdev = args.kernel_device
    run_kernels = not args.no_gpu and (kdev == "cpu" or torch.cuda.is_available())
    result["gpu"] = result["kernel"] = result["recurrent"] = None
    kT = args.kernel_T or (8192 if args.quick else 32768)
    if run_kernels and not args.no_swa:
        sec = gpu_section(T=kT, B=args.kernel_batch, H=args.kernel_heads, D=args.kernel_dhead,
                          window=args.kernel_window, warmup=max(args.warmup, 1 if kdev == "cpu" else 3),
                          repeats=repeats, device=kdev, backend=args.kernel_backend)
        result["kernel"] = sec
        if kdev == "cuda":
            result["gpu"] = sec
        print_table(f"{'GPU' if kdev == 'cuda' else 'CPU (smoke)'}: raw kernels, forward + backward",
                    sec, sec["swa_path"])
    if run_kernels and args.recurrent:
        rec = recurrent_section(T=args.recurrent_T or min(kT, 8192), B=args.kernel_batch, H=args.kernel_heads,
                                D=args.kernel_dhead, warmup=max(args.warmup, 1), repeats=repeats, device=kdev)
        result["recurrent"] = rec
        print(f"\nrecurrent kernels ({rec['settings']['pass']})  {rec['settings']}")
        for name, t in rec["timings"].items():
            print(f"{name:<14}{t['median_ms']:>12.2f} ms")
        if "torch_over_fla" in rec:
            print("torch chunked / fla: " + ", ".join(f"{k} {v:.2f}x" for k, v in rec["torch_over_fla"].items()))
    if not run_kernels:
        print("\nGPU section skipped: " + ("--no-gpu" if args.no_gpu else "CUDA not available"))

    print()
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
