"""Golden scan: the scan of a fixed small run equals stored tables (issue "One pipeline").

``tests/fixtures/micro_run/`` is a trained 3-layer run (S, M, F layers; 6 checkpoints) and
``tests/fixtures/scan_golden/`` holds the tables a scan of it wrote, with the settings in
``scan_golden/settings.json`` (explicit seed, depths, lengths, samples per cell, threshold).
Both come from ``tests/fixtures/make_scan_golden.py`` (see ``micro_run/README.md``). The test
scans a copy of the run through the public API (``rh.scan`` and the CLI ``main``) only, so
the scan code can move between modules without touching it, and compares:

* scores.parquet, niah.parquet, formation.parquet, checkpoints.parquet,
  formation_measures.parquet: the same columns in the same order, the same rows after a
  canonical sort, integers, booleans and strings exactly equal, floats within ``RTOL``/``ATOL`` (NaN equal to NaN);
* formation.json key by key (same rule for floats; ``null`` equal only to ``null``).

Nothing is ignored. Two values are *normalized* on both sides because they are absolute paths
of wherever the run was scanned (here: a pytest tmp_path): checkpoints.parquet's ``path``
column and formation.json's ``reference.path`` are compared by the checkpoint folder's name
(``step_000000``). The compared files hold no timestamps, durations or machine info. Not
compared: ``scan.json`` (the scan's cache state: the run path, no result beyond formation.json's),
``cache/`` (internal) and ``report.html`` (plotly output; ``--no-report``/``report=False``).
``weights_sha256`` is compared exactly: the run is copied bytewise.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import retrieval_heads as rh
from retrieval_heads.cli import main

FIXTURES = Path(__file__).parents[1] / "fixtures"
RUN = FIXTURES / "micro_run"
GOLDEN = FIXTURES / "scan_golden"
SETTINGS = json.loads((GOLDEN / "settings.json").read_text())["scan"]
# float tolerance: the tables are float64 summaries of float32 forward passes on CPU; a refactor
# that changes nothing computes bit-identical values, so this only absorbs BLAS/threading noise
RTOL, ATOL = 1e-6, 1e-7
# canonical row order (each key is unique within its table)
KEYS = {
    "scores.parquet": ["step", "layer", "head", "metric"],
    "niah.parquet": ["step", "context_len", "depth"],
    "formation.parquet": ["layer", "head", "metric"],
    "checkpoints.parquet": ["step"],
    "formation_measures.parquet": ["measure", "layer", "head"],
}


def cli_args(run, out) -> list[str]:
    """The same scan as ``rh.scan(run, out=out, **SETTINGS)``, as CLI options."""
    s = SETTINGS
    args = ["scan", str(run), "--out", str(out),
            "--variant", s["variant"],
            "--context-lens", ",".join(str(x) for x in s["context_lens"]),
            "--depths", ",".join(str(x) for x in s["depths"]),
            "--n-per-cell", str(s["n_per_cell"]), "--seed", str(s["seed"]),
            "--reference", str(s["reference"]), "--threshold", str(s["threshold"]),
            "--batch-size", str(s["batch_size"]), "--no-progress", "--no-report"]
    if s["recurrent"]:
        args.append("--recurrent")
    if not s["only_correct"]:
        args.append("--all-samples")
    return args


def normalize(name: str, df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    if name == "checkpoints.parquet":
        df["path"] = [Path(p).name for p in df["path"]]  # absolute (tmp_path) -> step_000000
    keys = KEYS[name]
    assert not df.duplicated(keys).any(), f"{name}: {keys} is not a unique key"
    return df.sort_values(keys, kind="stable").reset_index(drop=True)


def _kind(s: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(s):
        return "bool"
    if pd.api.types.is_integer_dtype(s):
        return "int"
    if pd.api.types.is_float_dtype(s):
        return "float"
    return "other"  # strings (object or string dtype), None


def assert_tables_equal(name: str, got: pd.DataFrame, want: pd.DataFrame):
    assert list(got.columns) == list(want.columns), f"{name}: columns differ"
    got, want = normalize(name, got), normalize(name, want)
    assert len(got) == len(want), f"{name}: {len(got)} rows, stored {len(want)}"
    for c in want.columns:
        g, w = got[c], want[c]
        assert _kind(g) == _kind(w), f"{name}.{c}: dtype {g.dtype}, stored {w.dtype}"
        if _kind(w) == "float":
            bad = ~np.isclose(g.to_numpy(float), w.to_numpy(float), rtol=RTOL, atol=ATOL, equal_nan=True)
            assert not bad.any(), (f"{name}.{c}: {bad.sum()} value(s) differ, first at row "
                                   f"{got.loc[bad].iloc[0].to_dict()} (stored {w[bad].iloc[0]!r})")
        else:
            gl = [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in g.tolist()]
            wl = [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in w.tolist()]
            diff = [i for i, (a, b) in enumerate(zip(gl, wl)) if a != b]
            assert not diff, f"{name}.{c}: row {got.loc[diff[0]].to_dict()} has {gl[diff[0]]!r}, stored {wl[diff[0]]!r}"


def assert_json_equal(got, want, where="formation.json"):
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), \
            f"{where}: keys {sorted(got) if isinstance(got, dict) else got!r}, stored {sorted(want)}"
        for k in want:
            assert_json_equal(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r}, stored {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_json_equal(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool) and isinstance(got, (int, float)):
        assert math.isclose(got, want, rel_tol=RTOL, abs_tol=ATOL), f"{where}: {got!r}, stored {want!r}"
    else:  # int, bool, str, None: exactly (True != 1 here)
        assert type(got) is type(want) and got == want, f"{where}: {got!r}, stored {want!r}"


def load_formation_json(path: Path) -> dict:
    d = json.loads(path.read_text())
    d["reference"]["path"] = Path(d["reference"]["path"]).name  # absolute -> step_000000
    d["heads"] = sorted(d["heads"], key=lambda h: (h["layer"], h["head"], h["metric"]))
    return d


def assert_scan_matches_golden(out: Path):
    for name in KEYS:
        assert_tables_equal(name, pd.read_parquet(out / name), pd.read_parquet(GOLDEN / name))
    assert_json_equal(load_formation_json(out / "formation.json"), load_formation_json(GOLDEN / "formation.json"))


@pytest.fixture
def run(tmp_path):
    return shutil.copytree(RUN, tmp_path / "micro_run")


def test_fixture_run_is_small_and_complete():
    steps = [p.name for p in rh.list_checkpoints(RUN)]
    assert steps == ["step_000000", "step_000200", "step_000400", "step_000600", "step_000800", "step_001000"]
    assert sum(f.stat().st_size for f in RUN.rglob("*") if f.is_file()) < 600_000
    assert not (RUN / "scan").exists()


def test_scan_equals_stored_tables(run, tmp_path):
    out = tmp_path / "scan"
    s = dict(SETTINGS)
    kw = {k: s.pop(k) for k in ("reference", "threshold", "batch_size")}
    df = rh.scan(run, out=out, progress=False, report=False, **kw, **s)
    assert df.attrs["scan"]["n_scored"] == 6 and df.attrs["scan"]["n_skipped"] == 0
    assert_scan_matches_golden(out)
    assert not (run / "scan").exists()  # out= leaves the run folder untouched


def test_cli_scan_equals_stored_tables(run, tmp_path, capsys):
    out = tmp_path / "cli_scan"
    with pytest.raises(SystemExit) as e:
        main(cli_args(run, out))
    assert e.value.code == 0
    assert "6 checkpoint(s): 6 scored" in capsys.readouterr().out
    assert_scan_matches_golden(out)


def test_comparison_fails_on_a_changed_value(tmp_path):
    """The comparison is not vacuous: one changed value in any stored table is a failure."""
    want = pd.read_parquet(GOLDEN / "scores.parquet")
    got = want.copy()
    i = got.index[(got.metric == "entropy")][3]
    got.loc[i, "value"] *= 1 + 1e-4
    with pytest.raises(AssertionError, match=r"scores.parquet.value: 1 value"):
        assert_tables_equal("scores.parquet", got, want)
    niah = pd.read_parquet(GOLDEN / "niah.parquet")
    with pytest.raises(AssertionError, match="niah.parquet.n"):
        assert_tables_equal("niah.parquet", niah.assign(n=niah.n + (niah.index == 5)), niah)
    form = load_formation_json(GOLDEN / "formation.json")
    changed = json.loads(json.dumps(form))
    changed["run"]["step"] = 800
    with pytest.raises(AssertionError, match=r"formation.json.run.step"):
        assert_json_equal(changed, form)
    changed = json.loads(json.dumps(form))
    changed["measures"]["mass"]["censored_at_step"] = 800
    with pytest.raises(AssertionError, match=r"formation.json.measures.mass.censored_at_step"):
        assert_json_equal(changed, form)
    fm = pd.read_parquet(GOLDEN / "formation_measures.parquet")
    with pytest.raises(AssertionError, match="formation_measures.parquet.formed"):
        assert_tables_equal("formation_measures.parquet", fm.assign(formed=fm.formed | (fm.index == 4)), fm)


def test_stored_formation_measures_cover_every_measure_and_head():
    """formation_measures.parquet: one row per (measure, head) for mass, copy_tf and copy with
    their default thresholds; in this short run none forms, so every head is censored at the
    last checkpoint (step 1000) and formation.json's "measures" says so, never a made-up step."""
    fm = pd.read_parquet(GOLDEN / "formation_measures.parquet")
    scores = pd.read_parquet(GOLDEN / "scores.parquet")
    heads = scores[scores.metric == "copy"][["layer", "head"]].drop_duplicates()
    assert sorted(set(fm.measure)) == ["copy", "copy_tf", "mass"] and len(fm) == 3 * len(heads)
    assert set(scores.metric) >= {"copy_tf"}
    assert dict(zip(fm.measure, fm.threshold)) == {"mass": 0.5, "copy_tf": 0.1, "copy": 0.1}
    assert not fm.formed.any() and (fm.censored_at_step == 1000).all() and fm.formation_step.isna().all()
    measures = json.loads((GOLDEN / "formation.json").read_text())["measures"]
    assert {m: (d["formed"], d["step"], d["censored_at_step"]) for m, d in measures.items()} == \
        {m: (False, None, 1000) for m in ("mass", "copy_tf", "copy")}
