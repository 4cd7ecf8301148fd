"""Plotly figures over the scan tables (``RUN/scan/*.parquet``); each function returns a
``plotly.graph_objects.Figure``.

    >>> import pandas as pd, retrieval_heads as rh
    >>> scores = pd.read_parquet("runs/x/scan/scores.parquet")            # doctest: +SKIP
    >>> rh.plots.heatmap_slider(scores, "copy").write_html("copy.html")    # doctest: +SKIP

Colour scales and the report's heatmaps follow the metric table
(``retrieval_heads.detect.metrics``): a bounded metric gets its fixed range.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .detect import metrics as _metrics


def bounded() -> dict[str, tuple[float, float]]:
    """{metric: (low, high)} for every bounded metric of the table (fixed colour scales)."""
    return {n: m.range for n, m in _metrics.REGISTRY.items() if m.bounded}


def head_label(layer: int, head: int, layer_type: str | None = None) -> str:
    """``L3H0 (F)``: the library's one head label (:mod:`retrieval_heads.labels`) with its kind."""
    from .labels import head_label as _label

    return _label(layer, head, layer_type)


def heatmap_slider(scores: pd.DataFrame, metric: str = "copy", x: str = "step") -> go.Figure:
    """Layer x head heatmap of ``metric``, one per checkpoint, chosen with a slider."""
    d = scores[scores["metric"] == metric]
    fig = go.Figure()
    steps = sorted(d["step"].unique())
    if not steps:
        return fig.update_layout(title=f"{metric}: no data")
    layers = sorted(d["layer"].unique())
    heads = sorted(d["head"].unique())
    ltype = d.drop_duplicates("layer").set_index("layer")["layer_type"]
    ylab = [f"L{l} ({ltype[l]})" for l in layers]
    zmin, zmax = _metrics.colour_range(metric)
    if zmin is None:
        zmin, zmax = float(d["value"].min()), float(d["value"].max())
    tokens = d.drop_duplicates("step").set_index("step")["tokens_seen"]
    for i, s in enumerate(steps):
        piv = d[d["step"] == s].pivot(index="layer", columns="head", values="value").reindex(
            index=layers, columns=heads)
        fig.add_trace(go.Heatmap(z=piv.values, x=[f"H{h}" for h in heads], y=ylab, zmin=zmin, zmax=zmax,
                                 colorscale="Viridis", visible=(i == len(steps) - 1),
                                 colorbar=dict(title=metric),
                                 hovertemplate="%{y} %{x}: %{z:.3f}<extra>step " + str(s) + "</extra>"))
    slider_steps = []
    for i, s in enumerate(steps):
        vis = [j == i for j in range(len(steps))]
        slider_steps.append(dict(method="update", label=str(s),
                                 args=[{"visible": vis},
                                       {"title": f"{metric} per head at step {s} "
                                                 f"({int(tokens[s]):,} tokens)"}]))
    fig.update_layout(
        title=f"{metric} per head at step {steps[-1]} ({int(tokens[steps[-1]]):,} tokens)",
        sliders=[dict(active=len(steps) - 1, steps=slider_steps, currentvalue=dict(prefix="step "))],
        yaxis=dict(autorange="reversed"), height=260 + 28 * len(layers))
    return fig


def metric_heatmaps(scores: pd.DataFrame, x: str = "step") -> list[go.Figure]:
    """One ``heatmap_slider`` per metric of the table marked ``heatmap``: attention metrics
    always (a "no data" figure when the table has none), weight metrics (``qk_distance``)
    only when the table has their rows (a scan without a reference has none)."""
    figs = []
    for name in _metrics.heatmap_metrics():
        if _metrics.metric(name).kind == "attention" or (scores["metric"] == name).any():
            figs.append(heatmap_slider(scores, name, x=x))
    return figs


def top_heads(scores: pd.DataFrame, k: int = 6, metric: str = "copy") -> list[tuple[int, int]]:
    d = scores[scores["metric"] == metric]
    best = d.groupby(["layer", "head"])["value"].max().sort_values(ascending=False)
    return [tuple(map(int, i)) for i in best.dropna().index[:k]]


def formation_curves(scores: pd.DataFrame, k: int = 6, metric: str = "copy", threshold: float | None = 0.1,
                     x: str = "tokens_seen") -> go.Figure:
    """``metric`` over training for the ``k`` heads with the highest peak score (a dashed
    line at ``threshold`` unless None)."""
    d = scores[scores["metric"] == metric].sort_values("step")
    fig = go.Figure()
    for l, h in top_heads(scores, k, metric):
        g = d[(d["layer"] == l) & (d["head"] == h)]
        fig.add_trace(go.Scatter(x=g[x], y=g["value"], mode="lines+markers",
                                 name=head_label(l, h, g["layer_type"].iloc[0])))
    if threshold is not None:
        fig.add_hline(y=threshold, line_dash="dash", annotation_text=f"threshold {threshold}")
    fig.update_layout(title=f"Formation: {metric} score of the top {k} heads", xaxis_title=x.replace("_", " "),
                      yaxis_title=metric)
    return fig


def best_head_and_niah(scores: pd.DataFrame, niah: pd.DataFrame, layer_type: str = "F",
                       x: str = "tokens_seen") -> go.Figure:
    """Best full-attention head's copy and mass scores, and NIAH accuracy, vs tokens seen."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    d = scores[scores["layer_type"] == layer_type]
    for metric, dash in (("copy", "solid"), ("mass", "dot")):
        g = d[d["metric"] == metric].groupby(["step", x])["value"].max().reset_index().sort_values("step")
        fig.add_trace(go.Scatter(x=g[x], y=g["value"], mode="lines+markers", line_dash=dash,
                                 name=f"best {layer_type}-head {metric}"), secondary_y=False)
    if len(niah):
        a = niah.groupby(["step", x])["accuracy"].mean().reset_index().sort_values("step")
        fig.add_trace(go.Scatter(x=a[x], y=a["accuracy"], mode="lines+markers", name="NIAH accuracy",
                                 line_color="black"), secondary_y=True)
    fig.update_yaxes(title_text="score", range=[0, 1.05], secondary_y=False)
    fig.update_yaxes(title_text="NIAH accuracy", range=[0, 1.05], secondary_y=True)
    fig.update_layout(title=f"Best {layer_type}-layer retrieval head and NIAH accuracy",
                      xaxis_title=x.replace("_", " "))
    return fig


def run_label(model: dict) -> str:
    pos = ",".join(f"{k}:{v}" for k, v in sorted((model.get("pos") or {}).items()))
    w = model.get("window")
    return f"{model.get('layout')} w={w if w is not None else '-'} {pos}".strip()


def compare_figure(summary: pd.DataFrame, niah: dict[str, pd.DataFrame]) -> go.Figure:
    """Large-Window Laziness: formation (tokens seen) vs SWA window, one line per layout/pos
    family; and NIAH accuracy vs tokens seen, one line per run (``label``)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "First full-attention retrieval head forms at", "NIAH accuracy vs tokens seen"))
    fam = summary.assign(family=summary["layout"] + " " + summary["pos"])
    for name, g in fam.groupby("family", sort=True):
        g = g.sort_values("window")
        fig.add_trace(go.Scatter(x=g["window"], y=g["formation_tokens"], mode="lines+markers", name=name,
                                 text=g["label"], hovertemplate="%{text}: %{y:,} tokens<extra></extra>"),
                      row=1, col=1)
    for label, a in niah.items():
        if not len(a):
            continue
        a = a.groupby(["step", "tokens_seen"])["accuracy"].mean().reset_index().sort_values("step")
        fig.add_trace(go.Scatter(x=a["tokens_seen"], y=a["accuracy"], mode="lines+markers", name=label),
                      row=1, col=2)
    fig.update_xaxes(title_text="SWA window", type="log", row=1, col=1)
    fig.update_yaxes(title_text="tokens seen at formation", row=1, col=1)
    fig.update_xaxes(title_text="tokens seen", row=1, col=2)
    fig.update_yaxes(title_text="NIAH accuracy", range=[0, 1.05], row=1, col=2)
    fig.update_layout(title="Large-Window Laziness", height=480)
    return fig


ABLATION_LABELS = {"none": "nothing ablated", "top": "top-K retrieval heads", "top_full": "top-K full-attention heads",
                   "random_same_kind": "K random heads, same kind as top", "swa": "K random SWA heads",
                   "top_swa": "top-K SWA heads", "random_any": "K random heads, any layer"}


def ablation_figure(ablation: pd.DataFrame, title: str = "NIAH accuracy under head ablation") -> go.Figure:
    """Bar per ablation condition (mean NIAH accuracy over random draws and lengths) with each
    draw as a dot; ``ablation`` is the table of ``rh.interventions.ablation_experiment``
    (``retrieval-heads ablate --out``'s ``ablation.csv``)."""
    d = ablation.groupby(["condition", "draw"], sort=False)["accuracy"].mean().reset_index()
    order = list(dict.fromkeys(ablation["condition"]))
    mean = d.groupby("condition", sort=False)["accuracy"].mean().reindex(order)
    labels = [ABLATION_LABELS.get(c, c) for c in order]
    fig = go.Figure(go.Bar(x=labels, y=mean.values, name="mean over draws",
                           marker_color=["#7f7f7f" if c == "none" else "#d62728" if c.startswith("top") else "#1f77b4"
                                         for c in order]))
    for c, lab in zip(order, labels):
        pts = d[d["condition"] == c]["accuracy"]
        if len(pts) > 1:
            fig.add_trace(go.Scatter(x=[lab] * len(pts), y=pts, mode="markers", showlegend=False,
                                     marker=dict(color="black", size=6), hovertemplate="draw: %{y:.2f}<extra></extra>"))
    fig.update_layout(title=title, yaxis=dict(title="NIAH accuracy", range=[0, 1.05]), showlegend=False,
                      height=420, width=760)
    return fig


def causal_scatter(scores: pd.DataFrame, causal: str = "ablation", attention=("copy", "mass", "copy_tf"),
                   step: int | None = None) -> go.Figure:
    """Attention score (x) vs causal score (y) per head at one checkpoint (default the last),
    one panel per attention metric with a finite score there: heads that look at the needle but do not matter sit at the
    bottom right. Points are labelled ``L5H2 (F)``; NaN scores are left out."""
    d = scores if step is None else scores[scores["step"] == step]
    step = int(d["step"].max()) if len(d) else 0
    d = d[d["step"] == step]
    attention = [m for m in attention if d.loc[d["metric"] == m, "value"].notna().any()]  # no empty panels
    fig = make_subplots(rows=1, cols=max(1, len(attention)), subplot_titles=[f"{m} vs {causal}" for m in attention])
    y = d[d["metric"] == causal].set_index(["layer", "head"])["value"]
    kinds = d.drop_duplicates(["layer"]).set_index("layer")["layer_type"]
    for i, m in enumerate(attention, 1):
        x = d[d["metric"] == m].set_index(["layer", "head"])["value"]
        both = pd.concat([x.rename("x"), y.rename("y")], axis=1, join="inner").dropna()
        for kind in sorted({kinds[l] for l, _ in both.index}):
            b = both[[kinds[l] == kind for l, _ in both.index]]
            fig.add_trace(go.Scatter(x=b["x"], y=b["y"], mode="markers+text", name=f"{kind} heads",
                                     text=[head_label(l, h) for l, h in b.index], textposition="top center",
                                     marker=dict(size=9, color={"F": "#d62728", "S": "#1f77b4"}.get(kind, "#2ca02c")),
                                     showlegend=i == 1, legendgroup=kind,
                                     hovertemplate=f"%{{text}}: {m} %{{x:.3f}}, {causal} %{{y:.3f}}<extra></extra>"),
                          row=1, col=i)
        fig.update_xaxes(title_text=f"{m} (attention)", row=1, col=i)
        fig.update_yaxes(title_text=f"{causal} (nats lost)", row=1, col=i)
    tokens = d["tokens_seen"].max() if len(d) else 0
    fig.update_layout(title=f"Attention vs causal score per head, step {step} ({int(tokens):,} tokens)",
                      height=460)
    return fig
