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
    for f in ("runs.csv", "runs.parquet", "summary.csv", "summary.parquet", "curves.parquet",
              "formation_vs_window.html", "curves.html", "results.json"):
        assert (out / f).is_file(), f
    runs = pd.read_parquet(out / "runs.parquet")
    assert {"label", "window", "seed", "formed", "formation_step", "formation_tokens", "censored_at_step",
            "censored_at_tokens", "final_niah_acc", "mass_formed", "mass_formation_tokens",
            "niah50_tokens"} <= set(runs.columns)
    assert sorted(runs["label"]) == ["full", "w16", "w8"] and len(runs) == 3
    # every run either formed (with a step) or is censored (with the step it was censored at)
    assert (runs["formed"] == runs["formation_step"].notna()).all()
    assert (runs["formed"] != runs["censored_at_step"].notna()).all()
    summary = pd.read_parquet(out / "summary.parquet")
    assert {"label", "n_seeds", "n_formed", "formation_tokens_mean", "formation_tokens_std",
            "not_formed_by_tokens", "n_mass_formed", "mass_formation_tokens_mean"} <= set(summary.columns)
    curves = pd.read_parquet(out / "curves.parquet")
    assert {"label", "seed", "step", "tokens_seen", "f_copy_max", "f_mass_max", "niah_acc"} <= set(curves.columns)
    saved = json.loads((out / "results.json").read_text())
    assert saved["mode"] == "smoke" and set(saved["formation_tokens_per_window_per_seed"]) == {"w8", "w16", "full"}
    assert set(saved["mass_formation_tokens_per_window_per_seed"]) == {"w8", "w16", "full"}
    assert res["analysis"] == "laziness" and "trend_window_vs_formation" in saved


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
