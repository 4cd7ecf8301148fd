"""Large-Window Laziness figures over many runs (windows x seeds x formation measures).

Two tables feed them (``retrieval_heads.pipeline.report.compare_runs`` builds both from scan
folders):

* a **summary**, one row per run x measure: ``label`` (str), ``window`` (int; NaN for the
  all-full-attention reference), ``seed`` (int), ``measure`` (str: "mass", "copy_tf", "copy"),
  ``formed`` (bool), ``formation_tokens`` (float, NaN when not formed), ``censored_at_tokens``
  (float: the last checkpoint's tokens when not formed, NaN when formed), ``budget_tokens``;
* **curves**, one row per run x measure x checkpoint: ``label``, ``window``, ``seed``,
  ``measure``, ``tokens_seen``, ``best_f_score`` (best full-attention head's score for the
  measure), ``niah_acc`` (NIAH accuracy at that checkpoint, the same for every measure).

Functions:

* :func:`formation_vs_window` - tokens to formation vs SWA window (log2 axis): one marker per
  seed (filled circle = formed, open up-triangle = censored, drawn at its censoring point),
  mean over formed seeds with a 95% bootstrap interval, the full-attention reference as a band;
* :func:`score_curves` / :func:`niah_curves` - best F-head score / NIAH accuracy vs tokens
  seen, one line per window (median over seeds) with a min-max band;
* :func:`formation_summary_table` - the censoring-aware table (formed/total, every seed's
  formation tokens or "censored at X", mean and 95% interval over formed seeds).

Every figure says in its title why it is empty when there is nothing to draw.

    >>> import retrieval_heads.laziness_plots as lp
    >>> summary, curves = lp.synthetic_example()
    >>> lp.formation_vs_window(summary, "copy").layout.xaxis.type
    'log'
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

SUMMARY_COLUMNS = ["label", "window", "seed", "measure", "formed", "formation_tokens", "censored_at_tokens",
                   "budget_tokens"]
CURVE_COLUMNS = ["label", "window", "seed", "measure", "tokens_seen", "best_f_score", "niah_acc"]
REFERENCE_NAME = "full attention"
FORMED_COLOUR = "#1f77b4"
CENSORED_COLOUR = "#d62728"
REFERENCE_COLOUR = "#555555"


# -- small helpers -------------------------------------------------------------------------

def tokens_text(v) -> str:
    """``1234567.0`` -> ``'1,234,567'``; ``'-'`` for None/NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{int(round(float(v))):,}"


def window_text(w) -> str:
    """``64.0`` -> ``'64'``; NaN/None -> ``'full attention'``."""
    if w is None or (isinstance(w, float) and math.isnan(w)):
        return REFERENCE_NAME
    return str(int(w))


def _check(df: pd.DataFrame, columns: list[str], what: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)}; expected {', '.join(columns)}")
    d = df.copy()
    d["window"] = pd.to_numeric(d["window"], errors="coerce").astype("float64")
    return d


def bootstrap_mean_ci(values, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of the non-NaN ``values`` and its percentile-bootstrap
    ``level`` interval (NaN bounds for fewer than 2 values). Uses
    ``retrieval_heads.stats.bootstrap_ci`` when that module exists and answers with two
    bounds; else a local percentile bootstrap of the mean (seeded, so figures are stable)."""
    v = np.asarray([x for x in values if x is not None], dtype="float64")
    v = v[~np.isnan(v)]
    if not len(v):
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan
    shared = _stats_bootstrap(v, level, n_boot, seed)
    if shared is not None:
        return mean, shared[0], shared[1]
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return mean, float(lo), float(hi)


def _stats_bootstrap(v: np.ndarray, level: float, n_boot: int, seed: int) -> tuple[float, float] | None:
    """``retrieval_heads.stats.bootstrap_ci``'s (low, high) for the mean of ``v``, or None when
    that module is absent or its answer is not two finite bounds around the mean."""
    try:
        from . import stats  # written alongside this module; optional
    except ImportError:
        return None
    fn = getattr(stats, "bootstrap_ci", None)
    if fn is None:
        return None
    for kwargs in ({"n": n_boot, "level": level, "seed": seed}, {}):
        try:
            r = fn(v, **kwargs)
        except Exception:  # noqa: BLE001 - an unknown signature: fall back to the local bootstrap
            continue
        if isinstance(r, dict):
            r = (r.get("low", r.get("lo")), r.get("high", r.get("hi")))
        elif hasattr(r, "low") and hasattr(r, "high"):
            r = (r.low, r.high)
        try:
            lo, hi = (float(x) for x in list(r)[-2:])
        except (TypeError, ValueError):
            continue
        if math.isfinite(lo) and math.isfinite(hi) and lo <= float(v.mean()) <= hi:
            return lo, hi
    return None


def _note(title_note: str) -> str:
    """``title_note`` as a bold red second title line ("" when empty)."""
    return f"<br><span style='color:{CENSORED_COLOUR}'><b>{title_note}</b></span>" if title_note else ""


def _empty(title: str, note: str = "") -> go.Figure:
    """A figure without data whose title (and centred note) says why."""
    fig = go.Figure()
    fig.update_layout(title=title, height=360, xaxis=dict(visible=False), yaxis=dict(visible=False),
                      template="plotly_white",
                      annotations=[dict(text=note or title, xref="paper", yref="paper", x=0.5, y=0.5,
                                        showarrow=False, font=dict(size=14, color="#666"))])
    return fig


def _window_order(windows) -> list[float]:
    """SWA windows ascending, the full-attention reference (NaN) last."""
    ws = {float(w) for w in windows if not pd.isna(w)}
    out: list[float] = sorted(ws)
    if any(pd.isna(w) for w in windows):
        out.append(math.nan)
    return out


def window_colours(windows) -> dict:
    """{window: colour}: SWA windows along Viridis (small = dark), the reference grey; keyed by
    ``window_text``."""
    swa = [w for w in _window_order(windows) if not math.isnan(w)]
    pos = [0.0] if len(swa) == 1 else list(np.linspace(0.0, 0.85, len(swa)))
    cols = dict(zip(map(window_text, swa), sample_colorscale("Viridis", pos)))
    cols[REFERENCE_NAME] = REFERENCE_COLOUR
    return cols


def _rgba(colour: str, alpha: float) -> str:
    if colour.startswith("rgb("):
        return colour.replace("rgb(", "rgba(").replace(")", f", {alpha})")
    h = colour.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r}, {g}, {b}, {alpha})"


def _seed_count_text(counts) -> str:
    counts = sorted(set(int(c) for c in counts))
    if not counts:
        return "no seeds"
    if len(counts) == 1:
        return f"{counts[0]} seed{'s' if counts[0] != 1 else ''} per window"
    return f"{counts[0]}-{counts[-1]} seeds per window"


# -- figure 1: formation vs window ----------------------------------------------------------

def formation_vs_window(summary: pd.DataFrame, measure: str, *, level: float = 0.95, n_boot: int = 2000,
                        title_note: str = "") -> go.Figure:
    """Tokens seen until the first full-attention retrieval head forms (by ``measure``) vs the
    SWA window (log2 axis, ticks at the windows). One marker per seed: a filled circle where it
    formed, an open up-triangle at its censoring point (the last checkpoint's tokens) where it
    did not; the mean over the formed seeds with its ``level`` bootstrap interval; the
    all-full-attention reference (``window`` NaN) as a horizontal band (min-max over its formed
    seeds, dashed mean) or, when it never formed, a dotted line at its censoring level.
    ``title_note`` (e.g. "SYNTHETIC DATA") is a second, bold red title line."""
    s = _check(summary, SUMMARY_COLUMNS, "formation_vs_window: summary")
    note = _note(title_note)
    d = s[s["measure"] == measure]
    if d.empty:
        have = ", ".join(map(str, dict.fromkeys(s["measure"]))) or "none"
        return _empty(f"Formation vs SWA window: no run of measure {measure!r} in the table{note}",
                      f"measures in the table: {have}")
    d = d.assign(formed=d["formed"].astype(bool))
    swa, ref = d[d["window"].notna()], d[d["window"].isna()]
    if swa.empty:
        return _empty(f"Formation vs SWA window ({measure}): no SWA run in the table, only the "
                      f"full-attention reference ({len(ref)} run(s)){note}")
    windows = sorted(swa["window"].unique())
    x_lo, x_hi = windows[0] / 2 ** 0.8, windows[-1] * 2 ** 0.6
    fig = go.Figure()
    ys: list[float] = []

    # the reference first, so that it lies under the runs
    ys += _reference_traces(fig, ref, x_lo, x_hi)

    # one marker per seed, just left of the window's tick (the mean and its interval sit on
    # it), spread a little along the (log) x axis so that seeds do not hide each other
    pts = []
    for w in windows:
        g = swa[swa["window"] == w].sort_values(["seed", "label"])
        k = len(g)
        step = min(0.1, 0.4 / max(k, 1))
        for i, r in enumerate(g.itertuples()):
            y = r.formation_tokens if r.formed else r.censored_at_tokens
            pts.append({"x": w * 2 ** (-0.12 - step * (k - 1 - i)), "y": float(y), "formed": r.formed,
                        "label": str(r.label), "seed": int(r.seed), "window": int(w)})
    p = pd.DataFrame(pts)
    formed, cens = p[p["formed"]], p[~p["formed"]]
    if len(formed):
        fig.add_trace(go.Scatter(
            x=formed["x"], y=formed["y"], mode="markers", name="formed (one circle per seed)",
            marker=dict(symbol="circle", size=10, color=FORMED_COLOUR, opacity=0.8,
                        line=dict(width=1, color="white")),
            customdata=formed[["label", "seed", "window"]].values,
            hovertemplate="%{customdata[0]}, seed %{customdata[1]}<br>window %{customdata[2]}: "
                          "formed at %{y:,.0f} tokens<extra></extra>"))
    if len(cens):
        levels = sorted(set(cens["y"]))
        by = (f"{tokens_text(levels[0])} tokens" if len(levels) == 1
              else f"its last checkpoint, {tokens_text(levels[0])}-{tokens_text(levels[-1])} tokens")
        fig.add_trace(go.Scatter(
            x=cens["x"], y=cens["y"], mode="markers", name=f"censored (did not form by {by})",
            marker=dict(symbol="triangle-up-open", size=13, color=CENSORED_COLOUR, line=dict(width=2)),
            customdata=cens[["label", "seed", "window"]].values,
            hovertemplate="%{customdata[0]}, seed %{customdata[1]}<br>window %{customdata[2]}: "
                          "not formed by %{y:,.0f} tokens (censored)<extra></extra>"))
    ys += list(p["y"])

    # mean over formed seeds with a bootstrap interval
    rows = []
    for w in windows:
        g = swa[swa["window"] == w]
        f = g.loc[g["formed"], "formation_tokens"].astype(float)
        mean, lo, hi = bootstrap_mean_ci(f, level=level, n_boot=n_boot)
        rows.append({"window": w, "mean": mean, "lo": lo, "hi": hi, "n_formed": len(f), "n": len(g)})
    m = pd.DataFrame(rows)
    mm = m[m["n_formed"] > 0]
    if len(mm):
        ci = f"{round(level * 100)}% bootstrap CI"
        fig.add_trace(go.Scatter(
            x=mm["window"], y=mm["mean"], mode="lines+markers",
            name=f"mean of formed seeds ({ci})",
            line=dict(color="black", width=1.5, dash="dot"),
            marker=dict(symbol="diamond-wide", size=9, color="black"),
            error_y=dict(type="data", symmetric=False, thickness=1.5, width=8, color="black",
                         array=(mm["hi"] - mm["mean"]).fillna(0).values,
                         arrayminus=(mm["mean"] - mm["lo"]).fillna(0).values),
            customdata=np.stack([mm["n_formed"], mm["n"], mm["lo"].fillna(-1), mm["hi"].fillna(-1)], axis=1),
            hovertemplate="window %{x}: mean %{y:,.0f} tokens over %{customdata[0]} of %{customdata[1]} "
                          f"seeds<br>{ci}: %{{customdata[2]:,.0f}} to %{{customdata[3]:,.0f}} "
                          "(-1: fewer than 2 formed)<extra></extra>"))
        ys += [v for v in mm["hi"] if not pd.isna(v)]

    # "k/n formed" above each window
    annotations = [dict(x=math.log10(r.window), y=1.0, xref="x", yref="paper", yanchor="bottom",
                        text=f"{r.n_formed}/{r.n} formed", showarrow=False,
                        font=dict(size=11, color="black" if r.n_formed == r.n else CENSORED_COLOUR))
                   for r in m.itertuples()]
    y_max = max([y for y in ys if not pd.isna(y)] + [0.0])
    y_top = y_max * 1.12 if y_max > 0 else 1.0
    seeds = swa.groupby("window")["seed"].nunique()
    fig.update_layout(
        title=dict(text=f"Formation vs SWA window: first F retrieval head by '{measure}', "
                        f"{_seed_count_text(seeds)}{note}", y=0.96),
        xaxis=dict(title="SWA window (log2 scale)", type="log", tickvals=windows,
                   ticktext=[window_text(w) for w in windows], range=[math.log10(x_lo), math.log10(x_hi)]),
        yaxis=dict(title="tokens seen at formation", range=[0, y_top], tickformat="~s", rangemode="tozero"),
        legend=dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0),
        annotations=annotations, height=560, margin=dict(t=100, b=150), template="plotly_white",
        showlegend=True)  # plotly hides a one-trace legend: the censoring note must stay
    return fig


def _reference_traces(fig: go.Figure, ref: pd.DataFrame, x_lo: float, x_hi: float) -> list[float]:
    """Add the full-attention reference band/line; return its y values (for the y range)."""
    if ref.empty:
        return []
    n = len(ref)
    f = ref.loc[ref["formed"], "formation_tokens"].astype(float).dropna()
    grp = dict(legendgroup="reference")
    if len(f):
        mean, lo, hi = float(f.mean()), float(f.min()), float(f.max())
        if hi > lo:
            fig.add_trace(go.Scatter(
                x=[x_lo, x_hi, x_hi, x_lo, x_lo], y=[lo, lo, hi, hi, lo], mode="lines", fill="toself",
                fillcolor=_rgba(REFERENCE_COLOUR, 0.18), line=dict(width=0), hoverinfo="skip",
                name=f"full attention: min-max of {len(f)} formed seed(s)", **grp))
        fig.add_trace(go.Scatter(
            x=[x_lo, x_hi], y=[mean, mean], mode="lines", line=dict(color=REFERENCE_COLOUR, dash="dash", width=2),
            name=f"full attention: mean {tokens_text(mean)} tokens ({len(f)}/{n} formed)",
            hovertemplate="full-attention reference: mean %{y:,.0f} tokens<extra></extra>", **grp))
        return [lo, hi]
    level = float(ref["censored_at_tokens"].max())
    fig.add_trace(go.Scatter(
        x=[x_lo, x_hi], y=[level, level], mode="lines", line=dict(color=REFERENCE_COLOUR, dash="dot", width=2),
        name=f"full attention: did not form by {tokens_text(level)} tokens (0/{n} formed)",
        hovertemplate="full-attention reference: censored at %{y:,.0f} tokens<extra></extra>", **grp))
    return [level]


# -- figures 2 and 3: curves per window ------------------------------------------------------

def _band_traces(fig: go.Figure, d: pd.DataFrame, y: str, hover_name: str) -> None:
    """One line per window (median over seeds at each tokens_seen, each seed interpolated
    between its own checkpoints) and a min-max band over seeds."""
    colours = window_colours(d["window"])
    for w in _window_order(d["window"]):
        g = d[d["window"].isna()] if math.isnan(w) else d[d["window"] == w]
        g = g.dropna(subset=[y])
        if g.empty:
            continue
        piv = g.pivot_table(index="tokens_seen", columns="seed", values=y, aggfunc="mean").sort_index()
        piv = piv.interpolate(method="index", limit_area="inside")
        med, lo, hi = piv.median(axis=1), piv.min(axis=1), piv.max(axis=1)
        n = piv.shape[1]
        wt = window_text(w)
        name = f"{'w=' + wt if not math.isnan(w) else wt} ({n} seed{'s' if n != 1 else ''})"
        col = colours[wt]
        x = list(piv.index.astype(float))
        if n > 1:
            fig.add_trace(go.Scatter(x=x + x[::-1], y=list(hi) + list(lo)[::-1], fill="toself", mode="lines",
                                     line=dict(width=0), fillcolor=_rgba(col, 0.18), hoverinfo="skip",
                                     legendgroup=wt, showlegend=False, name=f"{name} min-max"))
        fig.add_trace(go.Scatter(x=x, y=list(med), mode="lines+markers", name=name, legendgroup=wt,
                                 line=dict(color=col, width=2.5, dash="dash" if math.isnan(w) else "solid"),
                                 marker=dict(size=5),
                                 hovertemplate=f"{name}: median {hover_name} %{{y:.3f}} at "
                                               "%{x:,.0f} tokens<extra></extra>"))


def score_curves(curves: pd.DataFrame, measure: str, *, threshold: float | None = None,
                 title_note: str = "") -> go.Figure:
    """Best full-attention head's ``measure`` score vs tokens seen: one line per window (median
    over seeds), band = min-max over seeds; a dashed line at ``threshold`` unless None."""
    c = _check(curves, CURVE_COLUMNS, "score_curves: curves")
    note = _note(title_note)
    rows = c[c["measure"] == measure]
    d = rows.dropna(subset=["best_f_score"])
    if d.empty and not rows.empty:  # the measure is there, but undefined at every checkpoint
        from .detect.metrics import REGISTRY

        spec = REGISTRY.get(measure)
        why = (f" ({measure} counts only correctly answered samples: no run answered one)"
               if spec is not None and spec.over == "counted" else "")
        return _empty(f"Best F-head '{measure}' score: undefined at every checkpoint of every run{note}",
                      f"{len(rows)} checkpoints, none with a score{why}")
    if d.empty:
        have = ", ".join(map(str, dict.fromkeys(c["measure"]))) or "none"
        return _empty(f"Best F-head score: no curve of measure {measure!r} in the table{note}",
                      f"measures in the table: {have}")
    fig = go.Figure()
    _band_traces(fig, d, "best_f_score", measure)
    if threshold is not None:
        fig.add_hline(y=threshold, line_dash="dot", line_color="#888", annotation_text=f"threshold {threshold}")
    top = max(1.0, float(d["best_f_score"].max()), threshold or 0.0) * 1.05
    fig.update_layout(title=f"Best F-head '{measure}' score vs tokens seen (median over seeds, band: min-max){note}",
                      xaxis=dict(title="tokens seen", tickformat="~s"),
                      yaxis=dict(title=f"best F-head {measure} score", range=[0, top]),
                      legend=dict(title="SWA window"), height=460, template="plotly_white", showlegend=True)
    return fig


def niah_curves(curves: pd.DataFrame, *, title_note: str = "") -> go.Figure:
    """NIAH accuracy vs tokens seen: one line per window (median over seeds), band = min-max."""
    c = _check(curves, CURVE_COLUMNS, "niah_curves: curves")
    note = _note(title_note)
    d = c.dropna(subset=["niah_acc"]).drop_duplicates(["label", "window", "seed", "tokens_seen"])
    if d.empty:
        return _empty(f"NIAH accuracy: no NIAH accuracy in the table{note}")
    fig = go.Figure()
    _band_traces(fig, d, "niah_acc", "NIAH accuracy")
    fig.update_layout(title=f"NIAH accuracy vs tokens seen (median over seeds, band: min-max){note}",
                      xaxis=dict(title="tokens seen", tickformat="~s"),
                      yaxis=dict(title="NIAH accuracy", range=[0, 1.05]),
                      legend=dict(title="SWA window"), height=460, template="plotly_white", showlegend=True)
    return fig


# -- the censoring-aware table ---------------------------------------------------------------

def formation_summary_table(summary: pd.DataFrame, *, level: float = 0.95, n_boot: int = 2000) -> pd.DataFrame:
    """One row per window x measure (windows ascending, the full-attention reference last):
    ``formed`` ("k/n"), ``per seed`` (each seed's formation tokens, or "censored at X"),
    the mean over formed seeds and its ``level`` bootstrap interval. Every value is a string,
    token counts as integers with thousands separators."""
    s = _check(summary, SUMMARY_COLUMNS, "formation_summary_table: summary")
    pct = f"{round(level * 100)}%"
    cols = ["window", "measure", "formed", "per seed", "mean (formed seeds)", f"{pct} CI (formed seeds)"]
    rows = []
    measures = list(dict.fromkeys(s["measure"]))
    for w in _window_order(s["window"]):
        gw = s[s["window"].isna()] if math.isnan(w) else s[s["window"] == w]
        for meas in measures:
            g = gw[gw["measure"] == meas].sort_values(["seed", "label"])
            if g.empty:
                continue
            formed = g["formed"].astype(bool)
            per = "; ".join(f"seed {int(r.seed)}: " + (tokens_text(r.formation_tokens) if bool(r.formed)
                                                          else f"censored at {tokens_text(r.censored_at_tokens)}")
                            for r in g.itertuples())
            mean, lo, hi = bootstrap_mean_ci(g.loc[formed, "formation_tokens"].astype(float), level=level,
                                             n_boot=n_boot)
            n_f = int(formed.sum())
            ci = (f"[{tokens_text(lo)}, {tokens_text(hi)}]" if n_f >= 2
                  else "- (fewer than 2 formed)")
            rows.append({"window": window_text(w), "measure": meas, "formed": f"{n_f}/{len(g)}", "per seed": per,
                         "mean (formed seeds)": tokens_text(mean), cols[-1]: ci})
    return pd.DataFrame(rows, columns=cols)


# -- synthetic data (docs, screenshots, tests) ----------------------------------------------

def synthetic_example(windows=(64, 256, 1024, 4096), seeds=(0, 1, 2), budget: float = 40_000_000,
                      rng_seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """SYNTHETIC (summary, curves) tables with the laziness shape - larger windows form later,
    the largest window's last seed never forms within ``budget`` - plus a three-seed
    full-attention reference. For documentation and screenshots only; no run produced them."""
    rng = np.random.default_rng(rng_seed)
    measures = ("copy_tf", "copy", "mass")
    steps = np.linspace(0, budget, 41)
    summ, curv = [], []
    for w in [*windows, None]:
        base = 3.5e6 if w is None else 4e6 * (1 + 0.9 * math.log2(w / windows[0]))
        for sd in seeds:
            label = f"SSSF w={w if w is not None else '-'} seed {sd}" if w is not None else f"FFFF seed {sd}"
            t_form = base * math.exp(rng.normal(0, 0.15))
            if w == windows[-1] and sd == seeds[-1]:
                t_form = math.inf  # never forms within the budget
            for mi, meas in enumerate(measures):
                tm = t_form * (1 + 0.12 * mi)
                formed = tm <= budget
                summ.append({"label": label, "window": w, "seed": sd, "measure": meas, "formed": formed,
                             "formation_tokens": tm if formed else math.nan,
                             "censored_at_tokens": math.nan if formed else budget, "budget_tokens": budget})
                for t in steps:
                    score = 0.05 + 0.8 / (1 + math.exp(-(t - tm) / (0.08 * budget))) if math.isfinite(tm) else 0.05
                    score = 0.05 + (score - 0.05) * (1 - 0.15 * mi) + rng.normal(0, 0.01)
                    niah = 0.05 + 0.9 / (1 + math.exp(-(t - t_form * 1.1) / (0.08 * budget))) \
                        if math.isfinite(t_form) else 0.05 + 0.1 * t / budget
                    curv.append({"label": label, "window": w, "seed": sd, "measure": meas, "tokens_seen": t,
                                 "best_f_score": float(np.clip(score, 0, 1)), "niah_acc": float(np.clip(niah, 0, 1))})
    summary = pd.DataFrame(summ, columns=SUMMARY_COLUMNS)
    curves = pd.DataFrame(curv, columns=CURVE_COLUMNS)
    for df in (summary, curves):
        df["window"] = pd.to_numeric(df["window"], errors="coerce").astype("float64")
    # the NIAH accuracy is a property of the checkpoint, the same for every measure
    first = curves[curves["measure"] == measures[0]].set_index(["label", "tokens_seen"])["niah_acc"]
    curves["niah_acc"] = first.reindex(pd.MultiIndex.from_frame(curves[["label", "tokens_seen"]])).values
    return summary, curves
