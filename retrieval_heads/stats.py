"""Statistics for formation times that may be right-censored, and small helpers.

A run whose retrieval head never forms within its budget is *censored* at its last step (or
token count): it is known only that formation, if it comes, comes later. Dropping such runs,
or counting them as forming at the budget, biases every summary towards "forms early"; the
survival estimates here use them correctly.

- :func:`kaplan_meier`, :func:`km_median`: the fraction of runs not yet formed over time, and
  the time by which half have formed (``inf`` when fewer than half ever form);
- :func:`logrank_trend`: the log-rank test for a trend across ordered groups (windows);
- :func:`cox_log_window`: a Cox model of the hazard of forming against ``log2(window)``
  (needs lifelines, the ``analyses`` extra);
- :func:`bootstrap_ci`: a seeded percentile bootstrap interval;
- :func:`spearman`: Spearman's rank correlation with its t-approximation p-value.

Everything except :func:`cox_log_window` needs only numpy, pandas and :mod:`math`.

    >>> km = kaplan_meier([1, 2, 2, 3, 4], observed=[1, 1, 0, 1, 0])
    >>> km["survival"].round(3).tolist()
    [0.8, 0.6, 0.3, 0.3]
    >>> km_median([1, 2, 2, 3, 4], observed=[1, 1, 0, 1, 0])
    3.0
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

_Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal


def _survival_data(times, observed, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(times as float, observed as bool), checked: same length, not empty, finite, >= 0."""
    t = np.asarray(times, dtype=float).ravel()
    e = np.ones(t.shape, dtype=bool) if observed is None else np.asarray(observed).ravel()
    if e.shape != t.shape:
        raise ValueError(f"{where}: times and observed differ in length ({t.size} vs {e.size})")
    if t.size == 0:
        raise ValueError(f"{where}: no times given")
    if not np.all(np.isfinite(t)):
        raise ValueError(f"{where}: times must be finite (a run that never forms is censored at its last "
                         "step: give that step with observed=False)")
    if np.any(t < 0):
        raise ValueError(f"{where}: times must be >= 0")
    if e.dtype != bool:
        ef = np.asarray(e, dtype=float)
        if not np.all(np.isin(ef, (0.0, 1.0))):
            raise ValueError(f"{where}: observed must be booleans (or 0/1)")
        e = ef.astype(bool)
    return t, e


def kaplan_meier(times, observed=None, level: float = 0.95) -> pd.DataFrame:
    """The Kaplan-Meier estimate of the fraction of runs not yet formed, one row per distinct time.

    ``times``: formation times (tokens or steps); ``observed``: True where the head formed at
    that time, False where the run was censored there (never formed within its budget); None:
    all observed. Columns:

    - ``time``, ``at_risk`` (runs with time >= this time), ``events`` (formed at it),
      ``censored`` (censored at it; a censoring at an event time counts as after the event);
    - ``survival``: S(t), the estimated fraction not yet formed just after ``time``;
    - ``variance``: Greenwood's variance of S(t);
    - ``ci_low``, ``ci_high``: the pointwise ``level`` interval from the log-log transform
      (exponential Greenwood, as lifelines), which stays inside [0, 1]. Where S(t) is 1 the
      interval is (1, 1); where it is 0, (0, 0) with variance 0.

    Before the first time S is 1 (prepend ``(0, 1)`` to draw the step curve).

        >>> kaplan_meier([3, 1, 2], observed=[True, True, False])[["time", "at_risk", "events", "survival"]]
           time  at_risk  events  survival
        0   1.0        3       1  0.666667
        1   2.0        2       0  0.666667
        2   3.0        1       1  0.000000
    """
    t, e = _survival_data(times, observed, "kaplan_meier")
    if not 0 < level < 1:
        raise ValueError(f"kaplan_meier: level must be in (0, 1), got {level}")
    uniq, inv = np.unique(t, return_inverse=True)
    total = np.bincount(inv, minlength=uniq.size)
    events = np.bincount(inv, weights=e.astype(float), minlength=uniq.size).astype(int)
    at_risk = t.size - np.concatenate(([0], np.cumsum(total)[:-1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        surv = np.cumprod(1.0 - events / at_risk)
        # Greenwood: S^2 * sum d / (n (n - d)); the term where n == d (S drops to 0) is left out
        term = np.where(at_risk > events, events / (at_risk * (at_risk - events)), 0.0)
        green = np.cumsum(term)
        var = surv ** 2 * green
        z = _normal_quantile(0.5 + level / 2)
        logs = np.log(surv)
        low = np.exp(-np.exp(np.log(-logs) - z * np.sqrt(green) / logs))
        high = np.exp(-np.exp(np.log(-logs) + z * np.sqrt(green) / logs))
    low = np.where(surv >= 1.0, 1.0, np.where(surv <= 0.0, 0.0, low))
    high = np.where(surv >= 1.0, 1.0, np.where(surv <= 0.0, 0.0, high))
    var = np.where(surv <= 0.0, 0.0, var)
    return pd.DataFrame({"time": uniq, "at_risk": at_risk.astype(int), "events": events,
                         "censored": (total - events).astype(int), "survival": surv, "variance": var,
                         "ci_low": low, "ci_high": high})


def km_median(times, observed=None) -> float:
    """The Kaplan-Meier median: the first time at which S(t) <= 0.5; ``math.inf`` when it never does.

    ``times`` may also be a table from :func:`kaplan_meier` (then ``observed`` is not used).
    ``inf`` means fewer than half the runs are estimated to form by the last time seen: report
    it as "> last time", never as the last time.

        >>> km_median([10, 20, 30, 40], [True, False, False, False])
        inf
        >>> km_median([10, 20, 30, 40])
        20.0
    """
    km = times if isinstance(times, pd.DataFrame) else kaplan_meier(times, observed)
    below = km.loc[km["survival"] <= 0.5 + 1e-12, "time"]
    return float(below.iloc[0]) if len(below) else math.inf


def _normal_quantile(p: float) -> float:
    """The standard normal quantile (bisection on erfc; exact enough for intervals)."""
    if abs(p - 0.975) < 1e-15:
        return _Z95
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def chi2_sf_1df(x: float) -> float:
    """P(X > x) for X chi-square with 1 degree of freedom: ``erfc(sqrt(x / 2))``.

        >>> round(chi2_sf_1df(3.841458820694124), 6)
        0.05
    """
    if not math.isfinite(x):
        return 0.0 if x > 0 else math.nan
    return math.erfc(math.sqrt(max(x, 0.0) / 2))


def logrank_trend(times, observed, groups, scores=None) -> dict:
    """The log-rank test for trend across ordered groups (e.g. SWA windows), chi-square with 1 dof.

    At each distinct event time j, with n_kj runs of group k at risk, N_j in all and D_j events,
    group k expects E_kj = D_j n_kj / N_j of them. With scores s_k the statistic is
    U = sum_k s_k (O_k - E_k), its variance V = sum_j D_j (N_j - D_j) / (N_j - 1)
    [sum_k s_k^2 p_kj - (sum_k s_k p_kj)^2] (p_kj = n_kj / N_j, the hypergeometric variance of
    the log-rank test), and ``statistic`` = U^2 / V. For two groups with scores 0/1 this is the
    ordinary log-rank test. ``p`` is the chi-square (1 dof) upper tail, ``erfc(sqrt(stat / 2))``.

    ``groups``: one label per run; ``scores``: a mapping group -> score, or a sequence in the
    order of the sorted distinct groups; by default ``log2(group)`` (groups must be positive
    numbers, e.g. windows). Returns a dict with ``statistic``, ``p``, ``df`` (1), ``observed``
    and ``expected`` (dicts group -> events), ``scores`` (dict), and ``z`` = U / sqrt(V): z < 0
    means groups of higher score form fewer times than expected (later: larger windows slower).
    ``statistic``, ``p`` and ``z`` are NaN when V is 0 (no events, or one score for all).

        >>> r = logrank_trend([1, 2, 3, 4, 5, 6], [1, 1, 1, 1, 1, 0], [64, 64, 128, 128, 256, 256])
        >>> round(r["statistic"], 3), round(r["z"], 3), r["df"]
        (6.672, -2.583, 1)
    """
    t, e = _survival_data(times, observed, "logrank_trend")
    g = np.asarray(groups, dtype=object).ravel()
    if g.shape != t.shape:
        raise ValueError(f"logrank_trend: times and groups differ in length ({t.size} vs {g.size})")
    labels = sorted(set(g.tolist()))
    if len(labels) < 2:
        raise ValueError(f"logrank_trend: needs at least 2 groups, got {labels}")
    if scores is None:
        try:
            s = np.array([math.log2(float(x)) for x in labels])
        except (TypeError, ValueError) as exc:
            raise ValueError("logrank_trend: default scores are log2(group), so groups must be positive "
                             f"numbers (got {labels[:5]}); give scores= otherwise") from exc
    elif isinstance(scores, Mapping):
        missing = [x for x in labels if x not in scores]
        if missing:
            raise ValueError(f"logrank_trend: scores has no entry for groups {missing}")
        s = np.array([float(scores[x]) for x in labels])
    else:
        s = np.asarray(scores, dtype=float).ravel()
        if s.size != len(labels):
            raise ValueError(f"logrank_trend: {s.size} scores for {len(labels)} groups {labels}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"logrank_trend: scores must be finite, got {s.tolist()}")

    event_times = np.unique(t[e])
    at_risk = np.empty((len(labels), event_times.size))
    events = np.empty_like(at_risk)
    for k, lab in enumerate(labels):
        mask = g == lab
        tk = np.sort(t[mask])
        at_risk[k] = tk.size - np.searchsorted(tk, event_times, side="left")
        tek = t[mask & e]
        events[k] = np.searchsorted(np.sort(tek), event_times, side="right") - np.searchsorted(
            np.sort(tek), event_times, side="left")
    n_all = at_risk.sum(axis=0)
    d_all = events.sum(axis=0)
    p = at_risk / n_all
    expected = (p * d_all).sum(axis=1)
    obs = events.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(n_all > 1, d_all * (n_all - d_all) / (n_all - 1), 0.0)
    var = float(np.sum(w * ((s[:, None] ** 2 * p).sum(axis=0) - (s[:, None] * p).sum(axis=0) ** 2)))
    u = float(np.dot(s, obs - expected))
    if var <= 1e-12 * max(1.0, float(np.sum(w)) * float(np.ptp(s)) ** 2):
        stat = z = pval = math.nan
    else:
        stat = u * u / var
        z = u / math.sqrt(var)
        pval = chi2_sf_1df(stat)
    return {"statistic": stat, "p": pval, "df": 1, "z": z,
            "observed": {lab: float(o) for lab, o in zip(labels, obs)},
            "expected": {lab: float(x) for lab, x in zip(labels, expected)},
            "scores": {lab: float(x) for lab, x in zip(labels, s)}}


def cox_log_window(times, observed, windows, level: float = 0.95) -> dict:
    """A Cox proportional-hazards fit of formation on the covariate ``log2(window)`` (lifelines).

    The "hazard" is the rate of forming: with censoring handled, a NEGATIVE ``coef`` means a
    larger window forms later (a doubling of the window multiplies the rate of forming by
    ``hazard_ratio`` = exp(coef) < 1). Returns ``coef``, ``hazard_ratio``, ``ci_low`` and
    ``ci_high`` (the ``level`` interval of ``coef``; exponentiate for the hazard ratio's, also
    given as ``hr_ci_low``/``hr_ci_high``), ``p`` (Wald), ``se``, ``n`` and ``events``. Ties:
    Efron's method (lifelines' default).

    Needs lifelines (``pip install 'retrieval-heads[survival]'``); raises ImportError without.

        >>> r = cox_log_window([1, 2, 3, 4, 5, 6, 7, 8], [1] * 8,
        ...                    [64, 128, 64, 256, 128, 256, 512, 512])  # doctest: +SKIP
        >>> r["coef"] < 0  # doctest: +SKIP
        True
    """
    try:
        from lifelines import CoxPHFitter
    except ImportError as exc:
        raise ImportError("cox_log_window needs lifelines: install the survival extra, "
                          "pip install 'retrieval-heads[survival]' (or pip install lifelines)") from exc
    t, e = _survival_data(times, observed, "cox_log_window")
    w = np.asarray(windows, dtype=float).ravel()
    if w.shape != t.shape:
        raise ValueError(f"cox_log_window: times and windows differ in length ({t.size} vs {w.size})")
    if not np.all(np.isfinite(w) & (w > 0)):
        raise ValueError("cox_log_window: windows must be positive numbers")
    if not e.any():
        raise ValueError("cox_log_window: no observed formation (all censored): nothing to fit")
    df = pd.DataFrame({"time": t, "formed": e.astype(int), "log2_window": np.log2(w)})
    with warnings.catch_warnings():
        # lifelines' own use of pandas (deprecations); its ConvergenceWarning still shows
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        cph = CoxPHFitter(alpha=1 - level).fit(df, duration_col="time", event_col="formed")
    row = cph.summary.loc["log2_window"]
    coef, se = float(row["coef"]), float(row["se(coef)"])
    lo = float(next(v for k, v in row.items() if str(k).startswith("coef lower")))
    hi = float(next(v for k, v in row.items() if str(k).startswith("coef upper")))
    return {"coef": coef, "hazard_ratio": math.exp(coef), "ci_low": lo, "ci_high": hi,
            "hr_ci_low": math.exp(lo), "hr_ci_high": math.exp(hi), "p": float(row["p"]), "se": se,
            "n": int(t.size), "events": int(e.sum())}


def bootstrap_ci(values, stat: Callable = np.mean, n: int = 2000, level: float = 0.95,
                 seed: int | None = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of ``stat(values)``: ``n`` resamples with replacement, seeded.

    ``stat`` takes a 1-d array (numpy reductions such as ``np.mean``/``np.median`` are applied
    to all resamples at once through ``axis=1``). Raises ValueError on empty ``values``.

        >>> bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0], n=500, seed=0)
        (2.0, 4.2)
    """
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("bootstrap_ci: no values to resample (empty input)")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_ci: level must be in (0, 1), got {level}")
    if n < 1:
        raise ValueError(f"bootstrap_ci: n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    boots = np.empty(n)
    chunk = max(1, min(n, 2_000_000 // x.size))
    for start in range(0, n, chunk):
        idx = rng.integers(0, x.size, size=(min(chunk, n - start), x.size))
        sample = x[idx]
        try:
            vals = np.asarray(stat(sample, axis=1), dtype=float)
            if vals.shape != (sample.shape[0],):
                raise TypeError
        except TypeError:
            vals = np.array([float(stat(row)) for row in sample])
        boots[start:start + sample.shape[0]] = vals
    alpha = (1 - level) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    return float(low), float(high)


def _rank(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given their average rank."""
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    first = np.concatenate(([True], sorted_a[1:] != sorted_a[:-1]))
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.concatenate((starts[1:], [a.size]))
    avg = (starts + ends + 1) / 2.0  # mean of positions start+1 .. end
    ranks = np.empty(a.size)
    ranks[order] = avg[group]
    return ranks


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta I_x(a, b) (continued fraction, Lentz; math only)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 10_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * f / a


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman's rho (Pearson correlation of average ranks) and its two-sided p-value.

    p uses the t approximation, t = rho sqrt((n - 2) / (1 - rho^2)) with n - 2 dof (as
    ``scipy.stats.spearmanr``), computed with :mod:`math` only; NaN for n < 3. rho is NaN when
    either input is constant; both are NaN when an input holds NaN.

        >>> rho, p = spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7])
        >>> round(rho, 4), round(p, 4)
        (0.8208, 0.0886)
    """
    a = np.asarray(x, dtype=float).ravel()
    b = np.asarray(y, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman: x and y differ in length ({a.size} vs {b.size})")
    n = a.size
    if n < 2 or np.isnan(a).any() or np.isnan(b).any():
        return math.nan, math.nan
    ra, rb = _rank(a), _rank(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float(np.dot(ra, ra)) * float(np.dot(rb, rb)))
    if denom == 0.0:
        return math.nan, math.nan
    rho = max(-1.0, min(1.0, float(np.dot(ra, rb)) / denom))
    if n < 3:
        return rho, math.nan
    dof = n - 2
    if abs(rho) >= 1.0:
        return rho, 0.0
    t2 = rho * rho * dof / (1.0 - rho * rho)
    return rho, _betainc(dof / 2.0, 0.5, dof / (dof + t2))
