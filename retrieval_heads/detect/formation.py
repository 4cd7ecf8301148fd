"""Formation steps of retrieval heads over training, from a scan's tidy scores table.

A head *forms* at the first scanned step from which its score stays >= ``threshold`` at
every later checkpoint (a NaN score, e.g. no correctly answered sample, counts as below).
A run's formation step is the earliest formation step among its full-attention (``F``) heads.

    >>> import pandas as pd
    >>> df = pd.DataFrame({"step": [0, 10, 20], "tokens_seen": [0, 100, 200], "layer": 0, "head": 0,
    ...                    "layer_type": "F", "metric": "copy", "value": [0.3, 0.05, 0.2]})
    >>> formation_table(df)["formation_step"].tolist()
    [20.0]
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

FORMATION_COLUMNS = ["layer", "head", "layer_type", "metric", "threshold", "formation_step",
                     "formation_tokens", "final_value", "max_value", "formed"]


def formation_table(scores: pd.DataFrame, threshold: float = 0.1, metric: str = "copy") -> pd.DataFrame:
    """One row per head: the step (and tokens seen) from which ``metric`` stays >= threshold."""
    d = scores[scores["metric"] == metric].sort_values("step")
    rows = []
    for (layer, head), g in d.groupby(["layer", "head"], sort=True):
        v = g["value"].to_numpy(dtype=float)
        ok = np.nan_to_num(v, nan=-np.inf) >= threshold
        # first index k with ok[k:] all true
        k = len(ok)
        while k > 0 and ok[k - 1]:
            k -= 1
        formed = k < len(ok)
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
