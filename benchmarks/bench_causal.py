"""Cost of the causal scores (issue 16): added time per checkpoint of a scan, as a ratio to the
attention scores alone, and attribution vs exact ablation on ``tests/fixtures/tiny_deep``
(Spearman rank correlation and time ratio). Every ratio is measured within one run of this
script, so machine load affects both sides alike; the load average is printed.

    OMP_NUM_THREADS=1 python benchmarks/bench_causal.py                       # micro_run + tiny_deep
    OMP_NUM_THREADS=1 python benchmarks/bench_causal.py --run runs/x --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import retrieval_heads as rh
from retrieval_heads.detect.causal import causal_scores
from retrieval_heads.detect.scores import HeadScores, score_heads
from retrieval_heads.pipeline.scanner import ScanSettings, _resolve_context_lens
from retrieval_heads.stats import spearman
from retrieval_heads.storage.checkpoint import read_meta

ROOT = Path(__file__).resolve().parents[1]


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def scan_costs(run: Path, repeats: int) -> list[dict]:
    """Per checkpoint: seconds of the attention scores (score_heads over the scan's needle set,
    as ``scan`` does) and of the causal scores (exact + estimates; estimates only)."""
    out = []
    for ck in rh.list_checkpoints(run):
        model = rh.load_checkpoint(ck)
        settings = _resolve_context_lens(ScanSettings(), read_meta(ck))
        batches = settings.batches()
        t_att = _best(lambda m=model, bs=batches: HeadScores.merge([score_heads(m, b) for b in bs]), repeats)
        t_all = _best(lambda m=model, bs=batches: causal_scores(m, bs), repeats)
        t_est = _best(lambda m=model, bs=batches: causal_scores(m, bs, exact=False), repeats)
        t_atp = _best(lambda m=model, bs=batches: causal_scores(m, bs, exact=False, ig_steps=0), repeats)
        out.append({"checkpoint": ck.name, "attention_s": t_att, "causal_s": t_all, "estimates_s": t_est,
                    "attribution_only_s": t_atp, "ratio_causal": t_all / t_att, "ratio_estimates": t_est / t_att,
                    "ratio_attribution_only": t_atp / t_att})
        r = out[-1]
        print(f"  {ck.name}: attention {t_att:.2f} s; +causal (all) {t_all:.2f} s = {r['ratio_causal']:.2f}x; "
              f"estimates only {t_est:.2f} s = {r['ratio_estimates']:.2f}x; attribution only {t_atp:.2f} s = "
              f"{r['ratio_attribution_only']:.2f}x", flush=True)
    return out


def fixture_agreement(n: int, repeats: int) -> dict:
    """Attribution estimates vs exact ablation on tiny_deep (n needle prompts of 160 tokens)."""
    model = rh.load_checkpoint(ROOT / "tests/fixtures/tiny_deep/step_001600")
    batch = rh.tasks.niah_batch(n=n, context_len=160, seed=7919)
    res = causal_scores(model, batch)
    exact = res.scores("ablation").flatten().numpy()
    out = {"n": n}
    for m in ("attribution", "attribution_ig"):
        rho, _ = spearman(res.scores(m).flatten().numpy(), exact)
        rho_f, _ = spearman(res.scores(m)[5].numpy(), res.scores("ablation")[5].numpy())
        out[m] = {"spearman_all_48": rho, "spearman_F_8": rho_f}
    t_exact = _best(lambda: causal_scores(model, batch, ig_steps=0), repeats)
    t_atp = _best(lambda: causal_scores(model, batch, exact=False, ig_steps=0), repeats)
    t_ig = _best(lambda: causal_scores(model, batch, exact=False), repeats)
    out.update(exact_s=t_exact, attribution_s=t_atp, attribution_ig_s=t_ig,
               attribution_time_ratio=t_atp / t_exact, attribution_ig_time_ratio=t_ig / t_exact)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(ROOT / "tests/fixtures/micro_run"), help="Run folder to time the scan on.")
    ap.add_argument("--repeats", type=int, default=2, help="Best of N timings.")
    ap.add_argument("--n", type=int, default=16, help="Needle prompts for the tiny_deep comparison.")
    ap.add_argument("--out", default=None, help="Write the results as JSON here.")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; threads {torch.get_num_threads()}; "
          f"cpus {os.cpu_count()}")
    print(f"scan of {args.run} (per checkpoint, best of {args.repeats}):")
    scan = scan_costs(Path(args.run), args.repeats)
    mean = {k: sum(r[k] for r in scan) / len(scan) for k in ("ratio_causal", "ratio_estimates",
                                                             "ratio_attribution_only")}
    print("mean ratio to the attention scores: " + ", ".join(f"{k} {v:.2f}x" for k, v in mean.items()))
    agree = fixture_agreement(args.n, args.repeats)
    print(f"tiny_deep ({agree['n']} prompts of 160 tokens): exact {agree['exact_s']:.2f} s; "
          f"attribution {agree['attribution_s']:.2f} s ({agree['attribution_time_ratio']:.3f}x), Spearman "
          f"{agree['attribution']['spearman_all_48']:.2f} (48 heads) / {agree['attribution']['spearman_F_8']:.2f} "
          f"(F layer); attribution_ig {agree['attribution_ig_s']:.2f} s ({agree['attribution_ig_time_ratio']:.3f}x), "
          f"Spearman {agree['attribution_ig']['spearman_all_48']:.2f} / {agree['attribution_ig']['spearman_F_8']:.2f}")
    load_end = os.getloadavg()
    print(f"load average at the end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"load": load, "load_end": load_end, "run": args.run, "scan": scan,
                                              "mean": mean, "tiny_deep": agree}, indent=2))


if __name__ == "__main__":
    main()
