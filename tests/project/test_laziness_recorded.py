"""The recorded laziness sweep (analyses/results/laziness.json, quoted in analyses/RESULTS.md and
the README) was made with exactly the settings that ``laziness.py --quick`` has now: a change of
the preset or of the quick mode must come with a new measurement."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import load_analysis

import retrieval_heads as rh

RECORD = Path(__file__).resolve().parents[2] / "analyses" / "results" / "laziness.json"


def test_quick_mode_equals_the_recorded_sweep():
    lazy = load_analysis("laziness")
    ap_args = lazy.build_parser().parse_args(["--quick"])
    mc, tc, windows, seeds, scan, max_steps, full_ref = lazy.build_configs(ap_args)
    rec = json.loads(RECORD.read_text())["quick"]
    assert rec["settings"]["model"] == mc.to_dict()
    # fields added since (lr_schedule, decay_fraction) take their defaults: the recorded run used them
    assert rh.TrainConfig.from_dict(rec["settings"]["train"]) == tc
    assert rec["settings"]["windows"] == list(windows) and rec["settings"]["seeds"] == list(seeds)
    assert rec["settings"]["scan"]["n_per_cell"] == scan["n_per_cell"]
    assert list(rec["settings"]["scan"]["depths"]) == list(scan["depths"])
    assert (rec["settings"]["full_reference_layout"] is not None) == full_ref
    # what the README and RESULTS.md claim about it
    form = [f for f in rec["formation"] if f["measure"] == "mass" and f["label"] != "full"]
    assert len(form) == 12 and all(f["formed"] for f in form)
    assert max(f["share_of_budget"] for f in form) <= 0.70
    assert rec["wall_s"] <= 15 * 60
