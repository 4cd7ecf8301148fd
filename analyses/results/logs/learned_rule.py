"""The "learned at 1x" step of analyses/nope.py under both rules (``every``: training NIAH >= 0.9
at every later evaluation; ``mean``: >= 0.9 there and on average from then on) and the first
evaluation >= 0.9, per (seed, arm), from an output folder's training.csv:
``python analyses/results/logs/learned_rule.py OUT_DIR [OUT_DIR ...]``. Used for the RESULTS.md
NoPE tables."""

import importlib.util
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
spec = importlib.util.spec_from_file_location("nope_for_rules", ROOT / "analyses" / "nope.py")
nope = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nope)

for out in sys.argv[1:]:
    t = pd.read_csv(Path(out) / "training.csv")
    print(out)
    for (seed, arm), g in t.groupby(["seed", "pos_F"]):
        budget = int(g["step"].max())
        cells = []
        for name, step in (("first >= 0.9", nope.first_step(g.sort_values("step"), 0.9)),
                           ("every", nope.learned_step(g, 0.9, "every")), ("mean", nope.learned_step(g, 0.9, "mean"))):
            cells.append(f"{name}: " + ("never" if step is None else f"{step} ({step / budget:.0%})"))
        print(f"  seed {seed} {arm}: " + "; ".join(cells) + f" | final {g.sort_values('step')['niah_acc'].iloc[-1]:.2f}")
