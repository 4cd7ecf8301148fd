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

MFU of a preset's model (layout, sizes, window, positions from the preset; context length
and batch size from its train section unless given): ``--peak-tflops auto`` picks the card's
dense bf16 peak from its name (H100 SXM / H200: 989; H100 PCIe: 756; A100: 312)::

    python benchmarks/bench_train.py --device cuda --preset gpu-base --batch-size 8 --peak-tflops auto

Prints a table and writes JSON (``--out`` / ``--json``). Ratios are measured in the same
process, so they are comparable even on a shared, noisy machine; absolute numbers are not.
"""

from __future__ import annotations

import argparse
import gc
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


# dense bf16 tensor-core peaks (TFLOP/s, no sparsity), matched in order against the device name
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0),
                    ("GH200", 989.0), ("A100", 312.0)]


def peak_tflops_for(name: str) -> float | None:
    """Dense bf16 peak of a card from ``torch.cuda.get_device_name``; None when unknown."""
    for key, peak in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return None


def _resolve_peak(value, device: torch.device) -> float | None:
    if value is None:
        return None
    if str(value).lower() == "auto":
        return peak_tflops_for(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    return float(value)


def model_config(layout: str, args) -> rh.ModelConfig:
    """The benchmarked model: the preset's config (if any) with the explicit options on top."""
    base = dict(args.preset_model) if args.preset_model else {}
    base.update(layout=layout, max_seq_len=max(args.context_len, 256, base.get("max_seq_len", 0)))
    for name in ("d_model", "n_heads", "window", "chunk_size", "attn_backend", "recurrent_backend"):
        if getattr(args, name) is not None:
            base[name] = getattr(args, name)
    base.pop("n_layers", None)
    return rh.ModelConfig.from_dict(base)


def bench_layout(layout: str, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    cfg = model_config(layout, args)
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()  # free the previous layout's model before measuring this one
        torch.cuda.reset_peak_memory_stats(device)
    model = rh.HybridLM(cfg).to(device)
    if args.compile:
        model = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    B, T = args.batch_size, args.context_len
    x = torch.randint(0, 256, (B, T + 1), device=device)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
           else torch.autocast("cpu", enabled=False))

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
           "params": base.num_params(non_embedding=False), "flops_per_token": fpt,
           "model_tflops": fpt * B * T / t / 1e12,
           "d_model": cfg.d_model, "n_heads": cfg.n_heads, "window": cfg.window}
    if device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if args.peak_tflops:
        row["mfu"] = fpt * B * T / t / (args.peak_tflops * 1e12)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layouts", default=None,
                   help="comma-separated (default SSSF,FFFF; the preset's layout with --preset)")
    p.add_argument("--preset", default=None, help="take the model (and context length, batch size) from a preset")
    p.add_argument("--context-len", type=int, default=None, help="default 4096, or the preset's")
    p.add_argument("--d-model", type=int, default=None, help="default 128, or the preset's")
    p.add_argument("--n-heads", type=int, default=None, help="default 4, or the preset's")
    p.add_argument("--window", type=int, default=None, help="default 64, or the preset's")
    p.add_argument("--chunk-size", type=int, default=None, help="default 64, or the preset's")
    p.add_argument("--batch-size", type=int, default=None, help="default 1, or the preset's")
    p.add_argument("--attn-backend", default=None, help="ModelConfig.attn_backend (default auto)")
    p.add_argument("--recurrent-backend", default=None, help="ModelConfig.recurrent_backend (default auto)")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadier on a shared machine)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--peak-tflops", default=None,
                   help="bf16 dense peak for MFU, a number (H100 SXM: 989) or 'auto' (from the CUDA device name)")
    p.add_argument("--quick", action="store_true", help="T=1024, 2 iterations")
    p.add_argument("--out", "--json", dest="out", default="benchmarks/results/train_throughput.json")
    args = p.parse_args(argv)
    args.preset_model = None
    if args.preset:
        from retrieval_heads.train.presets import _preset_dir, load_preset

        mcfg, tcfg = load_preset(args.preset)  # validates; the raw fields keep derived ones (d_mlp, ...) open
        f = Path(args.preset) if args.preset.endswith(".json") else _preset_dir() / f"{args.preset}.json"
        args.preset_model = json.loads(f.read_text(encoding="utf-8")).get("model", {})
        args.layouts = args.layouts or mcfg.layout
        args.context_len = args.context_len or tcfg.context_len
        args.batch_size = args.batch_size or tcfg.batch_size
    args.layouts = args.layouts or "SSSF,FFFF"
    args.context_len = args.context_len or 4096
    args.batch_size = args.batch_size or 1
    if not args.preset:
        args.d_model = args.d_model or 128
        args.n_heads = args.n_heads or 4
        args.window = args.window or 64
        args.chunk_size = args.chunk_size or 64
    if args.quick:
        args.context_len, args.iters = 1024, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.peak_tflops = _resolve_peak(args.peak_tflops, device)
    rows = [bench_layout(l.strip(), args, device) for l in args.layouts.split(",")]
    ref = next((r for r in rows if set(r["layout"]) == {"F"}), rows[-1])
    print(f"device={device} threads={torch.get_num_threads()} T={args.context_len} B={args.batch_size} "
          f"d_model={rows[0]['d_model']} heads={rows[0]['n_heads']} window={rows[0]['window']} "
          f"compile={args.compile} preset={args.preset} peak_tflops={args.peak_tflops}")
    print(f"{'layout':>10} {'step ms':>10} {'tokens/s':>12} {'speedup vs ' + ref['layout']:>16} {'MFU':>7}")
    for r in rows:
        r["speedup_vs_full"] = ref["step_s"] / r["step_s"]
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        print(f"{r['layout']:>10} {1e3 * r['step_s']:>10.1f} {r['tokens_per_s']:>12.0f} "
              f"{r['speedup_vs_full']:>16.2f} {mfu:>7}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "args": {k: v for k, v in vars(args).items() if k != "preset_model"},
            "model": model_config(rows[0]["layout"], args).to_dict()}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
