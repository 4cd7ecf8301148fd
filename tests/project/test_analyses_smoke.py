"""The laziness and emergence analysis scripts run end to end in --smoke mode (a few steps,
one seed, two windows / hybrids); only the output files and their schema are checked."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from helpers import load_analysis

ANALYSES = Path(__file__).resolve().parents[2] / "analyses"


_load = load_analysis


def test_laziness_smoke(tmp_path):
    lazy = _load("laziness")
    out = tmp_path / "lazy"
    res = lazy.main(["--smoke", "--out", str(out)])
    for f in ("runs.csv", "runs.parquet", "formation.csv", "formation.parquet", "table.csv", "curves.parquet",
              "laziness.html", "results.json"):
        assert (out / f).is_file(), f
    runs = pd.read_parquet(out / "runs.parquet")
    assert sorted(runs["label"]) == ["full", "w16", "w8"] and len(runs) == 3
    assert runs.loc[runs["label"] == "full", "window"].isna().all()  # the reference is not an SWA window
    form = pd.read_parquet(out / "formation.parquet")
    assert set(form["measure"]) == {"mass", "copy_tf", "copy"} and len(form) == 9
    # every run x measure either formed (with tokens) or is censored (with where), never both
    assert (form["formed"] == form["formation_tokens"].notna()).all()
    assert (form["formed"] != form["censored_at_tokens"].notna()).all()
    assert (form["budget_tokens"] == 2 * 2 * 144).all()  # smoke: 2 steps of 2 x 144 tokens
    curves = pd.read_parquet(out / "curves.parquet")
    assert {"label", "window", "seed", "measure", "tokens_seen", "best_f_score", "niah_acc"} <= set(curves.columns)
    saved = json.loads((out / "results.json").read_text())
    assert saved["mode"] == "smoke" and set(saved["statistics"]) == {"mass", "copy_tf", "copy"}
    assert {r["window"] for r in saved["formation_table"]} == {"8", "16", "full attention"}
    page = (out / "laziness.html").read_text()
    assert "Kaplan-Meier" in page and "censored at" in page
    assert res["analysis"] == "laziness" and saved["settings"]["stop_measure"] == "mass"


def test_laziness_statistics_on_censored_rows():
    """statistics / share_table on hand-made formation rows: windows 4 and 16 form (16 later),
    64 forms in one seed of two; the trend test sees larger windows forming later."""
    import math

    lazy = _load("laziness")
    rows = []
    for w, times in ((4, (100.0, 120.0)), (16, (300.0, 340.0)), (64, (800.0, None)), (None, (200.0, 260.0))):
        for seed, t in enumerate(times):
            rows.append({"label": f"w{w}", "window": math.nan if w is None else float(w), "seed": seed,
                         "measure": "mass", "formed": t is not None, "formation_tokens": t if t else math.nan,
                         "censored_at_tokens": math.nan if t else 1000.0, "budget_tokens": 1000.0,
                         "formation_step": t / 10 if t else math.nan,
                         "share_of_budget": t / 1000.0 if t else math.nan})
    form = pd.DataFrame(rows)
    st = lazy.statistics(form, ["mass"])["mass"]
    assert st["per_window"]["4"]["formed"] == 2 and st["per_window"]["64"]["formed"] == 1
    assert st["per_window"]["4"]["km_median_tokens"] == 100.0
    assert st["per_window"]["full attention"]["n"] == 2  # the reference: its own KM row, not in the trend
    assert st["logrank_trend"]["z"] < 0 and st["logrank_trend"]["p"] < 0.05  # later with the window
    assert st["spearman"]["rho"] > 0.8 and st["spearman"]["n"] == 6
    share = lazy.share_table(form, "mass")
    assert list(share["window"]) == ["4", "16", "64", "full attention"]
    assert share.loc[0, "largest share"] == "12%" and share.loc[2, "largest share"] == "-"
    assert "seed 1: censored" in share.loc[2, "formation step / budget, per seed"]


def test_emergence_smoke(tmp_path):
    emg = _load("emergence")
    out = tmp_path / "emg"
    res = emg.main(["--smoke", "--out", str(out)])
    for f in ("runs.csv", "runs.parquet", "evals.parquet", "position_loss.parquet", "fit.csv", "fit.parquet",
              "fit_residuals.parquet", "niah_vs_tokens.html", "loss_vs_tokens.html", "results.json"):
        assert (out / f).is_file(), f
    runs = pd.read_parquet(out / "runs.parquet")
    assert {"label", "family", "layout", "d_model", "N", "main", "final_niah_acc", "final_long_loss",
            "niah_gap_vs_F", "converged", "convergence_status"} <= set(runs.columns)
    assert set(runs[runs["main"]]["layout"]) == {"SF", "MF", "FF"}
    assert sorted(runs[runs["family"] == "F"]["d_model"]) == [8, 16, 24]  # the fitted family: 3 sizes
    evals = pd.read_parquet(out / "evals.parquet")
    assert {"label", "N", "step", "tokens_seen", "long_loss", "heldout_loss", "niah_acc"} <= set(evals.columns)
    fit = pd.read_parquet(out / "fit.parquet")
    row = fit[fit["family"] == "F"].iloc[0]
    assert row["status"] == "ok" and {"B", "alpha", "C", "beta", "rmse_log"} <= set(fit.columns)
    saved = json.loads((out / "results.json").read_text())
    assert saved["mode"] == "smoke" and set(saved["final_niah_per_layout"]) == {"SF w=8", "MF", "FF"}
    assert res["fits"][0]["family"] == "F"
