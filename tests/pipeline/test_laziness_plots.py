"""Large-Window Laziness figures (retrieval_heads.laziness_plots) on synthetic tables, and the
compare page built from hand-written scan folders: every run shown, formed or censored."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from retrieval_heads import laziness_plots as lp
from retrieval_heads.pipeline import compare_runs

WINDOWS = (32, 128, 512, 2048)
SEEDS = (0, 1, 2)
BUDGET = 8_000_000.0
CENSORED = "SSSF w=2048 s2"  # the one run that never formed


def _summary(ref_formed: bool = True) -> pd.DataFrame:
    """4 windows x 3 seeds (w=2048 seed 2 censored at the budget) + a 3-seed full-attention
    reference, measures copy and mass (mass forms 10% later)."""
    rows = []
    for w in (*WINDOWS, None):
        for s in SEEDS:
            label = f"SSSF w={w} s{s}" if w else f"FFFF s{s}"
            base = 1_000_000 * (1 + math.log2(w / 32)) if w else 900_000
            t = base + 100_000 * s
            formed = label != CENSORED and (w is not None or ref_formed)
            for meas, k in (("copy", 1.0), ("mass", 1.1)):
                rows.append({"label": label, "window": w, "seed": s, "measure": meas, "formed": formed,
                             "formation_tokens": round(t * k) if formed else math.nan,
                             "censored_at_tokens": math.nan if formed else BUDGET, "budget_tokens": BUDGET})
    return pd.DataFrame(rows)


def _curves() -> pd.DataFrame:
    rows = []
    for w in (*WINDOWS, None):
        for s in SEEDS:
            label = f"SSSF w={w} s{s}" if w else f"FFFF s{s}"
            for meas in ("copy", "mass"):
                for i, t in enumerate(np.linspace(0, BUDGET, 5)):
                    rows.append({"label": label, "window": w, "seed": s, "measure": meas, "tokens_seen": t,
                                 "best_f_score": 0.1 * i + 0.01 * s, "niah_acc": 0.2 * i + 0.02 * s})
    return pd.DataFrame(rows)


@pytest.fixture
def summary():
    return _summary()


def _by_name(fig, start):
    hits = [t for t in fig.data if t.name and t.name.startswith(start)]
    assert len(hits) == 1, [t.name for t in fig.data]
    return hits[0]


def _all_y(fig):
    ys = []
    for t in fig.data:
        y = np.asarray(t.y, dtype=float)
        ys += list(y)
        if t.error_y is not None and t.error_y.array is not None:
            ys += list(y + np.asarray(t.error_y.array, dtype=float))
    return [v for v in ys if not math.isnan(v)]


def test_formation_vs_window_draws_seeds_censoring_mean_and_reference(summary):
    fig = lp.formation_vs_window(summary, "copy")
    assert fig.data and all(len(t.x) and len(t.y) for t in fig.data)
    xa, ya = fig.layout.xaxis, fig.layout.yaxis
    assert xa.type == "log" and list(xa.tickvals) == list(WINDOWS) and list(xa.ticktext) == ["32", "128", "512", "2048"]
    lo_x, hi_x = 10 ** xa.range[0], 10 ** xa.range[1]
    assert all(lo_x * (1 - 1e-9) <= x <= hi_x * (1 + 1e-9) for t in fig.data for x in t.x)
    assert ya.range[0] == 0 and ya.tickformat == "~s"
    assert all(0 <= y <= ya.range[1] for y in _all_y(fig))
    assert "copy" in fig.layout.title.text and "3 seeds" in fig.layout.title.text

    formed = _by_name(fig, "formed")
    assert formed.marker.symbol == "circle"
    swa = summary[(summary.measure == "copy") & summary.window.notna()]
    assert sorted(formed.customdata[:, 0]) == sorted(swa[swa.formed].label)
    assert sorted(formed.y) == sorted(swa[swa.formed].formation_tokens)

    cens = _by_name(fig, "censored (did not form by")
    assert cens.name == "censored (did not form by 8,000,000 tokens)"
    assert cens.marker.symbol == "triangle-up-open"
    assert list(cens.customdata[:, 0]) == [CENSORED] and list(cens.y) == [BUDGET]

    mean = _by_name(fig, "mean of formed seeds (95% bootstrap CI)")
    assert list(mean.x) == list(WINDOWS)
    expect = swa[swa.formed].groupby("window").formation_tokens.mean()
    np.testing.assert_allclose(mean.y, expect.values)
    plus, minus = np.asarray(mean.error_y.array), np.asarray(mean.error_y.arrayminus)
    assert (plus >= 0).all() and (minus >= 0).all() and plus[:3].sum() > 0

    band = _by_name(fig, "full attention: min-max")
    ref_line = _by_name(fig, "full attention: mean")
    ref = summary[(summary.measure == "copy") & summary.window.isna()].formation_tokens
    assert min(band.y) == ref.min() and max(band.y) == ref.max() and band.fill == "toself"
    assert set(ref_line.y) == {ref.mean()} and "(3/3 formed)" in ref_line.name
    assert [a.text for a in fig.layout.annotations] == ["3/3 formed"] * 3 + ["2/3 formed"]


def test_formation_vs_window_reference_that_never_formed_is_its_censoring_level():
    fig = lp.formation_vs_window(_summary(ref_formed=False), "mass")
    ref = _by_name(fig, "full attention")
    assert ref.name == "full attention: did not form by 8,000,000 tokens (0/3 formed)"
    assert set(ref.y) == {BUDGET} and ref.line.dash == "dot"
    assert max(_all_y(fig)) <= fig.layout.yaxis.range[1]


def test_a_figure_of_one_trace_keeps_its_legend(summary):
    """Plotly hides the legend of a one-trace figure: all-censored runs must still say so."""
    cens = summary[summary.label == CENSORED]
    fig = lp.formation_vs_window(cens, "copy")
    assert [t.name for t in fig.data] == ["censored (did not form by 8,000,000 tokens)"]
    assert fig.layout.showlegend is True
    one = _curves()[lambda c: c.label == "SSSF w=32 s0"]
    assert lp.score_curves(one, "copy").layout.showlegend is True and lp.niah_curves(one).layout.showlegend is True


def test_formation_vs_window_without_data_says_why(summary):
    fig = lp.formation_vs_window(summary, "copy_tf")
    assert not fig.data
    assert fig.layout.title.text == "Formation vs SWA window: no run of measure 'copy_tf' in the table"
    assert fig.layout.annotations[0].text == "measures in the table: copy, mass"
    only_ref = lp.formation_vs_window(summary[summary.window.isna()], "copy", title_note="SYNTHETIC DATA")
    assert not only_ref.data and "no SWA run" in only_ref.layout.title.text
    assert "<b>SYNTHETIC DATA</b>" in only_ref.layout.title.text


def test_formation_vs_window_rejects_a_table_without_the_schema(summary):
    with pytest.raises(ValueError, match="missing column\\(s\\) censored_at_tokens"):
        lp.formation_vs_window(summary.drop(columns="censored_at_tokens"), "copy")


def test_score_curves_median_and_band_per_window():
    curves = _curves()
    fig = lp.score_curves(curves, "copy", threshold=0.3)
    lines = [t for t in fig.data if t.showlegend is not False]
    assert [t.name for t in lines] == [f"w={w} (3 seeds)" for w in WINDOWS] + ["full attention (3 seeds)"]
    np.testing.assert_allclose(lines[0].y, [0.01, 0.11, 0.21, 0.31, 0.41])  # median over seeds 0, 1, 2
    bands = [t for t in fig.data if t.showlegend is False]
    assert len(bands) == 5 and all(t.fill == "toself" for t in bands)
    np.testing.assert_allclose(bands[0].y, [0.02, 0.12, 0.22, 0.32, 0.42, 0.40, 0.30, 0.20, 0.10, 0.0])
    assert "copy" in fig.layout.title.text and fig.layout.yaxis.range[0] == 0
    assert fig.layout.xaxis.tickformat == "~s"
    assert lp.score_curves(curves, "copy_tf").layout.title.text.startswith(
        "Best F-head score: no curve of measure 'copy_tf'")
    undefined = curves[curves["measure"] == "copy"].assign(best_f_score=np.nan)  # no sample ever answered
    fig = lp.score_curves(undefined, "copy")
    assert fig.layout.title.text.startswith("Best F-head 'copy' score: undefined at every checkpoint")
    assert "no run answered one" in fig.layout.annotations[0].text and not fig.data


def test_niah_curves_count_each_checkpoint_once():
    fig = lp.niah_curves(_curves())
    lines = [t for t in fig.data if t.showlegend is not False]
    assert len(lines) == 5 and lines[-1].line.dash == "dash"  # the reference dashed
    np.testing.assert_allclose(lines[1].y, [0.02, 0.22, 0.42, 0.62, 0.82])
    assert list(fig.layout.yaxis.range) == [0, 1.05]
    assert not lp.niah_curves(_curves().assign(niah_acc=np.nan)).data


def test_formation_summary_table_is_censoring_aware(summary):
    t = lp.formation_summary_table(summary)
    assert list(t.columns) == ["window", "measure", "formed", "per seed", "mean (formed seeds)",
                               "95% CI (formed seeds)"]
    assert list(t.window) == ["32", "32", "128", "128", "512", "512", "2048", "2048",
                              "full attention", "full attention"]
    row = t[(t.window == "2048") & (t.measure == "copy")].iloc[0]
    assert row.formed == "2/3"
    assert row["per seed"] == "seed 0: 7,000,000; seed 1: 7,100,000; seed 2: censored at 8,000,000"
    assert row["mean (formed seeds)"] == "7,050,000"
    lo, hi = (int(x.replace(",", "")) for x in row["95% CI (formed seeds)"].strip("[]").split(", "))
    assert 7_000_000 <= lo <= 7_050_000 <= hi <= 7_100_000
    assert not t.apply(lambda c: c.str.contains(r"\d\.0\b")).any().any()  # integers, no '.0'
    one = lp.formation_summary_table(summary[summary.label.isin(["SSSF w=32 s0"])])
    assert one["95% CI (formed seeds)"].tolist() == ["- (fewer than 2 formed)"] * 2


def test_bootstrap_mean_ci():
    assert all(math.isnan(v) for v in lp.bootstrap_mean_ci([]))
    m, lo, hi = lp.bootstrap_mean_ci([5.0])
    assert m == 5.0 and math.isnan(lo) and math.isnan(hi)
    m, lo, hi = lp.bootstrap_mean_ci([1.0, 2.0, 3.0, 10.0, float("nan")])
    assert m == 4.0 and 1.0 <= lo < m < hi <= 10.0
    assert lp.bootstrap_mean_ci([1.0, 2.0, 3.0, 10.0]) == (m, lo, hi)  # seeded


def test_synthetic_example_follows_the_schema():
    s, c = lp.synthetic_example()
    assert list(s.columns) == lp.SUMMARY_COLUMNS and list(c.columns) == lp.CURVE_COLUMNS
    assert (~s.formed).any() and s.window.isna().any()
    fig = lp.formation_vs_window(s, "copy_tf", title_note="SYNTHETIC DATA")
    assert "SYNTHETIC DATA" in fig.layout.title.text


# -- the compare page ------------------------------------------------------------------------

def _fake_scan(root, window, formed_tokens, seed=None, measures=None, niah=0.5):
    """The four scan tables and formation.json of a run, written by hand (no model): two
    checkpoints, the last at 7,372,800 tokens; formed at ``formed_tokens`` (None: not formed)."""
    d = root / "scan"
    d.mkdir(parents=True)
    pd.DataFrame({"step": [0, 1800, 0, 1800], "tokens_seen": [0, 7372800, 0, 7372800], "layer": [3] * 4,
                  "head": [0] * 4, "layer_type": ["F"] * 4, "metric": ["copy", "copy", "mass", "mass"],
                  "value": [0.0, 0.5, 0.1, 0.6]}).to_parquet(d / "scores.parquet")
    pd.DataFrame({"step": [0, 1800], "tokens_seen": [0, 7372800], "context_len": [160, 160], "depth": [0.5, 0.5],
                  "accuracy": [0.0, niah], "n": [2, 2]}).to_parquet(d / "niah.parquet")
    pd.DataFrame({"layer": [3], "head": [0], "layer_type": ["F"], "formed": [formed_tokens is not None],
                  "formation_step": [1800.0 if formed_tokens else float("nan")]}).to_parquet(d / "formation.parquet")
    pd.DataFrame({"step": [0, 1800], "tokens_seen": [0, 7372800], "status": ["ok", "ok"]}).to_parquet(
        d / "checkpoints.parquet")
    run = ({"step": 1800, "layer": 3, "head": 0, "tokens_seen": formed_tokens} if formed_tokens
           else {"step": None, "layer": None, "head": None, "tokens_seen": None})
    meta = {"threshold": 0.1, "model": {"layout": "SSSF" if window else "FFFF", "window": window,
                                        "pos": {"F": "nope", "S": "rope"}}, "run": run}
    if measures is not None:
        meta["measures"] = measures
    (d / "formation.json").write_text(json.dumps(meta))
    if seed is not None:
        (root / "run.json").write_text(json.dumps({"model": {}, "train": {"seed": seed}}))
    return root


def test_compare_shows_formed_and_censored_runs(tmp_path):
    a = _fake_scan(tmp_path / "w16", 16, 7372800, seed=3)
    b = _fake_scan(tmp_path / "w64", 64, None)
    path, summary = compare_runs([a, b], tmp_path / "cmp.html")
    html = path.read_text()
    assert summary.seed.tolist() == [3, 0]
    assert summary.formation_tokens.tolist()[0] == 7372800 and math.isnan(summary.censored_at_tokens[0])
    assert summary.censored_at_tokens.tolist()[1] == 7372800 and math.isnan(summary.formation_tokens[1])
    # both runs in the figure: one formed circle, one censored triangle at the last checkpoint's tokens
    assert '"name":"formed (one circle per seed)"' in html
    assert '"name":"censored (did not form by 7,372,800 tokens)"' in html and "triangle-up-open" in html
    assert "SSSF w=16 F:nope,S:rope" in html and "SSSF w=64 F:nope,S:rope" in html
    # the censoring-aware table: one row per window, formed and censored
    assert "<td>seed 3: 7,372,800</td>" in html and "<td>seed 0: censored at 7,372,800</td>" in html
    assert "<td>1/1</td>" in html and "<td>0/1</td>" in html
    assert html.count("window.PlotlyConfig") == 1  # plotly.js embedded once, with the first figure
    assert "Best F-head 'copy' score vs tokens seen" in html and "NIAH accuracy vs tokens seen" in html


def test_compare_uses_the_scans_per_measure_formation(tmp_path):
    measures = {"copy": {"formed": False, "tokens_seen": None, "censored_at_tokens": 7372800},
                "mass": {"formed": True, "tokens_seen": 3000000, "censored_at_tokens": None}}
    a = _fake_scan(tmp_path / "w16", 16, None, measures=measures)
    b = _fake_scan(tmp_path / "ref", None, 1000000, seed=1,
                   measures={"copy": {"formed": True, "tokens_seen": 1000000},
                             "mass": {"formed": True, "tokens_seen": 900000}})
    path, _ = compare_runs([a, b], tmp_path / "cmp.html")
    html = path.read_text()
    assert "first F retrieval head by 'mass'" in html and "first F retrieval head by 'copy'" in html
    assert "<td>seed 0: 3,000,000</td>" in html and "<td>seed 0: censored at 7,372,800</td>" in html
    assert "<td>full attention</td>" in html and "<td>seed 1: 900,000</td>" in html
    assert r"full attention: mean 1,000,000 tokens (1\u002f1 formed)" in html  # plotly's JSON escapes '/'
    assert "Best F-head 'mass' score vs tokens seen" in html
    # the page's order of measures: mass (the primary measure), copy_tf, copy
    assert html.index("by 'mass'") < html.index("by 'copy'")
