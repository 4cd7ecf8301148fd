"""Training throughput per layout: tokens/s of full training steps (forward, backward,
AdamW) for hybrids against an all-full-attention model of the same size, in one run.

How to run (CPU, ~1 min):
    python benchmarks/bench_train.py --quick
CPU target (issue 8): at T=4096, d_model=128, 4 heads, an SSSF model's step is >= 1.8x
faster than FFFF:
    python benchmarks/bench_train.py --layouts SSSF,FFFF --context-len 4096 --d-model 128 --n-heads 4
GPU (bf16 autocast; also reports model FLOP utilisation against --peak-tflops):
    python benchmarks/bench_train.py --device cuda --context-len 8192 --d-model 1024 --n-heads 16 \
        --layouts SSSF,FFFF --window 128 --batch-size 4 --peak-tflops 989

Prints a table and writes JSON (``--out``). Ratios are measured in the same process, so
they are comparable even on a shared, noisy machine; absolute numbers are not.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import retrieval_heads as rh


def model_flops_per_token(model: rh.HybridLM, T: int) -> float:
    """Training FLOPs per token: 6 N (weights) + attention score/value matmuls (fwd+bwd)."""
    cfg = model.cfg
    n = model.num_params(non_embedding=False)
    attn = 0.0
    for kind in cfg.layout:
        if kind == "F":
            attn += 6 * 2 * cfg.d_model * (T / 2)  # causal: on average T/2 keys per query
        elif kind == "S":
            attn += 6 * 2 * cfg.d_model * min(cfg.window, T)
        else:  # chunked recurrences: ~ intra-chunk matmuls + state updates
            attn += 6 * 2 * cfg.d_model * (cfg.chunk_size + cfg.d_head)
    return 6 * n + attn


def bench_layout(layout: str, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    cfg = rh.ModelConfig(layout=layout, d_model=args.d_model, n_heads=args.n_heads,
                         window=args.window, max_seq_len=max(args.context_len, 256),
                         chunk_size=args.chunk_size)
    model = rh.HybridLM(cfg).to(device)
    if args.compile:
        model = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    B, T = args.batch_size, args.context_len
    x = torch.randint(0, 256, (B, T + 1), device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step():
        with amp:
            logits = model(x[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    t = sorted(times)[len(times) // 2]  # median
    base = model._orig_mod if hasattr(model, "_orig_mod") else model
    fpt = model_flops_per_token(base, T)
    row = {"layout": layout, "step_s": t, "tokens_per_s": B * T / t,
           "params": base.num_params(non_embedding=False), "flops_per_token": fpt}
    if args.peak_tflops:
        row["mfu"] = fpt * B * T / t / (args.peak_tflops * 1e12)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layouts", default="SSSF,FFFF")
    p.add_argument("--context-len", type=int, default=4096)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadier on a shared machine)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak for MFU (H100 SXM: 989)")
    p.add_argument("--quick", action="store_true", help="T=1024, 2 iterations")
    p.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = p.parse_args(argv)
    if args.quick:
        args.context_len, args.iters = 1024, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [bench_layout(l.strip(), args, device) for l in args.layouts.split(",")]
    ref = next((r for r in rows if set(r["layout"]) == {"F"}), rows[-1])
    print(f"device={device} threads={torch.get_num_threads()} T={args.context_len} B={args.batch_size} d_model={args.d_model} "
          f"heads={args.n_heads} window={args.window} compile={args.compile}")
    print(f"{'layout':>10} {'step ms':>10} {'tokens/s':>12} {'speedup vs ' + ref['layout']:>16} {'MFU':>7}")
    for r in rows:
        r["speedup_vs_full"] = ref["step_s"] / r["step_s"]
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        print(f"{r['layout']:>10} {1e3 * r['step_s']:>10.1f} {r['tokens_per_s']:>12.0f} "
              f"{r['speedup_vs_full']:>16.2f} {mfu:>7}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "args": vars(args)}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
