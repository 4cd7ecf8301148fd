"""The "learned" rule of analyses/nope.py (training NIAH >= threshold at every later evaluation)
at thresholds 0.9, 0.8 and 0.5, from an output folder's training.csv:
``python analyses/results/logs/learned_rule.py OUT_DIR``. Used for the RESULTS.md NoPE table."""

import sys

import pandas as pd


def stays_from(g: pd.DataFrame, thr: float):
    """First step from which NIAH accuracy stays >= thr to the end, or None."""
    ok = (g["niah_acc"] >= thr).tolist()
    for i in range(len(ok)):
        if all(ok[i:]):
            return int(g["step"].iloc[i])
    return None


t = pd.read_csv(sys.argv[1] + "/training.csv")
for (seed, arm), g in t.groupby(["seed", "pos_F"]):
    g = g.sort_values("step")
    rules = "; ".join(f">={thr}: {stays_from(g, thr)}" for thr in (0.9, 0.8, 0.5))
    print(seed, arm, rules, "| final", g["niah_acc"].iloc[-1])
