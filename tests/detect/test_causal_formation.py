"""Formation by a causal measure (``ablation``, nats) beside the attention measures, on
hand-made score tables (``detect.formation.formation_by_measure``)."""

import math

import pandas as pd
import pytest

from retrieval_heads.detect.formation import check_thresholds, formation_by_measure, measure_thresholds, \
    run_formation_by_measure


def _table(values: dict) -> pd.DataFrame:
    """{(metric, layer, head): [value per step]} over steps 0, 10, 20, 30 -> a tidy scores table."""
    rows = []
    for (metric, layer, head), vs in values.items():
        for i, v in enumerate(vs):
            rows.append((10 * i, 100 * i, layer, head, "F" if layer == 1 else "S", metric, v))
    return pd.DataFrame(rows, columns=["step", "tokens_seen", "layer", "head", "layer_type", "metric", "value"])


def test_causal_formation_is_the_step_from_which_the_ablation_effect_stays_above_threshold():
    df = _table({("mass", 1, 0): [0.0, 0.6, 0.7, 0.9],      # attention forms at 10
                 ("ablation", 1, 0): [0.0, 0.2, 1.5, 3.0],  # matters from 20 on
                 ("mass", 1, 1): [0.0, 0.8, 0.9, 0.9],      # looks from 10 on ...
                 ("ablation", 1, 1): [0.0, 2.0, 0.3, 0.1],  # ... mattered once, not at the end: censored
                 ("ablation", 0, 0): [0.0, 1.2, 1.1, 1.3]})  # an S head that matters from 10
    th = measure_thresholds(causal=True)
    assert th["ablation"] == 1.0 and th["mass"] == 0.5
    f = formation_by_measure(df, th).set_index(["measure", "layer", "head"])
    assert f.loc[("ablation", 1, 0), "formation_step"] == 20.0
    assert f.loc[("mass", 1, 0), "formation_step"] == 10.0
    assert not f.loc[("ablation", 1, 1), "formed"] and f.loc[("ablation", 1, 1), "censored_at_step"] == 30.0
    assert math.isnan(f.loc[("ablation", 1, 1), "formation_step"])
    assert f.loc[("ablation", 0, 0), "formation_step"] == 10.0
    run = run_formation_by_measure(formation_by_measure(df, th), "F", measures=list(th))
    assert run["ablation"]["step"] == 20 and (run["ablation"]["layer"], run["ablation"]["head"]) == (1, 0)
    assert run["mass"]["step"] == 10
    assert run["copy"]["formed"] is False and run["copy"]["censored_at_step"] is None  # no copy rows at all


def test_causal_thresholds_are_nats_not_fractions():
    assert check_thresholds({"ablation": 2.5}) == {"ablation": 2.5}
    with pytest.raises(ValueError, match="ablation \\(nats\\) must be a number >= 0"):
        check_thresholds({"ablation": -1})
    with pytest.raises(ValueError, match="mass must be a number in \\[0, 1\\]"):
        check_thresholds({"mass": 2.5})
    assert "ablation" not in measure_thresholds()  # scans without causal scores keep their measures
