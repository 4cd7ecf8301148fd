"""retrieval_heads.stats: Kaplan-Meier, the log-rank trend test, the Cox fit, bootstrap, Spearman.

Checked by hand on small examples, against scipy (the ``analyses`` extra, which the test extra
pulls), against lifelines where it is installed (the ``survival`` extra; skipped without it) and
against direct formulas (a numpy Cox partial likelihood, the maximum
of the trend statistic over scores = lifelines' k-group log-rank statistic).
"""

from __future__ import annotations

import ast
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from retrieval_heads import stats
from retrieval_heads.stats import (bootstrap_ci, chi2_sf_1df, cox_log_window, kaplan_meier, km_median,
                                   logrank_trend, spearman)

ROOT = Path(__file__).resolve().parents[2]
WINDOWS = [64, 128, 256, 512, 1024]


def _lifelines():
    pytest.importorskip("lifelines")
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # lifelines' use of pandas
    warnings.filterwarnings("ignore", category=FutureWarning)


def _censored_sample(seed=0, n=60, ties=True):
    """Formation times with ties (rounded) and right-censoring at a per-run budget."""
    rng = np.random.default_rng(seed)
    t = rng.exponential(100.0, n)
    budget = rng.uniform(50, 250, n)
    observed = t <= budget
    t = np.minimum(t, budget)
    return (np.round(t / 10) * 10 + 10 if ties else t), observed


def _formation_by_window(seed, trend: bool, per_window=25, budget=4000.0):
    """Formation times per window, censored at ``budget``: scale grows with the window when ``trend``."""
    rng = np.random.default_rng(seed)
    w = np.repeat(WINDOWS, per_window)
    scale = 500.0 * (w / 64) ** 0.8 if trend else np.full(w.shape, 1500.0)
    t = rng.exponential(scale)
    observed = t <= budget
    return np.minimum(t, budget), observed, w


# --------------------------------------------------------------------------- Kaplan-Meier


def test_kaplan_meier_hand_worked():
    # times 1, 2, 2+, 3, 4+ (+ = censored). Distinct times and S(t) = prod (1 - d/n):
    #   t=1: n=5 at risk, d=1 -> S = 4/5            = 0.8
    #   t=2: n=4, d=1 (the 2+ leaves after) -> S = 0.8 * 3/4 = 0.6
    #   t=3: n=2, d=1 -> S = 0.6 * 1/2             = 0.3
    #   t=4: n=1, d=0 (censored) -> S stays         0.3
    # Greenwood: Var = S^2 * sum d / (n (n - d)):
    #   t=1: 0.64 * 1/20                = 0.032
    #   t=2: 0.36 * (1/20 + 1/12)       = 0.048
    #   t=3: 0.09 * (1/20 + 1/12 + 1/2) = 0.057
    #   t=4: 0.09 * the same            = 0.057
    km = kaplan_meier([1, 2, 2, 3, 4], observed=[1, 1, 0, 1, 0])
    assert list(km.columns) == ["time", "at_risk", "events", "censored", "survival", "variance", "ci_low", "ci_high"]
    assert km["time"].tolist() == [1, 2, 3, 4]
    assert km["at_risk"].tolist() == [5, 4, 2, 1]
    assert km["events"].tolist() == [1, 1, 1, 0]
    assert km["censored"].tolist() == [0, 1, 0, 1]
    np.testing.assert_allclose(km["survival"], [0.8, 0.6, 0.3, 0.3], rtol=1e-12)
    np.testing.assert_allclose(km["variance"], [0.032, 0.048, 0.057, 0.057], rtol=1e-12)
    # log-log interval at t=1: log S = log 0.8; se of log(-log S) = sqrt(1/20) / |log 0.8|
    v, g = math.log(0.8), 1 / 20
    lo = math.exp(-math.exp(math.log(-v) - 1.959963984540054 * math.sqrt(g) / v))
    hi = math.exp(-math.exp(math.log(-v) + 1.959963984540054 * math.sqrt(g) / v))
    assert km["ci_low"].iloc[0] == pytest.approx(lo, rel=1e-12)
    assert km["ci_high"].iloc[0] == pytest.approx(hi, rel=1e-12)
    assert (km["ci_low"] <= km["survival"]).all() and (km["survival"] <= km["ci_high"]).all()
    assert km_median([1, 2, 2, 3, 4], [1, 1, 0, 1, 0]) == 3.0
    assert km_median(km) == 3.0  # the table works too


def test_kaplan_meier_edges():
    all_censored = kaplan_meier([5, 6, 7], [False, False, False])
    assert all_censored["survival"].tolist() == [1.0, 1.0, 1.0]
    assert all_censored["ci_low"].tolist() == [1.0, 1.0, 1.0]
    assert km_median([5, 6, 7], [False, False, False]) == math.inf  # never forms: > 7, not 7
    # the last run forms: S drops to 0, interval (0, 0)
    to_zero = kaplan_meier([1, 2], [True, True])
    assert to_zero["survival"].tolist() == [0.5, 0.0]
    assert to_zero[["ci_low", "ci_high", "variance"]].iloc[-1].tolist() == [0.0, 0.0, 0.0]
    # observed defaults to all formed; exactly 0.5 counts as the median (as lifelines)
    assert km_median([10, 20, 30, 40]) == 20.0
    with pytest.raises(ValueError, match="no times"):
        kaplan_meier([], [])
    with pytest.raises(ValueError, match="differ in length"):
        kaplan_meier([1, 2], [True])
    with pytest.raises(ValueError, match="finite"):
        kaplan_meier([1, math.inf], [True, False])
    with pytest.raises(ValueError, match="observed must be"):
        kaplan_meier([1, 2], [0, 2])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kaplan_meier_matches_lifelines(seed):
    _lifelines()
    from lifelines import KaplanMeierFitter

    t, e = _censored_sample(seed)
    km = kaplan_meier(t, e)
    kmf = KaplanMeierFitter().fit(t, e)
    ref = kmf.survival_function_.iloc[:, 0]
    ci = kmf.confidence_interval_
    np.testing.assert_allclose(km["survival"], ref.loc[km["time"]].to_numpy(), rtol=1e-12, atol=1e-14)
    inside = ((km["survival"] > 0) & (km["survival"] < 1)).to_numpy()
    np.testing.assert_allclose(km["ci_low"][inside], ci.iloc[:, 0].loc[km["time"][inside]].to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(km["ci_high"][inside], ci.iloc[:, 1].loc[km["time"][inside]].to_numpy(), rtol=1e-10)
    table = kmf.event_table.loc[km["time"]]
    assert km["at_risk"].tolist() == table["at_risk"].astype(int).tolist()
    assert km["events"].tolist() == table["observed"].astype(int).tolist()
    assert km["censored"].tolist() == table["censored"].astype(int).tolist()
    assert km_median(t, e) == kmf.median_survival_time_


# --------------------------------------------------------------------------- log-rank trend


def test_logrank_trend_hand_worked():
    # groups 64: 1, 2; 128: 3, 4; 256: 5, 6+ ; scores log2 = 6, 7, 8 (same test as 0, 1, 2).
    # event   at risk (64,128,256)  E per group           s^2.p - (s.p)^2 with s = 0, 1, 2
    #  t=1    2, 2, 2  (64)          1/3, 1/3, 1/3          5/3 - 1      = 2/3
    #  t=2    1, 2, 2  (64)          1/5, 2/5, 2/5          2 - 1.2^2    = 0.56
    #  t=3    0, 2, 2  (128)         0, 1/2, 1/2            2.5 - 1.5^2  = 0.25
    #  t=4    0, 1, 2  (128)         0, 1/3, 2/3            3 - (5/3)^2  = 2/9
    #  t=5    0, 0, 2  (256)         0, 0, 1                0
    # O = (2, 2, 1), E = (8/15, 47/30, 2.9); U = 1 * (2 - 47/30) + 2 * (1 - 2.9) = -101/30
    # V = 2/3 + 0.56 + 0.25 + 2/9 (every D = 1, so D (N - D) / (N - 1) = 1); stat = U^2 / V
    r = logrank_trend([1, 2, 3, 4, 5, 6], [1, 1, 1, 1, 1, 0], [64, 64, 128, 128, 256, 256])
    u, v = -101 / 30, 2 / 3 + 0.56 + 0.25 + 2 / 9
    assert r["statistic"] == pytest.approx(u * u / v, rel=1e-12)
    assert r["z"] == pytest.approx(u / math.sqrt(v), rel=1e-12)
    assert r["p"] == pytest.approx(math.erfc(math.sqrt(u * u / v / 2)), rel=1e-12)
    assert r["df"] == 1
    assert r["observed"] == {64: 2.0, 128: 2.0, 256: 1.0}
    assert r["expected"] == pytest.approx({64: 8 / 15, 128: 47 / 30, 256: 2.9}, rel=1e-12)
    assert r["scores"] == {64: 6.0, 128: 7.0, 256: 8.0}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_logrank_trend_two_groups_is_lifelines_logrank(seed):
    _lifelines()
    from lifelines.statistics import logrank_test

    t, e = _censored_sample(seed, n=80)  # ties and censoring
    g = np.random.default_rng(seed + 100).integers(0, 2, t.size)
    t = t * np.where(g == 1, 1.3, 1.0)
    r = logrank_trend(t, e, g, scores={0: 0.0, 1: 1.0})
    ref = logrank_test(t[g == 0], t[g == 1], e[g == 0], e[g == 1])
    assert r["statistic"] == pytest.approx(ref.test_statistic, rel=1e-10)
    assert r["p"] == pytest.approx(ref.p_value, rel=1e-8)
    # the scores are free up to shift and scale; their sign only flips z
    r2 = logrank_trend(t, e, g, scores=[5.0, -3.0])
    assert r2["statistic"] == pytest.approx(r["statistic"], rel=1e-10)
    assert r2["z"] == pytest.approx(-r["z"], rel=1e-10)
    assert sum(r["observed"].values()) == pytest.approx(sum(r["expected"].values()), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_logrank_trend_maximised_over_scores_is_the_k_group_logrank(seed):
    """(s'(O-E))^2 / s'Vs is at most (O-E)'V^-(O-E), the k-group statistic, with equality at the
    best scores; for 3 groups scores modulo shift and scale are (0, cos a, sin a)."""
    _lifelines()
    from lifelines.statistics import multivariate_logrank_test

    t, e = _censored_sample(seed, n=90)
    g = np.random.default_rng(seed + 7).choice([64, 256, 1024], t.size)
    t = t * (1 + 0.2 * np.log2(g / 64))
    ref = multivariate_logrank_test(t, g, e).test_statistic
    f = lambda a: logrank_trend(t, e, g, scores=[0.0, math.cos(a), math.sin(a)])["statistic"]
    grid = np.linspace(0, math.pi, 721)
    vals = [f(a) for a in grid]
    lo, hi = grid[max(int(np.argmax(vals)) - 1, 0)], grid[min(int(np.argmax(vals)) + 1, grid.size - 1)]
    for _ in range(60):  # golden-section refinement of the maximum
        m1, m2 = lo + 0.382 * (hi - lo), hi - 0.382 * (hi - lo)
        lo, hi = (m1, hi) if f(m1) < f(m2) else (lo, m2)
    assert max(vals) <= ref * (1 + 1e-9)
    assert f((lo + hi) / 2) == pytest.approx(ref, rel=1e-7)


def test_logrank_trend_default_scores_and_errors():
    t, e, w = _formation_by_window(0, trend=True)
    by_default = logrank_trend(t, e, w)
    explicit = logrank_trend(t, e, w, scores={x: math.log2(x) for x in WINDOWS})
    assert by_default["statistic"] == explicit["statistic"]
    assert by_default["scores"][1024] == 10.0
    with pytest.raises(ValueError, match="scores="):
        logrank_trend([1, 2], [1, 1], ["a", "b"])
    with pytest.raises(ValueError, match="at least 2 groups"):
        logrank_trend([1, 2], [1, 1], [64, 64])
    with pytest.raises(ValueError, match="no entry"):
        logrank_trend([1, 2], [1, 1], [64, 128], scores={64: 0.0})
    nothing = logrank_trend([1, 2, 3], [0, 0, 0], [64, 128, 256])  # no formation at all
    assert math.isnan(nothing["statistic"]) and math.isnan(nothing["p"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trend_found_when_formation_grows_with_window(seed):
    t, e, w = _formation_by_window(seed, trend=True)
    assert 0 < e.mean() < 1  # some runs are censored
    r = logrank_trend(t, e, w)
    assert r["p"] < 0.01 and r["z"] < 0  # larger windows form fewer times than expected: later
    assert r["observed"][1024] < r["expected"][1024] and r["observed"][64] > r["expected"][64]


def test_no_trend_when_formation_does_not_depend_on_window():
    t, e, w = _formation_by_window(0, trend=False)
    assert logrank_trend(t, e, w)["p"] > 0.05


def test_chi2_sf_1df_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for x in [0.0, 1e-6, 0.5, 1.0, 3.841458820694124, 10.0, 40.0]:
        assert chi2_sf_1df(x) == pytest.approx(scipy_stats.chi2.sf(x, 1), rel=1e-10, abs=1e-300)
    assert chi2_sf_1df(math.inf) == 0.0


# --------------------------------------------------------------------------- Cox


def _cox_newton(t, e, x, iters=50):
    """The Cox partial-likelihood MLE for one covariate, no ties (Breslow = Efron), by Newton."""
    order = np.argsort(t)
    t, e, x = t[order], e[order], x[order]
    beta = 0.0
    for _ in range(iters):
        r = np.exp(beta * x)
        # risk set of the i-th sorted time: indices >= i (no ties)
        s0 = np.cumsum(r[::-1])[::-1]
        s1 = np.cumsum((r * x)[::-1])[::-1]
        s2 = np.cumsum((r * x * x)[::-1])[::-1]
        mean = s1 / s0
        score = np.sum(e * (x - mean))
        info = np.sum(e * (s2 / s0 - mean ** 2))
        beta += score / info
    return beta, 1 / math.sqrt(info)


@pytest.mark.parametrize("seed", [0, 1])
def test_cox_matches_lifelines_and_the_partial_likelihood(seed):
    _lifelines()
    import pandas as pd
    from lifelines import CoxPHFitter

    t, e, w = _formation_by_window(seed, trend=True)  # continuous times: no ties
    r = cox_log_window(t, e, w)
    df = pd.DataFrame({"T": t, "E": e, "x": np.log2(w)})
    ref = CoxPHFitter().fit(df, "T", "E").summary.loc["x"]
    assert r["coef"] == pytest.approx(ref["coef"], rel=1e-6)
    assert r["p"] == pytest.approx(ref["p"], rel=1e-4)
    assert r["ci_low"] == pytest.approx(ref["coef lower 95%"], rel=1e-6)
    assert r["ci_high"] == pytest.approx(ref["coef upper 95%"], rel=1e-6)
    beta, se = _cox_newton(t, e, np.log2(w))
    assert r["coef"] == pytest.approx(beta, rel=1e-6)
    assert r["se"] == pytest.approx(se, rel=1e-5)
    assert r["hazard_ratio"] == pytest.approx(math.exp(beta), rel=1e-6)
    assert r["hr_ci_low"] < r["hazard_ratio"] < r["hr_ci_high"]
    assert r["n"] == t.size and r["events"] == int(e.sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cox_coefficient_negative_when_larger_windows_form_later(seed):
    _lifelines()
    t, e, w = _formation_by_window(seed, trend=True)
    r = cox_log_window(t, e, w)
    assert r["coef"] < 0 and r["ci_high"] < 0 and r["hazard_ratio"] < 1 and r["p"] < 0.01


def test_cox_without_lifelines_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lifelines", None)  # import lifelines -> ImportError
    with pytest.raises(ImportError, match=r"retrieval-heads\[survival\]"):
        cox_log_window([1, 2, 3], [1, 1, 1], [64, 128, 256])


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small, large = rng.normal(10, 2, 20), rng.normal(10, 2, 2000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5  # ~ 1/sqrt(n): 10 times narrower
    # normal theory: half-width ~ 1.96 sd / sqrt(n)
    assert (hi_l - lo_l) / 2 == pytest.approx(1.96 * large.std() / math.sqrt(large.size), rel=0.1)
    assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)  # seeded
    assert bootstrap_ci(small, seed=3) != bootstrap_ci(small, seed=4)


def test_bootstrap_ci_other_statistics_and_errors():
    x = np.arange(1.0, 51.0)
    lo, hi = bootstrap_ci(x, stat=np.median, n=500)
    assert lo < 25.5 < hi
    # a statistic without axis= is applied one resample at a time, same resamples
    assert bootstrap_ci(x, stat=lambda v: float(np.mean(v)), n=300) == pytest.approx(bootstrap_ci(x, n=300))
    assert bootstrap_ci([7.0, 7.0, 7.0]) == (7.0, 7.0)
    lo90, hi90 = bootstrap_ci(x, level=0.9)
    lo99, hi99 = bootstrap_ci(x, level=0.99)
    assert lo99 < lo90 and hi90 < hi99
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(x, level=1.5)


# --------------------------------------------------------------------------- Spearman


@pytest.mark.parametrize("n,seed", [(3, 0), (4, 1), (8, 2), (30, 3), (200, 4)])
def test_spearman_matches_scipy(n, seed):
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    x = rng.integers(0, max(3, n // 3), n).astype(float)  # ties
    y = x + rng.normal(0, 2, n)
    rho, p = spearman(x, y)
    ref = scipy_stats.spearmanr(x, y)
    assert rho == pytest.approx(ref.statistic, rel=1e-12, abs=1e-14)
    assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)


def test_spearman_edges():
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == (-1.0, 0.0)
    rho, p = spearman([1, 2], [1, 2])
    assert rho == 1.0 and math.isnan(p)  # n < 3: no p
    assert all(math.isnan(v) for v in spearman([1, 1, 1], [1, 2, 3]))  # constant input
    assert all(math.isnan(v) for v in spearman([1, math.nan, 3], [1, 2, 3]))
    with pytest.raises(ValueError, match="differ in length"):
        spearman([1, 2, 3], [1, 2])


# --------------------------------------------------------------------------- dependencies


def test_module_level_imports_are_numpy_pandas_and_the_standard_library():
    tree = ast.parse((ROOT / "retrieval_heads" / "stats.py").read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "stats imports nothing from the package"
            top.add(node.module.split(".")[0])
    assert top - sys.stdlib_module_names - {"__future__"} == {"numpy", "pandas"}


def test_works_without_lifelines_and_scipy():
    code = (
        "import sys\n"
        "for m in ('lifelines', 'scipy'): sys.modules[m] = None\n"
        "from retrieval_heads import stats as s\n"
        "km = s.kaplan_meier([1, 2, 2, 3, 4], [1, 1, 0, 1, 0]); assert abs(km.survival.iloc[-1] - 0.3) < 1e-12\n"
        "assert s.km_median([1, 2, 3]) == 2.0\n"
        "r = s.logrank_trend([1, 2, 3, 4, 5, 6], [1, 1, 1, 1, 1, 0], [64, 64, 128, 128, 256, 256])\n"
        "assert 0 < r['p'] < 0.05\n"
        "lo, hi = s.bootstrap_ci([1.0, 2.0, 3.0], n=100); assert lo <= 2 <= hi\n"
        "rho, p = s.spearman([1, 2, 3, 4], [1, 3, 2, 4]); assert abs(rho - 0.8) < 1e-12 and 0 < p < 1\n"
        "try:\n    s.cox_log_window([1, 2], [1, 1], [64, 128])\nexcept ImportError as e:\n"
        "    assert 'survival' in str(e)\nelse:\n    raise AssertionError('no ImportError')\n"
        "assert 'scipy.stats' not in sys.modules\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert stats.__name__ == "retrieval_heads.stats"
