"""Formation steps of retrieval heads over training, from a scan's tidy scores table.

A head *forms* at the first scanned step from which its score stays >= ``threshold`` at
every later checkpoint (a NaN score, e.g. no correctly answered sample, counts as below).
A run's formation step is the earliest formation step among its full-attention (``F``) heads.

    >>> import pandas as pd
    >>> df = pd.DataFrame({"step": [0, 10, 20], "tokens_seen": [0, 100, 200], "layer": 0, "head": 0,
    ...                    "layer_type": "F", "metric": "copy", "value": [0.3, 0.05, 0.2]})
    >>> formation_table(df)["formation_step"].tolist()
    [20.0]

Per measure, with censoring (``formation_by_measure``): one row per (measure, head) with its
own threshold; a head that has not formed by the last scanned checkpoint is *censored* there
(``censored_at_step``), never given a made-up formation step.

    >>> f = formation_by_measure(df.assign(value=[0.3, 0.05, 0.05]), thresholds={"copy": 0.1})
    >>> f[["measure", "formed", "formation_step", "censored_at_step"]].to_dict("records")
    [{'measure': 'copy', 'formed': False, 'formation_step': nan, 'censored_at_step': 20.0}]
    >>> run_formation_by_measure(f)["copy"]["censored_at_step"]
    20
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

FORMATION_COLUMNS = ["layer", "head", "layer_type", "metric", "threshold", "formation_step",
                     "formation_tokens", "final_value", "max_value", "formed"]


DEFAULT_THRESHOLDS = {"mass": 0.5, "copy_tf": 0.1, "copy": 0.1}
# causal measures (nats of answer log-probability lost when the head is removed); a scan adds
# them to its measures when it computes the causal scores (``rh.scan(..., causal=True)``)
CAUSAL_THRESHOLDS = {"ablation": 1.0}
MEASURE_COLUMNS = ["measure", "layer", "head", "layer_type", "threshold", "formed", "formation_step",
                   "formation_tokens", "censored_at_step", "censored_at_tokens", "final_value", "max_value"]


def _formed_from(values: np.ndarray, threshold: float) -> int:
    """The first index k from which every value is >= threshold (NaN counts as below);
    len(values) when the last one is below."""
    ok = np.nan_to_num(values, nan=-np.inf) >= threshold
    k = len(ok)
    while k > 0 and ok[k - 1]:
        k -= 1
    return k


def check_thresholds(thresholds, known=None) -> dict:
    """``thresholds`` as {measure: float}: every measure a known name (``known``, default the
    retrieval and causal metrics of ``metrics``), every value a number in [0, 1] (a causal
    measure, in nats: any number >= 0) (``ValueError``, one line)."""
    from .metrics import causal_metrics, retrieval_metrics

    known = tuple(known) if known is not None else retrieval_metrics() + causal_metrics()
    causal = causal_metrics()
    if not isinstance(thresholds, dict) or not thresholds:
        raise ValueError(f"thresholds: a non-empty {{measure: threshold}} dict, got {thresholds!r}")
    out = {}
    for k, v in thresholds.items():
        if k not in known:
            raise ValueError(f"thresholds: unknown measure {k!r}; use one of {known}")
        if k in causal:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < math.inf:
                raise ValueError(f"thresholds: {k} (nats) must be a number >= 0, got {v!r}")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise ValueError(f"thresholds: {k} must be a number in [0, 1], got {v!r}")
        out[k] = float(v)
    return out


def measure_thresholds(thresholds: dict | None = None, causal: bool = False) -> dict:
    """A scan's formation thresholds: ``DEFAULT_THRESHOLDS`` (mass 0.5, copy_tf 0.1, copy 0.1)
    updated by ``thresholds`` (checked by ``check_thresholds``).

        >>> measure_thresholds({"mass": 0.3})
        {'mass': 0.3, 'copy_tf': 0.1, 'copy': 0.1}
        >>> measure_thresholds(causal=True)["ablation"]
        1.0

    ``causal=True`` (a scan with causal scores) adds ``CAUSAL_THRESHOLDS`` (ablation 1.0 nat).
    """
    base = {**DEFAULT_THRESHOLDS, **(CAUSAL_THRESHOLDS if causal else {})}
    if thresholds is None:
        return base
    return {**base, **check_thresholds(thresholds)}


def formation_by_measure(scores: pd.DataFrame, thresholds: dict | None = None) -> pd.DataFrame:
    """One row per (measure, head) of a tidy scores table (``MEASURE_COLUMNS``): ``formed`` at
    ``formation_step``/``formation_tokens`` (the first scanned step from which the measure stays
    >= its threshold to the end of the run), or not formed and censored at the run's last
    scanned step (``censored_at_step``/``censored_at_tokens``; formation_* NaN). Formed rows
    have NaN censored_at_*. ``thresholds`` default: ``DEFAULT_THRESHOLDS``; a measure without
    rows in ``scores`` has no rows here."""
    thresholds = check_thresholds(DEFAULT_THRESHOLDS if thresholds is None else thresholds)
    rows = []
    for measure, threshold in thresholds.items():
        d = scores[scores["metric"] == measure].sort_values("step", kind="stable")
        if d.empty:
            continue
        last = d.loc[d["step"].idxmax()]
        last_step, last_tokens = float(last["step"]), float(last["tokens_seen"])
        for (layer, head), g in d.groupby(["layer", "head"], sort=True):
            v = g["value"].to_numpy(dtype=float)
            k = _formed_from(v, threshold)
            formed = k < len(v)
            rows.append((measure, int(layer), int(head), g["layer_type"].iloc[0], threshold, bool(formed),
                         float(g["step"].iloc[k]) if formed else math.nan,
                         float(g["tokens_seen"].iloc[k]) if formed else math.nan,
                         math.nan if formed else last_step, math.nan if formed else last_tokens,
                         float(v[-1]) if len(v) else math.nan,
                         float(np.nanmax(v)) if np.isfinite(v).any() else math.nan))
    out = pd.DataFrame(rows, columns=MEASURE_COLUMNS)
    return out.astype({"layer": "int64", "head": "int64", "threshold": "float64", "formed": "bool",
                       "formation_step": "float64", "formation_tokens": "float64", "censored_at_step": "float64",
                       "censored_at_tokens": "float64", "final_value": "float64", "max_value": "float64"})


def _int_or_none(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else int(x)


def run_formation_by_measure(table: pd.DataFrame, layer_type: str = "F", measures=None) -> dict:
    """Per measure of a ``formation_by_measure`` table, the first head of ``layer_type`` to form:
    {"formed": True, "step", "tokens_seen", "layer", "head", "censored_at_step": None,
    "censored_at_tokens": None}; where none formed, {"formed": False, "step": None, ...,
    "censored_at_step"/"censored_at_tokens": the run's last scanned checkpoint} (None when the
    table has no head of ``layer_type`` for that measure). ``measures``: the measures to report
    (default: those of the table, in its order)."""
    out = {}
    for measure in (dict.fromkeys(table["measure"]) if measures is None else measures):
        t = table[(table["measure"] == measure) & (table["layer_type"] == layer_type)]
        f = t[t["formed"]]
        if not f.empty:
            best = f.sort_values(["formation_step", "final_value"], ascending=[True, False], kind="stable").iloc[0]
            out[measure] = {"formed": True, "step": int(best["formation_step"]),
                            "tokens_seen": int(best["formation_tokens"]), "layer": int(best["layer"]),
                            "head": int(best["head"]), "censored_at_step": None, "censored_at_tokens": None}
            continue
        c = table[table["measure"] == measure]
        out[measure] = {"formed": False, "step": None, "tokens_seen": None, "layer": None, "head": None,
                        "censored_at_step": _int_or_none(c["censored_at_step"].max()) if not t.empty else None,
                        "censored_at_tokens": _int_or_none(c["censored_at_tokens"].max()) if not t.empty else None}
    return out


def formation_table(scores: pd.DataFrame, threshold: float = 0.1, metric: str = "copy") -> pd.DataFrame:
    """One row per head: the step (and tokens seen) from which ``metric`` stays >= threshold."""
    d = scores[scores["metric"] == metric].sort_values("step")
    rows = []
    for (layer, head), g in d.groupby(["layer", "head"], sort=True):
        v = g["value"].to_numpy(dtype=float)
        k = _formed_from(v, threshold)  # first index k with v[k:] all >= threshold
        formed = k < len(v)
        rows.append((int(layer), int(head), g["layer_type"].iloc[0], metric, float(threshold),
                     float(g["step"].iloc[k]) if formed else math.nan,
                     float(g["tokens_seen"].iloc[k]) if formed else math.nan,
                     float(v[-1]) if len(v) else math.nan,
                     float(np.nanmax(v)) if np.isfinite(v).any() else math.nan, bool(formed)))
    return pd.DataFrame(rows, columns=FORMATION_COLUMNS)


def run_formation(formation: pd.DataFrame, layer_type: str = "F") -> dict:
    """The first head of ``layer_type`` to form: {"step", "tokens_seen", "layer", "head"}
    (values None when no such head formed)."""
    f = formation[(formation["layer_type"] == layer_type) & formation["formed"]]
    if f.empty:
        return {"step": None, "tokens_seen": None, "layer": None, "head": None, "layer_type": layer_type}
    best = f.sort_values(["formation_step", "final_value"], ascending=[True, False]).iloc[0]
    return {"step": int(best["formation_step"]), "tokens_seen": int(best["formation_tokens"]),
            "layer": int(best["layer"]), "head": int(best["head"]), "layer_type": layer_type}
