"""Detection memory on a 7B-sized HF hybrid at long context: our O(T) rows vs output_attentions.

Builds a random model with the geometry of a released 7B hybrid (default: Olmo 3 7B, 3 sliding
layers of window 4096 : 1 full layer, 32 layers, d_model 4096, bf16) directly on the GPU, then
at ``--context`` tokens (default 32768) measures peak GPU memory of

1. ``HFModel.prefill_rows`` (one SDPA forward, rows only at the query) -> the ``mass`` score;
2. ``HFModel.decode_rows`` (greedy decoding with the HF cache, one row per step) -> ``copy``;
3. the same forward with ``output_attentions=True`` (eager), which needs a T x T pattern per
   layer and is expected to run out of memory.

    python benchmarks/bench_hf_long_context.py                       # GPU, ~2 minutes
    python benchmarks/bench_hf_long_context.py --layers 2 --d-model 256 --context 4096 --device cpu
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def build(args):
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(num_hidden_layers=args.layers, hidden_size=args.d_model, intermediate_size=args.d_mlp,
              num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
              max_position_embeddings=max(65536, args.context + 64), pad_token_id=0, bos_token_id=1,
              eos_token_id=2)
    if args.model_type in ("olmo3", "gemma3_text"):
        kw.update(sliding_window=args.window,
                  layer_types=[("full_attention" if (i + 1) % 4 == 0 else "sliding_attention")
                               for i in range(args.layers)])
    cfg = AutoConfig.for_model(args.model_type, **kw)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, args.dtype), attn_implementation="sdpa")
    return model.eval()


def peak(fn, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return out, time.perf_counter() - t, (torch.cuda.max_memory_allocated() - base) / 2**30
    return out, time.perf_counter() - t, float("nan")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-type", default="olmo3")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--d-model", type=int, default=4096)
    p.add_argument("--d-mlp", type=int, default=11008)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=32)
    p.add_argument("--vocab", type=int, default=100278)
    p.add_argument("--window", type=int, default=4096)
    p.add_argument("--context", type=int, default=32768)
    p.add_argument("--decode-steps", type=int, default=8)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-eager", action="store_true")
    args = p.parse_args(argv)

    from retrieval_heads.hf.model import HFModel

    torch.manual_seed(0)
    t = time.perf_counter()
    hf = build(args)
    n_params = sum(x.numel() for x in hf.parameters())
    model = HFModel(hf)
    res = {"model": model.spec.describe().splitlines()[0], "params_B": round(n_params / 1e9, 2),
           "context": args.context, "device": torch.cuda.get_device_name() if args.device.startswith("cuda")
           else "cpu", "build_s": round(time.perf_counter() - t, 1)}
    if args.device.startswith("cuda"):
        res["weights_GiB"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    T = args.context
    x = torch.randint(3, args.vocab, (1, T), device=args.device)
    rows, dt, mem = peak(lambda: model.prefill_rows(x, [T - 1]), args.device)
    res["prefill_rows"] = {"s": round(dt, 2), "peak_GiB_over_weights": round(mem, 2),
                           "rows_per_layer": list(rows[len(rows) - 1].shape) if rows else None}
    full = max(model.cfg.attention_layers)
    res["row_sums"] = round(float(rows[full].sum(-1).mean()), 4)
    del rows
    dec, dt, mem = peak(lambda: model.decode_rows(x, args.decode_steps, stop_token=None,
                                                  reduce=lambda i, l, r: r.argmax(-1)), args.device)
    res["decode_rows"] = {"steps": dec.n_steps, "s": round(dt, 2), "peak_GiB_over_weights": round(mem, 2)}
    del dec
    pattern_gib = args.heads * T * T * 2 / 2**30
    res["one_layer_pattern_GiB_bf16"] = round(pattern_gib, 1)
    if not args.skip_eager:
        model.detach()
        hf.set_attn_implementation("eager")
        try:
            _, dt, mem = peak(lambda: hf(x, output_attentions=True, logits_to_keep=1), args.device)
            res["eager_output_attentions"] = {"s": round(dt, 2), "peak_GiB_over_weights": round(mem, 2)}
        except torch.OutOfMemoryError as e:
            res["eager_output_attentions"] = f"OutOfMemoryError: {str(e).splitlines()[0][:160]}"
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
