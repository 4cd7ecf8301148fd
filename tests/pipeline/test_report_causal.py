"""The report's causal section: heatmaps of the causal scores beside the attention ones, the
attention-vs-causal scatter (no empty panel), formation by measure; absent without causal rows."""

import math

import pandas as pd

from retrieval_heads import plots
from retrieval_heads.pipeline.report import _causal_sections


def _scores(with_causal: bool) -> pd.DataFrame:
    rows = []
    for step in (0, 10):
        for l, kind in ((0, "S"), (1, "F")):
            for h in range(2):
                rows.append((step, 100 * step, l, h, kind, "mass", 0.1 * (l + h) * step / 10))
                rows.append((step, 100 * step, l, h, kind, "copy", math.nan))  # nothing answered: NaN
                if with_causal:
                    rows.append((step, 100 * step, l, h, kind, "ablation", float(l * (h + 1) * step / 10)))
                    rows.append((step, 100 * step, l, h, kind, "attribution", 0.5 * l * step / 10))
    return pd.DataFrame(rows, columns=["step", "tokens_seen", "layer", "head", "layer_type", "metric", "value"])


def test_causal_section_and_scatter():
    meta = {"measures": {"mass": {"formed": False, "censored_at_step": 10, "threshold": 0.5},
                         "ablation": {"formed": True, "step": 10, "layer": 1, "head": 1, "threshold": 1.0}}}
    html = "".join(_causal_sections(_scores(True), meta, first_fig=True))
    assert "ablation per head" in html and "attribution per head" in html and "Attention vs causal" in html
    assert "L1H1" in html and "Formation step by measure" in html
    fig = plots.causal_scatter(_scores(True))
    panels = [a.text for a in fig.layout.annotations]
    assert panels == ["mass vs ablation"]  # copy is all NaN: no empty panel for it
    assert all(len(t.x) for t in fig.data)
    assert _causal_sections(_scores(False), meta, first_fig=True) == []
