"""HTML reports from scan tables: one run (``build_report``) or several (``compare_runs``).

A run's report also shows every head-ablation experiment saved under
``RUN/interventions/NAME/ablation.csv`` (``retrieval-heads ablate RUN --out RUN/interventions/NAME``).

Both read only what ``rh.scan`` wrote under ``RUN/scan/`` (no model is loaded), so
``retrieval-heads report RUN`` rebuilds a report in seconds. Plotly's JavaScript is embedded
once per file, so reports open offline.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pandas as pd

from .. import laziness_plots as lp
from .. import plots
from ..labels import head_label
from ..storage.files import atomic_write, write_json, write_parquet

TABLES = ("scores", "niah", "formation", "checkpoints")
FORMATION_KEYS = ("threshold", "model", "settings", "reference")  # what the report reads (compare: model)
TABLE_COLUMNS = {"checkpoints": ("status",), "niah": ("step", "accuracy"),
                 "formation": ("formed", "formation_step")}


def scan_dir_of(path) -> Path:
    """Where the scan tables of ``path`` live: ``RUN/scan/`` for a run folder, ``path`` itself
    for a folder that holds the tables (``retrieval-heads scan RUN --out DIR``)."""
    path = Path(path)
    if not (path / "scan").is_dir() and ((path / "formation.json").exists() or (path / "scores.parquet").exists()):
        return path
    return path / "scan"


def _run_dir_of(path: Path, scan_dir: Path) -> Path:
    """The run whose tables are in ``scan_dir``: ``path`` for ``path/scan``, else the run
    ``scan.json`` names (tables written with ``out=``)."""
    if scan_dir != path:
        return path
    try:
        return Path(json.loads((scan_dir / "scan.json").read_text())["run"])
    except (OSError, ValueError, KeyError, TypeError):
        return scan_dir


def load_scan(run_dir) -> dict:
    """The scan tables of a run (or of a folder written by ``scan(out=DIR)``): {"scores", "niah",
    "formation", "checkpoints": DataFrame, "meta": formation.json}. Raises FileNotFoundError
    when the run was never scanned."""
    d = scan_dir_of(run_dir)
    missing = [f"{t}.parquet" for t in TABLES if not (d / f"{t}.parquet").exists()]
    if missing or not (d / "formation.json").exists():
        raise FileNotFoundError(f"{d}: no scan tables ({', '.join(missing) or 'formation.json'} missing); "
                                f"run `retrieval-heads scan {run_dir}` first")
    rerun = f"re-run `retrieval-heads scan {run_dir}`"
    out = {}
    for t in TABLES:
        f = d / f"{t}.parquet"
        try:
            out[t] = pd.read_parquet(f)
        except (OSError, ValueError) as e:  # pyarrow's errors are ValueError / OSError subclasses
            raise ValueError(f"{f}: unreadable scan table ({type(e).__name__}: {e}); {rerun}") from None
        missing_cols = [c for c in TABLE_COLUMNS.get(t, ()) if c not in out[t].columns]
        if missing_cols:
            raise ValueError(f"{f}: column(s) {missing_cols} missing; {rerun}")
    f = d / "formation.json"
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{f}: unreadable ({type(e).__name__}: {e}); {rerun}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{f}: expected a JSON object, got {type(meta).__name__}; {rerun}")
    check_formation_meta(f, meta, ("model",), rerun)
    out["meta"] = meta
    return out


def check_formation_meta(f, meta: dict, keys, rerun: str) -> None:
    """``ValueError`` naming formation.json ``f`` when it lacks one of ``keys`` or holds a
    section of the wrong type (``model`` / ``reference`` / ``run`` / ``settings``: objects)."""
    missing = [k for k in keys if k not in meta]
    if missing:
        raise ValueError(f"{f}: key(s) {missing} missing; {rerun}")
    for k in ("model", "reference", "run", "settings"):
        if k in meta and not isinstance(meta[k], dict) and not (k == "run" and meta[k] is None):
            raise ValueError(f"{f}: {k}: expected a JSON object, got {json.dumps(meta[k])[:40]}; {rerun}")
    if "reference" in keys and "step" not in meta["reference"]:
        raise ValueError(f"{f}: reference: key 'step' missing; {rerun}")


def _int_or(v, missing: str, sep: bool) -> str:
    if v is None or pd.isna(v):
        return missing
    return f"{int(v):,}" if sep else str(int(v))


def summary_display(summary: pd.DataFrame) -> pd.DataFrame:
    """``compare_runs``'s summary as printed and shown in HTML: steps and windows as integers,
    tokens as integers with thousands separators, "not formed" where a run formed no head."""
    d = summary.copy()
    for c, sep in (("formation_step", False), ("formation_tokens", True)):
        if c in d:
            d[c] = [_int_or(v, "not formed", sep) for v in d[c]]
    if "censored_at_tokens" in d:
        d["censored_at_tokens"] = [_int_or(v, "-", True) for v in d["censored_at_tokens"]]
    if "window" in d:
        d["window"] = [_int_or(v, "-", False) for v in d["window"]]
    return d


def figure_html(fig, first: bool) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=True if first else False)


def html_page(title: str, body: list[str]) -> str:
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}"
             ".bad{color:#b00}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _ablation_sections(run_dir: Path, first_fig: bool) -> list[str]:
    """One section per ``RUN/interventions/*/ablation.csv`` (``retrieval-heads ablate RUN --out
    RUN/interventions/NAME``): the ablation figure and the per-condition summary."""
    from ..interventions import summarize

    out = []
    need_js = first_fig  # plotly.js goes into the page once, with its first figure
    for f in sorted((run_dir / "interventions").glob("*/ablation.csv")):
        try:
            df = pd.read_csv(f, dtype={"heads": str, "condition": str})
            df["heads"] = df["heads"].fillna("")  # the unablated row has no heads
            df["accuracy"] = pd.to_numeric(df["accuracy"], errors="raise")
            summ = summarize(df)
            meta = ", ".join(f"{c} {', '.join(map(str, dict.fromkeys(df[c])))}"
                             for c in ("k", "method", "step", "context_len") if c in df)
            fig = plots.ablation_figure(df, title=f"NIAH accuracy, {meta}")
            table = summ.to_html(index=False, float_format=lambda v: f"{v:.3f}")
        except Exception as e:  # noqa: BLE001 - a stray or broken table must not break the run's report
            out.append(f"<p class='bad'>{html.escape(str(f))}: unreadable ablation table "
                       f"({html.escape(type(e).__name__)}: {html.escape(str(e))})</p>")
            continue
        out.append(f"<h2>{html.escape(f'Head ablation ({f.parent.name}): {meta}')}</h2>")
        out.append(figure_html(fig, need_js))
        need_js = False
        out.append(table)
    return out


def _causal_sections(scores: pd.DataFrame, meta: dict, first_fig: bool) -> list[str]:
    """For a scan with causal scores (``scan --causal``): the causal heatmaps beside the
    attention ones, the attention-vs-causal scatter and the formation step per measure; []
    for a scan without them."""
    from ..detect.metrics import causal_metrics

    if not len(scores) or not scores["metric"].isin(causal_metrics()).any():
        return []
    out = ["<h2>Causal scores: which heads the answer depends on</h2>",
           "<p>ablation: nats of the answer's teacher-forced log-probability lost when the head's output is "
           "zeroed (exact); attribution: its one-pass gradient estimate. See docs/CAUSAL.md.</p>"]
    figs = [plots.heatmap_slider(scores, "ablation"), plots.heatmap_slider(scores, "attribution"),
            plots.causal_scatter(scores, "ablation")]
    out += [figure_html(f, first_fig and i == 0) for i, f in enumerate(figs)]
    measures = meta.get("measures")
    if isinstance(measures, dict) and measures:
        rows = []
        for m, r in measures.items():
            if not isinstance(r, dict):
                continue
            head = head_label(r["layer"], r["head"]) if r.get("formed") else "-"
            rows.append({"measure": m, "threshold": r.get("threshold"), "first F head": head,
                         "formation step": r.get("step") if r.get("formed") else "not formed",
                         "censored at step": r.get("censored_at_step") if not r.get("formed") else "-"})
        out.append("<h3>Formation step by measure (first full-attention head)</h3>"
                   + pd.DataFrame(rows).to_html(index=False, na_rep="-"))
    return out


def build_report(run_dir, out=None) -> Path:
    """Write ``RUN/scan/report.html`` (or ``out``) from the scan tables; returns its path.
    ``run_dir`` may also be a folder written by ``scan(out=DIR)`` (the report goes there)."""
    scan_dir = scan_dir_of(run_dir)
    t = load_scan(run_dir)
    run_dir = _run_dir_of(Path(run_dir), scan_dir)
    meta, scores, niah, form, ck = t["meta"], t["scores"], t["niah"], t["formation"], t["checkpoints"]
    check_formation_meta(scan_dir / "formation.json", meta, FORMATION_KEYS,
                         f"re-run `retrieval-heads scan {run_dir}`")
    run = meta.get("run") or {}
    body = [f"<h1>Retrieval heads: {html.escape(str(run_dir))}</h1>",
            f"<p>Model: {html.escape(meta['model'].get('describe', ''))}<br>",
            f"Needles: {html.escape(json.dumps(meta['settings']))}<br>",
            f"Q/K distance reference: step {meta['reference']['step']}<br>",
            f"Checkpoints: {int((ck['status'] == 'ok').sum())} scored, "
            f"{int((ck['status'] == 'skipped').sum())} skipped</p>"]
    if run.get("step") is not None:
        body.append(f"<p><b>First full-attention retrieval head</b> (copy &ge; {meta['threshold']} from then "
                    f"on): {head_label(run['layer'], run['head'])} at step {run['step']:,} "
                    f"({run['tokens_seen']:,} tokens).</p>")
    else:
        body.append(f"<p><b>No full-attention retrieval head formed</b> (copy &ge; {meta['threshold']} "
                    "until the last checkpoint).</p>")
    skipped = ck[ck["status"] == "skipped"]
    if len(skipped):
        items = "".join(f"<li>step {int(r.step)}: {html.escape(str(r.error))}</li>" for r in skipped.itertuples())
        body.append(f"<div class='bad'><b>Skipped checkpoints (unreadable):</b><ul>{items}</ul></div>")
    counts = ck[ck["status"] == "ok"]
    if "n_counted" in counts:
        body.append("<p>Copy scores average over the correctly answered samples: "
                    + ", ".join(f"step {int(r.step)}: {int(r.n_counted)}/{int(r.n_samples)}"
                                for r in counts.itertuples()) + "</p>")
    figs = []
    if len(scores):
        figs += [plots.best_head_and_niah(scores, niah), plots.formation_curves(scores, threshold=meta["threshold"]),
                 plots.formation_curves(scores, metric="mass", threshold=None), *plots.metric_heatmaps(scores)]
    body += [figure_html(f, i == 0) for i, f in enumerate(figs)]
    causal = _causal_sections(scores, meta, first_fig=not figs)
    body += causal
    figs += [None] * bool(causal)  # plotly.js is already in the page
    formed = form.sort_values(["formed", "formation_step"], ascending=[False, True]).head(20)
    body.append("<h2>Formation per head (top 20)</h2>" + formed.to_html(index=False, na_rep="-"))
    body += _ablation_sections(run_dir, first_fig=not figs)
    out = Path(out) if out else scan_dir / "report.html"

    atomic_write(out, lambda p: Path(p).write_text(html_page(f"retrieval heads {run_dir.name}", body),
                                                   encoding="utf-8"))
    return out


# formation measures, in the compare page's order (mass: the primary measure)
MEASURE_ORDER = ("mass", "copy_tf", "copy", "ablation")


def _last_tokens(t: dict) -> float:
    """The tokens seen at the run's last scanned checkpoint (checkpoints.parquet's scored rows,
    else scores.parquet, else niah.parquet); NaN when none of them says."""
    ck = t["checkpoints"]
    if "tokens_seen" in ck and len(ck):
        ok = ck[ck["status"] == "ok"] if "status" in ck else ck
        if len(ok) and ok["tokens_seen"].notna().any():
            return float(ok["tokens_seen"].max())
    for name in ("scores", "niah"):
        d = t[name]
        if "tokens_seen" in d and len(d):
            return float(d["tokens_seen"].max())
    return math.nan


def _train_seed(run_dir: Path) -> int:
    """The run's training seed from ``RUN/run.json`` (``train.seed``); 0 when it does not say."""
    try:
        seed = json.loads((run_dir / "run.json").read_text())["train"]["seed"]
        return int(seed)
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _num(v) -> float:
    try:
        return math.nan if v is None else float(v)
    except (TypeError, ValueError):
        return math.nan


def formation_rows(t: dict, label: str, window: float, seed: int) -> list[dict]:
    """One laziness-summary row per formation measure of a scanned run (the schema of
    :mod:`retrieval_heads.laziness_plots`): from formation.json's ``measures`` when the scan
    wrote them, else from its copy-score ``run`` entry (formed when its ``step`` is set, else
    censored at the run's last scanned tokens)."""
    meta, last = t["meta"], _last_tokens(t)
    measures = meta.get("measures")
    if not isinstance(measures, dict) or not measures:
        run = meta.get("run") or {}
        measures = {meta.get("metric", "copy"): {"formed": run.get("step") is not None,
                                                 "tokens_seen": run.get("tokens_seen")}}
    rows = []
    for name, m in measures.items():
        m = m if isinstance(m, dict) else {}
        formed = bool(m.get("formed", m.get("step") is not None))
        budget = _num(m.get("budget_tokens"))
        budget = last if math.isnan(budget) else budget
        cens = _num(m.get("censored_at_tokens"))
        rows.append({"label": label, "window": window, "seed": seed, "measure": str(name), "formed": formed,
                     "formation_tokens": _num(m.get("tokens_seen")) if formed else math.nan,
                     "censored_at_tokens": math.nan if formed else (last if math.isnan(cens) else cens),
                     "budget_tokens": budget})
    return rows


def curve_rows(t: dict, label: str, window: float, seed: int, measures) -> pd.DataFrame:
    """The run's laziness curves: per measure and scanned checkpoint, the best full-attention
    head's score (scores.parquet metric of that name; NaN where the scan has none) and the
    NIAH accuracy at that checkpoint."""
    sc, ni = t["scores"], t["niah"]
    acc = (ni.groupby("tokens_seen")["accuracy"].mean() if len(ni) and "accuracy" in ni
           else pd.Series(dtype="float64"))
    f = sc[sc["layer_type"] == "F"] if "layer_type" in sc else sc.iloc[:0]
    parts = []
    for meas in measures:
        best = f[f["metric"] == meas].groupby("tokens_seen")["value"].max() if len(f) else pd.Series(dtype="float64")
        tokens = sorted(set(best.index) | set(acc.index))
        parts.append(pd.DataFrame({"label": label, "window": window, "seed": seed, "measure": meas,
                                   "tokens_seen": pd.Series(tokens, dtype="float64"),
                                   "best_f_score": best.reindex(tokens).values,
                                   "niah_acc": acc.reindex(tokens).values}))
    if not parts:
        return pd.DataFrame(columns=lp.CURVE_COLUMNS)
    return pd.concat(parts, ignore_index=True)[lp.CURVE_COLUMNS]


def _measure_order(measures) -> list[str]:
    ms = list(dict.fromkeys(measures))
    return [m for m in MEASURE_ORDER if m in ms] + [m for m in ms if m not in MEASURE_ORDER]


def laziness_sections(formation: pd.DataFrame, curves: pd.DataFrame, first_fig: bool = True,
                      title_note: str = "", thresholds: dict | None = None) -> list[str]:
    """HTML of the compare page's Large-Window Laziness part: per formation measure the
    formation-vs-window figure, then the censoring-aware table, the best F-head score curves
    per measure and the NIAH curves (plotly.js embedded with the first figure when
    ``first_fig``)."""
    thresholds = thresholds or {}
    measures = _measure_order(formation["measure"]) or list(MEASURE_ORDER[:1])
    figs = [lp.formation_vs_window(formation, m, title_note=title_note) for m in measures]
    body = [figure_html(f, first_fig and i == 0) for i, f in enumerate(figs)]
    body.append("<h2>Formation per window and measure (censored runs included)</h2>"
                "<p>formed: seeds whose first full-attention retrieval head formed / seeds run; "
                "<i>censored at X</i>: no head formed by the run's last checkpoint (X tokens seen). "
                "Mean and interval are over the formed seeds only (a lower bound on the true mean when "
                "some seeds are censored).</p>")
    body.append(lp.formation_summary_table(formation).to_html(index=False, na_rep="-", justify="left"))
    more = [lp.score_curves(curves, m, threshold=thresholds.get(m), title_note=title_note) for m in measures]
    more.append(lp.niah_curves(curves, title_note=title_note))
    body.append("<h2>Scores and NIAH accuracy over training</h2>")
    body += [figure_html(f, first_fig and not figs and i == 0) for i, f in enumerate(more)]
    return body


def compare_runs(runs, out="compare.html") -> tuple[Path, pd.DataFrame]:
    """Several scanned runs on one page, keyed by layout / window / pos / seed: tokens to the
    first full-attention retrieval head vs SWA window for every formation measure (formed
    seeds, censored seeds as open triangles, mean with a bootstrap interval, the
    all-full-attention reference as a band), a censoring-aware table per window and measure,
    and best F-head score and NIAH accuracy vs tokens seen per window
    (:mod:`retrieval_heads.laziness_plots`). Every run is shown, formed or not.

    Writes ``out`` (HTML) and the per-run summary beside it (``.parquet`` and ``.json``; its
    formation columns are the copy-score ``run`` entry of formation.json); returns (path,
    summary)."""
    rows, form_rows, curves = [], [], []
    labels: set[str] = set()
    thresholds: dict = {}  # measure -> its formation threshold (the first run's that says)
    for r in runs:
        t = load_scan(r)
        scan_dir = scan_dir_of(r)
        run_dir = _run_dir_of(Path(r), scan_dir)
        m, run = t["meta"]["model"], t["meta"].get("run") or {}
        label = plots.run_label(m)
        if label in labels:
            label = f"{label} ({Path(r).name})"
        labels.add(label)
        window = _num(m.get("window"))
        seed = _train_seed(run_dir)
        a = t["niah"]
        last = a[a["step"] == a["step"].max()]["accuracy"].mean() if len(a) else math.nan
        formed = run.get("step") is not None
        rows.append({"run": str(r), "label": label, "layout": m.get("layout"), "window": window, "seed": seed,
                     "pos": ",".join(f"{k}:{v}" for k, v in sorted((m.get("pos") or {}).items())),
                     "formation_step": run.get("step"), "formation_tokens": run.get("tokens_seen"),
                     "censored_at_tokens": math.nan if formed else _last_tokens(t),
                     "final_niah_accuracy": last, "threshold": t["meta"].get("threshold")})
        fr = formation_rows(t, label, window, seed)
        for name, entry in (t["meta"].get("measures") or {t["meta"].get("metric", "copy"): {}}).items():
            th = entry.get("threshold") if isinstance(entry, dict) else None
            thresholds.setdefault(name, t["meta"].get("threshold") if th is None and name == "copy" else th)
        form_rows += fr
        curves.append(curve_rows(t, label, window, seed, [x["measure"] for x in fr]))
    summary = pd.DataFrame(rows)
    for c in ("formation_step", "formation_tokens", "window", "censored_at_tokens"):
        summary[c] = pd.to_numeric(summary[c], errors="coerce").astype("float64")
    formation = pd.DataFrame(form_rows, columns=lp.SUMMARY_COLUMNS)
    curves_df = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    out = Path(out)

    n_cens = int((~formation["formed"].astype(bool)).sum()) if len(formation) else 0
    body = ["<h1>Retrieval-head formation across runs (Large-Window Laziness)</h1>",
            f"<p>{len(summary)} run(s), {summary['window'].nunique()} SWA window(s)"
            f"{', plus the full-attention reference' if summary['window'].isna().any() else ''}; "
            f"{n_cens} run x measure pair(s) censored (no head formed by the last checkpoint).</p>",
            *laziness_sections(formation, curves_df, first_fig=True, thresholds=thresholds),
            "<h2>Runs</h2>", summary_display(summary).to_html(index=False, na_rep="not formed")]
    atomic_write(out, lambda p: Path(p).write_text(html_page("compare runs", body), encoding="utf-8"))
    write_parquet(out.with_suffix(".parquet"), summary)
    write_json(out.with_suffix(".json"), [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                                           for k, v in r.items()} for r in summary.to_dict("records")])
    return out, summary
