"""Mechanism, by intervention: is long-range retrieval carried by full-attention heads?

1. Score every attention head (mass score by default) on needle prompts.
2. Ablate the top-k retrieval heads of the full-attention layers, and as controls k random
   full-attention heads, k random SWA heads and the top-k SWA heads; measure NIAH accuracy.
3. Restrict the receptive field of the full-attention layers (w') or of the efficient layers
   (w''); measure NIAH accuracy and held-out long-context loss.

How to run (CPU, a few minutes for the `tiny` preset)::

    python analyses/mechanism_ablation.py /work/tiny_run --k 2 --context-lens 256 --n 8
    python analyses/mechanism_ablation.py runs/x/step_002000 --full-windows 16,64 --efficient-windows 8,32

Writes ``ablation.csv``, ``receptive_field.csv``, ``scores.csv`` and ``summary.md`` to ``--out``.
All logic lives in ``retrieval_heads.interventions`` (``ablation_experiment``,
``receptive_field_experiment``), so other analyses can call it directly.

``analyses/mechanism.py`` is the fuller version of this analysis (zero and mean ablation, several
k, a random-head-of-any-kind control, long-context loss per head set, figures, results.json,
``--quick``/``--smoke``/full modes); its measured quick result is ``analyses/results/mechanism.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import retrieval_heads as rh
from retrieval_heads.cli.interventions_cmd import resolve_checkpoint
from retrieval_heads.interventions import (ablation_experiment, receptive_field_experiment,
                                           retrieval_head_scores, summarize, top_heads)


def ints(s):
    return [int(x) for x in s.split(",") if x.strip()] if s else []


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt", help="checkpoint folder, or a run folder (its last checkpoint)")
    ap.add_argument("--k", type=int, default=2, help="heads ablated per condition")
    ap.add_argument("--context-lens", default=None, help="NIAH lengths [default: training length]")
    ap.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9")
    ap.add_argument("--n", type=int, default=4, help="samples per (length, depth)")
    ap.add_argument("--metric", default="mass", choices=["mass", "copy"])
    ap.add_argument("--method", default="zero", choices=["zero", "mean"])
    ap.add_argument("--n-random", type=int, default=3)
    ap.add_argument("--full-windows", default="", help="w' values for the full-attention layers")
    ap.add_argument("--efficient-windows", default="", help="w'' values for the SWA/recurrent layers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="out/mechanism_ablation")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.time()
    ck = resolve_checkpoint(a.ckpt)
    model = rh.load_checkpoint(ck)
    tl = rh.eval.train_len(model) or 512
    lens = ints(a.context_lens) or [tl]
    depths = [float(x) for x in a.depths.split(",")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"checkpoint {ck}: step {model.checkpoint['step']}, {model.cfg.describe()}, train length {tl}")

    batch = rh.tasks.niah_batch(n=16, context_len=max(lens), seed=a.seed + 7919)
    scores = retrieval_head_scores(model, batch, method=a.metric)
    rows = [{"layer": l, "head": h, "layer_type": model.cfg.layer_kind(l), "score": float(scores[l, h])}
            for l in model.cfg.attention_layers for h in range(model.cfg.n_heads)]
    import pandas as pd

    pd.DataFrame(rows).to_csv(out / "scores.csv", index=False)
    print(f"{a.metric} scores (rows = layers):\n{scores.numpy().round(3)}")
    print(f"top-{a.k} overall: {top_heads(scores, a.k)}; top-{a.k} F: {top_heads(scores, a.k, model, 'F')}")

    abl = ablation_experiment(model, k=a.k, scores=scores, method=a.method, context_lens=lens, depths=depths,
                              n=a.n, seed=a.seed, n_random=a.n_random)
    abl.to_csv(out / "ablation.csv", index=False)
    summ = summarize(abl)
    print(summ.to_string(index=False, float_format=lambda v: f"{v:.3f}"))

    md = [f"# Mechanism ablation: {ck}", "",
          f"step {model.checkpoint['step']}, {model.cfg.describe()}; NIAH single_1, lengths {lens}, "
          f"depths {depths}, {a.n} per cell; {a.method} ablation of k={a.k} heads ranked by {a.metric}.", "",
          "```", summ.to_string(index=False, float_format=lambda v: f"{v:.3f}"), "```"]
    if a.full_windows or a.efficient_windows:
        rf = receptive_field_experiment(model, full=ints(a.full_windows), efficient=ints(a.efficient_windows),
                                        context_lens=lens, depths=depths, n=a.n, seed=a.seed)
        rf.to_csv(out / "receptive_field.csv", index=False)
        print(rf.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        md += ["", "## Receptive-field constraints", "", "```",
               rf.to_string(index=False, float_format=lambda v: f"{v:.3f}"), "```"]
    (out / "summary.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
