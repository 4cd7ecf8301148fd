"""The "learned" rule of analyses/nope.py (training NIAH >= threshold at every later evaluation)
at thresholds 0.9, 0.8 and 0.5, from an output folder's training.csv:
``python analyses/results/logs/learned_rule.py OUT_DIR``. Used for the RESULTS.md NoPE table."""

import pandas as pd, sys
t = pd.read_csv(sys.argv[1] + "/training.csv")
print(t.columns.tolist()[:12]) if len(sys.argv) > 2 else None
for (seed, arm), g in t.groupby(["seed", "pos_F"]):
    g = g.sort_values("step")
    out = []
    for thr in (0.9, 0.8, 0.5):
        ok = g["niah_acc"] >= thr
        # first step from which it stays >= thr
        step = None
        for i in range(len(g)):
            if ok.iloc[i:].all():
                step = int(g["step"].iloc[i]); break
        out.append(f">={thr}: {step}")
    print(seed, arm, "; ".join(out), "| final", g["niah_acc"].iloc[-1])
