"""Formation per measure, with censoring (``detect.formation.formation_by_measure``): hand-made
score tables with known answers, the run-level dict, threshold checks, and a scan of the
micro run writing ``formation_measures.parquet`` and formation.json's "measures"."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

import retrieval_heads as rh
from retrieval_heads.detect.formation import (
    DEFAULT_THRESHOLDS,
    MEASURE_COLUMNS,
    check_thresholds,
    formation_by_measure,
    formation_table,
    measure_thresholds,
    run_formation,
    run_formation_by_measure,
)

NAN = math.nan
STEPS = [0, 10, 20, 30]
TOKENS = [0, 1000, 2000, 3000]


def table(series: dict) -> pd.DataFrame:
    """{(metric, layer, head, layer_type): 4 values over STEPS} -> a tidy scores table."""
    rows = [(s, t, l, h, lt, m, v) for (m, l, h, lt), vals in series.items()
            for s, t, v in zip(STEPS, TOKENS, vals)]
    return pd.DataFrame(rows, columns=["step", "tokens_seen", "layer", "head", "layer_type", "metric", "value"])


SCORES = table({
    # mass (threshold 0.5)
    ("mass", 1, 0, "F"): [0.1, 0.6, 0.7, 0.8],   # forms at step 10
    ("mass", 1, 1, "F"): [0.6, 0.7, 0.8, 0.4],   # dips below at the end: censored at 30
    ("mass", 0, 0, "S"): [NAN, 0.9, NAN, 0.9],   # NaN counts as below: forms at the last step only
    ("mass", 0, 1, "S"): [0.5, 0.5, 0.5, 0.5],   # exactly the threshold counts (>=): forms at 0
    # copy_tf (threshold 0.1): two F heads form at the same step; the higher final value is first
    ("copy_tf", 1, 0, "F"): [0.0, 0.2, 0.3, 0.3],
    ("copy_tf", 1, 1, "F"): [0.0, 0.2, 0.3, 0.9],
    ("copy_tf", 0, 0, "S"): [0.0, 0.0, 0.0, 0.0],
    ("copy_tf", 0, 1, "S"): [0.0, 0.0, 0.0, 0.0],
    # copy (NaN where no sample was answered correctly): forms at the last step at 0.1, never at 0.25
    ("copy", 1, 0, "F"): [NAN, NAN, 0.05, 0.2],
    ("copy", 1, 1, "F"): [NAN, NAN, NAN, NAN],
    ("copy", 0, 0, "S"): [0.0, 0.0, 0.0, 0.0],
    ("copy", 0, 1, "S"): [0.0, 0.0, 0.0, 0.0],
})


def row(f: pd.DataFrame, measure: str, layer: int, head: int) -> dict:
    r = f[(f.measure == measure) & (f.layer == layer) & (f["head"] == head)]
    assert len(r) == 1
    return r.iloc[0].to_dict()


def same(a, b) -> bool:
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b


def test_formation_by_measure_known_answers():
    f = formation_by_measure(SCORES, thresholds={"mass": 0.5, "copy_tf": 0.1, "copy": 0.25})
    assert list(f.columns) == MEASURE_COLUMNS
    assert len(f) == 12 and list(dict.fromkeys(f.measure)) == ["mass", "copy_tf", "copy"]
    assert str(f.dtypes["formed"]) == "bool" and all(f.dtypes[c] == "float64" for c in MEASURE_COLUMNS[6:])
    want = {  # (formed, formation_step, formation_tokens, censored_at_step, censored_at_tokens, final, max)
        ("mass", 1, 0): (True, 10.0, 1000.0, NAN, NAN, 0.8, 0.8),
        ("mass", 1, 1): (False, NAN, NAN, 30.0, 3000.0, 0.4, 0.8),
        ("mass", 0, 0): (True, 30.0, 3000.0, NAN, NAN, 0.9, 0.9),
        ("mass", 0, 1): (True, 0.0, 0.0, NAN, NAN, 0.5, 0.5),
        ("copy_tf", 1, 0): (True, 10.0, 1000.0, NAN, NAN, 0.3, 0.3),
        ("copy_tf", 1, 1): (True, 10.0, 1000.0, NAN, NAN, 0.9, 0.9),
        ("copy_tf", 0, 0): (False, NAN, NAN, 30.0, 3000.0, 0.0, 0.0),
        ("copy", 1, 0): (False, NAN, NAN, 30.0, 3000.0, 0.2, 0.2),  # 0.2 < 0.25
        ("copy", 1, 1): (False, NAN, NAN, 30.0, 3000.0, NAN, NAN),  # all NaN
    }
    cols = ["formed", "formation_step", "formation_tokens", "censored_at_step", "censored_at_tokens",
            "final_value", "max_value"]
    for (m, l, h), w in want.items():
        r = row(f, m, l, h)
        got = tuple(r[c] for c in cols)
        assert all(same(a, b) for a, b in zip(got, w)), f"{m} L{l}H{h}: {got} != {w}"
    assert (f[f.formed].censored_at_step.isna().all() and f[~f.formed].formation_step.isna().all()
            and f[~f.formed].censored_at_tokens.eq(3000.0).all())
    assert dict(zip(f.measure, f.threshold)) == {"mass": 0.5, "copy_tf": 0.1, "copy": 0.25}
    assert set(zip(f.layer, f["head"], f.layer_type)) == {(1, 0, "F"), (1, 1, "F"), (0, 0, "S"), (0, 1, "S")}


def test_defaults_and_copy_agree_with_formation_table():
    f = formation_by_measure(SCORES)  # DEFAULT_THRESHOLDS
    assert DEFAULT_THRESHOLDS == {"mass": 0.5, "copy_tf": 0.1, "copy": 0.1}
    assert dict(zip(f.measure, f.threshold)) == DEFAULT_THRESHOLDS
    assert row(f, "copy", 1, 0)["formed"] and row(f, "copy", 1, 0)["formation_step"] == 30.0
    # the copy rows say what formation_table (formation.parquet) says
    old = formation_table(SCORES, threshold=0.1, metric="copy")
    new = f[f.measure == "copy"].reset_index(drop=True)
    for c in ("layer", "head", "layer_type", "threshold", "formed", "formation_step", "formation_tokens",
              "final_value", "max_value"):
        assert all(same(a, b) for a, b in zip(old[c].tolist(), new[c].tolist())), c
    assert run_formation(old)["step"] == run_formation_by_measure(f)["copy"]["step"] == 30


def test_run_level_dict():
    f = formation_by_measure(SCORES, thresholds={"mass": 0.5, "copy_tf": 0.1, "copy": 0.25})
    run = run_formation_by_measure(f)
    keys = {"formed", "step", "tokens_seen", "layer", "head", "censored_at_step", "censored_at_tokens"}
    assert list(run) == ["mass", "copy_tf", "copy"] and all(set(d) == keys for d in run.values())
    assert run["mass"] == {"formed": True, "step": 10, "tokens_seen": 1000, "layer": 1, "head": 0,
                           "censored_at_step": None, "censored_at_tokens": None}
    assert run["copy_tf"]["head"] == 1  # same step as head 0, higher final value
    # nothing formed: no made-up step, censored at the last scanned checkpoint
    assert run["copy"] == {"formed": False, "step": None, "tokens_seen": None, "layer": None, "head": None,
                           "censored_at_step": 30, "censored_at_tokens": 3000}
    assert all(type(v) is int for d in run.values() for v in d.values() if v is not None and not isinstance(v, bool))
    # other layer types; a measure without rows; a layer type without heads
    s = run_formation_by_measure(f, "S")
    assert s["mass"]["step"] == 0 and s["mass"]["head"] == 1 and not s["copy_tf"]["formed"]
    assert s["copy_tf"]["censored_at_step"] == 30
    extra = run_formation_by_measure(f, measures=["mass", "entropy_norm"])
    assert list(extra) == ["mass", "entropy_norm"]
    assert extra["entropy_norm"] == {"formed": False, "step": None, "tokens_seen": None, "layer": None,
                                     "head": None, "censored_at_step": None, "censored_at_tokens": None}
    assert run_formation_by_measure(f, "M")["mass"]["censored_at_step"] is None
    assert json.loads(json.dumps(run)) == run  # JSON-ready


def test_a_run_where_nothing_forms():
    scores = table({("mass", 0, h, "F"): [0.1, NAN, 0.2, 0.3] for h in range(3)})
    f = formation_by_measure(scores, thresholds={"mass": 0.5, "copy": 0.1})  # no copy rows: none here
    assert list(f.measure.unique()) == ["mass"] and not f.formed.any()
    assert f.censored_at_step.eq(30.0).all() and f.censored_at_tokens.eq(3000.0).all()
    assert f.formation_step.isna().all() and f.formation_tokens.isna().all()
    assert run_formation_by_measure(f)["mass"] == {"formed": False, "step": None, "tokens_seen": None,
                                                   "layer": None, "head": None, "censored_at_step": 30,
                                                   "censored_at_tokens": 3000}
    empty = formation_by_measure(scores.iloc[:0])
    assert list(empty.columns) == MEASURE_COLUMNS and empty.empty


@pytest.mark.parametrize("bad, match", [
    ({"mass": 1.5}, r"thresholds: mass must be a number in \[0, 1\], got 1.5"),
    ({"copy_tf": -0.1}, "copy_tf must be a number in"),
    ({"copy": NAN}, "copy must be a number in"),
    ({"mass": True}, "mass must be a number in"),
    ({"mass": "0.5"}, "mass must be a number in"),
    ({"entropy": 0.1}, "unknown measure 'entropy'"),  # lower is retrieval: no formation
    ({"bogus": 0.1}, "unknown measure 'bogus'"),
    ({}, "non-empty"),
    ([0.5], "non-empty"),
])
def test_threshold_validation(bad, match):
    with pytest.raises(ValueError, match=match) as e:
        check_thresholds(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=match):
        formation_by_measure(SCORES, thresholds=bad)


def test_measure_thresholds_over_the_defaults():
    assert measure_thresholds() == DEFAULT_THRESHOLDS and measure_thresholds() is not DEFAULT_THRESHOLDS
    assert measure_thresholds({"mass": 0, "copy": 1}) == {"mass": 0.0, "copy_tf": 0.1, "copy": 1.0}


@pytest.fixture
def run(tmp_path):
    return shutil.copytree(Path(__file__).parents[1] / "fixtures" / "micro_run", tmp_path / "run")


def test_scan_writes_formation_measures(run):
    """A scan of the micro run (F and S layers scored, 6 checkpoints) writes one row per
    (measure, head) for every measure, formation.json's "measures" and the thresholds in
    scan.json. It never answers a needle, so copy (correct answers only) is NaN throughout and
    censored, while copy_tf and mass exist and, with low thresholds, form."""
    th = {"mass": 0.02, "copy_tf": 0.02, "copy": 0.02}
    kw = dict(context_lens=(144,), depths=(0.5,), n_per_cell=1, progress=False, report=False)
    df = rh.scan(run, thresholds=th, **kw)
    d = run / "scan"
    fm = pd.read_parquet(d / "formation_measures.parquet")
    assert list(fm.columns) == MEASURE_COLUMNS
    heads = df[df.metric == "mass"][["layer", "head"]].drop_duplicates()
    assert list(dict.fromkeys(fm.measure)) == ["mass", "copy_tf", "copy"] and len(fm) == 3 * len(heads) == 12
    assert dict(zip(fm.measure, fm.threshold)) == th
    assert fm.equals(formation_by_measure(pd.read_parquet(d / "scores.parquet"), th).astype(fm.dtypes))
    form = json.loads((d / "formation.json").read_text())
    assert set(form["measures"]) == {"mass", "copy_tf", "copy"}
    assert {m: v["threshold"] for m, v in form["measures"].items()} == th
    for m, v in form["measures"].items():
        assert {k: v[k] for k in v if k != "threshold"} == df.attrs["scan"]["formation_measures"][m]
    copy = form["measures"]["copy"]
    assert df[df.metric == "copy"].value.isna().all()
    assert copy["formed"] is False and copy["step"] is None and copy["censored_at_step"] == 1000
    assert form["measures"]["copy_tf"]["formed"] and form["measures"]["copy_tf"]["layer"] == 2
    assert form["measures"]["mass"]["formed"] and form["measures"]["mass"]["censored_at_step"] is None
    assert form["run"]["step"] is None  # formation.parquet / "run" (copy, threshold 0.1) as before
    assert json.loads((d / "scan.json").read_text())["thresholds"] == th
    # other thresholds: the cached scores are reused and the table is rewritten with them
    again = rh.scan(run, **kw)
    assert again.attrs["scan"]["n_cached"] == 6 and not again.attrs["scan"]["unchanged"]
    fm2 = pd.read_parquet(d / "formation_measures.parquet")
    assert dict(zip(fm2.measure, fm2.threshold)) == DEFAULT_THRESHOLDS
    assert json.loads((d / "scan.json").read_text())["thresholds"] == DEFAULT_THRESHOLDS
    assert rh.scan(run, **kw).attrs["scan"]["unchanged"]


def test_scan_rejects_bad_thresholds_before_writing(run):
    with pytest.raises(ValueError, match="unknown measure 'copy_ft'"):
        rh.scan(run, thresholds={"copy_ft": 0.1}, progress=False, report=False)
    with pytest.raises(ValueError, match=r"mass must be a number in \[0, 1\]"):
        rh.scan(run, thresholds={"mass": 2}, progress=False, report=False)
    assert not (run / "scan").exists()
