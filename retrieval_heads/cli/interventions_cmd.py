"""`retrieval-heads eval CKPT`, `ablate CKPT --top-k K` and `patch CKPT`.

CKPT is a checkpoint folder (``RUN/step_XXXXXX``) or a run folder (its last checkpoint).

    retrieval-heads eval runs/x/step_002000 --context-lens 256,512,1024 --out evals/x
    retrieval-heads eval runs/x --full-window 64            # receptive-field constraint
    retrieval-heads ablate runs/x/step_002000 --top-k 4 --context-lens 512
    retrieval-heads ablate runs/x --top-k 1 --rank-by copy     # heads ranked by copy score
    retrieval-heads patch runs/x/step_002000 --kind heads --out patch/x
    retrieval-heads eval runs/x --device auto                  # on the GPU when there is one (docs/GPU.md)
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..detect.metrics import ranking_metrics
from .options import FLOAT_LIST, INT_LIST, POSITIVE


def resolve_checkpoint(path: str) -> Path:
    """A checkpoint folder, or the last checkpoint of a run folder."""
    from ..storage import list_checkpoints

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint or run folder")
    if (p / "config.json").exists() or not p.is_dir():
        return p
    ckpts = list_checkpoints(p)
    if not ckpts:  # not a run: load_checkpoint names what the folder lacks (empty, no config.json)
        return p
    return ckpts[-1]


def _device(device, dtype):
    """(torch.device, dtype name or None) of --device/--dtype; a one-line error (cuda without
    CUDA, an unknown value) before anything is loaded or written."""
    from ..pipeline.scanner import scan_device, scan_dtype

    return scan_device(device), scan_dtype(dtype)


def _load(path: str, device=None, dtype=None):
    """The checkpoint and its model on ``device`` (resolved by :func:`_device`) in ``dtype``."""
    import torch

    from ..storage import load_checkpoint

    ck = resolve_checkpoint(path)
    model = load_checkpoint(ck, device=device or "cpu")
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    where = "" if device is None or device.type == "cpu" else f" on {device}"
    where += f" in {dtype}" if dtype is not None else ""
    click.echo(f"checkpoint {ck} (step {model.checkpoint['step']}){where}: {model.cfg.describe()}", err=True)
    return ck, model


def device_options(f):
    """--device and --dtype of eval, ablate and patch (docs/GPU.md)."""
    f = click.option("--dtype", default=None,
                     help="float32 or bf16 [default: float32]")(f)
    return click.option("--device", default=None,
                        help="cpu, cuda, cuda:N or auto (CUDA when present) [default: cpu]")(f)


def _default_len(model) -> int:
    """The training length, or 512, capped so that a prompt and its answer fit the model."""
    from ..eval import train_len

    return train_len(model) or max(1, min(512, model.cfg.max_seq_len - 64))


def _check_out(out: str | None) -> None:
    """Fail before any work when --out cannot become a folder."""
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"out: {out} exists and is not a folder")


def _default_lens(model) -> tuple:
    from ..eval import train_len

    tl = train_len(model) or 512
    return tuple(L for L in (tl // 2, tl, 2 * tl) if L + 16 <= model.cfg.max_seq_len and L >= 128) or (tl,)


def _out_dir(out: str | None) -> Path | None:
    if out is None:
        return None
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _windows(full_window, efficient_window):
    from ..interventions import receptive_field

    return lambda model: receptive_field(model, full=full_window, efficient=efficient_window)


# ---- eval ---------------------------------------------------------------------------------
@click.command("eval")
@click.argument("ckpt", type=click.Path())
@click.option("--context-lens", default=None, type=INT_LIST,
              help="Comma-separated NIAH prompt lengths [default: train length /2, x1, x2].")
@click.option("--depths", default="0,0.25,0.5,0.75,1", type=FLOAT_LIST, show_default=True,
              help="Needle depths in [0, 1].")
@click.option("--variant", default="single_1", show_default=True, help="Needle task variant (RULER name).")
@click.option("--n", "n", default=4, show_default=True, type=POSITIVE, help="Samples per (length, depth).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--loss-len", default=None, type=POSITIVE,
              help="Long-context loss length [default: longest NIAH length].")
@click.option("--loss-rows", default=8, show_default=True, type=POSITIVE, help="Held-out rows for the losses.")
@click.option("--short-len", default=None, type=POSITIVE, help="Short-context loss length [default: training length].")
@click.option("--text", default="essay", show_default=True, help="Loss text: 'essay' (its held-out tail) or a path.")
@click.option("--full-window", default=None, type=int, help="Restrict full-attention layers to this many keys.")
@click.option("--efficient-window", default=None, type=int,
              help="Restrict SWA windows / reset recurrent state to this many tokens.")
@click.option("--tasks", "tasks_file", default=None, type=click.Path(dir_okay=False),
              help="RULER-format .jsonl ({index, input, outputs, length}): accuracy over its records instead of "
                   "generated needles (--context-lens, --depths, --variant, --n are then not used).")
@click.option("--out", default=None, help="Folder for niah.csv, loss.csv and summary.json (and tasks.csv).")
@click.option("--no-progress", is_flag=True)
@device_options
def eval_cmd(ckpt, context_lens, depths, variant, n, seed, loss_len, loss_rows, short_len, text, full_window,
             efficient_window, tasks_file, out, no_progress, device, dtype):
    """NIAH accuracy per length and depth, long-context loss by position, short-context loss."""
    from ..eval import long_context_loss, niah_grid, short_context_loss, train_len

    device, dtype = _device(device, dtype)
    _check_out(out)
    ck, model = _load(ckpt, device, dtype)
    records = None
    lens = context_lens or _default_lens(model)
    with _windows(full_window, efficient_window)(model) as windows:
        if tasks_file is not None:  # a RULER file: every record answered, cells by (length, depth)
            from ..eval.niah import niah_tasks, task_cells

            records = niah_tasks(model, tasks_file, details=True, progress=not no_progress)
            grid, lens = task_cells(records), sorted(set(records["context_len"]))
        else:
            grid = niah_grid(model, lens, depths, variant, n, seed=seed, progress=not no_progress)
        L = loss_len or max(lens)
        lc = long_context_loss(model, context_len=L, n=loss_rows, text=text, seed=seed)
        sl = short_len or train_len(model) or min(256, L)
        short = short_context_loss(model, context_len=sl, n=max(loss_rows, 8), text=text, seed=seed)
    shown = grid if records is None else grid.assign(  # records not located: a row of their own
        depth=[d if d == d else "not located" for d in grid["depth"]])
    pivot = shown.pivot(index="depth", columns="context_len", values="accuracy")
    click.echo(f"NIAH accuracy ({variant}, {n} per cell; rows depth, columns length):" if records is None else
               f"NIAH accuracy ({records.attrs['path']}, every record; rows depth, columns length):")
    click.echo(pivot.to_string(float_format=lambda v: f"{v:.2f}"))
    if records is not None:
        from ..eval.niah import tasks_summary

        click.echo(tasks_summary(records.attrs))
    per_len = (grid.groupby("context_len")["accuracy"] if records is None
               else records.groupby("context_len")["score"]).mean()  # a file: the mean over its records
    click.echo("mean per length: " + ", ".join(f"{k}: {v:.3f}" for k, v in per_len.items()))
    click.echo(f"long-context loss ({L} tokens) by position: "
               + ", ".join(f"[{r.start},{r.end}) {r.loss:.3f}" for r in lc.itertuples()))
    click.echo(f"short-context loss ({sl} tokens): {short:.4f}")
    d = _out_dir(out)
    if d is not None:
        from ..storage.files import atomic_write

        # each file whole or not at all: a full disk leaves no 0-byte or half-written table
        atomic_write(d / "niah.csv", lambda t: grid.to_csv(t, index=False))
        if records is not None:
            atomic_write(d / "tasks.csv", lambda t: records.to_csv(t, index=False))
        atomic_write(d / "loss.csv", lambda t: lc.to_csv(t, index=False))
        summary = {"checkpoint": str(ck), "step": model.checkpoint["step"], "windows": windows,
                   "niah_mean": float(grid["accuracy"].mean()), "short_loss": short, "short_len": sl,
                   "long_loss": float(lc["loss"].mean()), "long_len": L}
        if records is not None:
            summary["tasks"] = {k: records.attrs[k] for k in ("path", "accuracy", "n_records", "n_unlocated")}
        atomic_write(d / "summary.json", lambda t: Path(t).write_text(json.dumps(summary, indent=2)))
        click.echo(f"tables: {d}")


# ---- ablate -------------------------------------------------------------------------------
@click.command()
@click.argument("ckpt", type=click.Path())
@click.option("--top-k", "k", default=4, show_default=True, type=POSITIVE, help="Heads per condition.")
@click.option("--scores", "scores_path", default=None,
              help="Scan table (RUN or scores.parquet) [default: RUN/scan/scores.parquet if it has this step, "
                   "else scored now].")
@click.option("--rank-by", "rank_by", default=None, type=click.Choice(list(ranking_metrics())),
              help="Score that ranks heads: a causal score (what removing the head costs the answer) or an "
                   "attention score (copy, mass, copy_tf) [default: ablation]. Ties break by (layer, head), "
                   "lowest first; a tie that decided a place is reported.")
@click.option("--metric", default=None, type=click.Choice(list(ranking_metrics())), hidden=True,
              help="Older name of --rank-by.")
@click.option("--method", default="zero", show_default=True, type=click.Choice(["zero", "mean"]))
@click.option("--context-lens", default=None, type=INT_LIST,
              help="Comma-separated NIAH lengths [default: training length].")
@click.option("--depths", default="0.1,0.3,0.5,0.7,0.9", type=FLOAT_LIST, show_default=True)
@click.option("--variant", default="single_1", show_default=True)
@click.option("--n", "n", default=4, show_default=True, type=POSITIVE, help="Samples per (length, depth).")
@click.option("--n-random", default=3, show_default=True, type=POSITIVE, help="Draws of each random control.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", default=None, help="Folder for ablation.csv and ablation.html; RUN/interventions/NAME "
              "also puts the figure in `retrieval-heads report RUN`.")
@click.option("--no-progress", is_flag=True)
@device_options
def ablate(ckpt, k, scores_path, rank_by, metric, method, context_lens, depths, variant, n, n_random, seed, out,
           no_progress, device, dtype):
    """Ablate the top-K heads by --rank-by; controls: K random heads of the same layer kind, K SWA heads."""
    import torch

    from ..interventions import ablation_experiment, scores_from_scan, summarize
    from ..interventions.scores import MissingScores
    from ..tasks import niah_batch

    device, dtype = _device(device, dtype)
    _check_out(out)
    if rank_by and metric and rank_by != metric:
        raise click.UsageError(f"--rank-by {rank_by} and --metric {metric} disagree; --metric is the older name "
                               "of --rank-by: give one")
    explicit = bool(rank_by or metric)
    metric = rank_by or metric or "ablation"
    if scores_path and not Path(scores_path).exists():
        raise FileNotFoundError(f"--scores: {scores_path}: no such scan table or run folder")
    ck, model = _load(ckpt, device, dtype)
    n_attn = len(model.cfg.attention_layers) * model.cfg.n_heads
    if k > n_attn:
        raise ValueError(f"--top-k: {k} heads asked for, but the model has {n_attn} attention heads "
                         f"({len(model.cfg.attention_layers)} attention layers x {model.cfg.n_heads})")
    lens = context_lens or (_default_len(model),)
    from ..eval.niah import check_length
    from ..tasks.plan import get_variant

    for L in lens:  # before any scoring: a prompt (+ its answer) the model cannot hold is the user's error
        check_length(model, L, get_variant(variant).value_len + 2)
    scores = None
    scan = Path(scores_path) if scores_path else ck.parent / "scan" / "scores.parquet"
    if scan.exists() or scan.is_dir():
        try:
            scores = scores_from_scan(scan, step=model.checkpoint["step"], metric=metric,
                                      n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads)
            click.echo(f"scores: {metric} from {scan}", err=True)
        except ValueError as e:  # a table without the default causal rows: they are scored now
            if scores_path and (explicit or not isinstance(e, MissingScores)):
                raise
    if scores is None:
        from ..interventions import retrieval_head_scores

        batch = niah_batch(n=16, context_len=max(lens), seed=seed + 7919, variant=variant)
        scores = retrieval_head_scores(model, batch, method=metric)
        click.echo(f"scores: {metric} computed on 16 needle prompts of {max(lens)} tokens", err=True)
    for l in range(model.cfg.n_layers):  # causal scores also cover recurrent layers: only attention heads are ablated
        if not model.cfg.is_attention(l):
            scores[l] = float("nan")
    if not bool(torch.isfinite(scores).any()):
        raise ValueError(f"no head has a finite {metric!r} score (with 'copy', no sample was answered "
                         "correctly); try --rank-by ablation or mass")
    _print_ranking(model, scores, k, metric)
    df = ablation_experiment(model, k=k, scores=scores, method=method, context_lens=lens,
                             depths=depths, n=n, variant=variant, seed=seed, n_random=n_random,
                             rank_by=metric, progress=not no_progress)
    ablated = [c for c in df["condition"].unique() if c != "none"]
    if not ablated:  # every condition was skipped: nothing was ablated
        raise ValueError(f"--top-k {k}: no condition could be formed ("
                         + "; ".join(f"{c}: {why}" for c, why in df.attrs["skipped"].items()) + ")")
    summ = summarize(df)
    click.echo(f"NIAH accuracy with {k} heads ablated ({method}; lengths {', '.join(map(str, lens))}):")
    click.echo(summ.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for cond, why in df.attrs["skipped"].items():
        click.echo(f"skipped {cond}: {why}", err=True)
    d = _out_dir(out)
    if d is not None:
        from ..plots import ablation_figure

        df["step"] = model.checkpoint["step"]
        df.to_csv(d / "ablation.csv", index=False)
        summ.to_csv(d / "ablation_summary.csv", index=False)
        ablation_figure(df, title=f"NIAH accuracy, {k} heads ablated ({method}; {ck})").write_html(d / "ablation.html")
        click.echo(f"tables: {d}")


def _print_ranking(model, scores, k: int, metric: str) -> None:
    """The chosen top-k heads (all attention layers, and the F layers) with their scores, and any
    tie that the (layer, head) tie-break decided."""
    from ..interventions import top_heads, top_ties
    from ..labels import head_label

    seen = set()
    for name, kinds in (("top", None), ("top_full", "F")):
        try:
            heads = top_heads(scores, k, model.cfg, kinds=kinds)
        except ValueError:
            continue
        if tuple(heads) in seen:
            continue
        seen.add(tuple(heads))
        click.echo(f"{name} by {metric}: " + ", ".join(f"{head_label(l, h)} ({model.cfg.layer_kind(l)}) "
                                                      f"{float(scores[l, h]):.3f}" for l, h in heads))
        tie = top_ties(scores, k, model.cfg, kinds=kinds)
        if tie is not None:
            click.echo(f"tie: {len(tie['tied'])} heads score {metric} {tie['value']:.3f} "
                       f"({', '.join(head_label(l, h) for l, h in tie['tied'])}) for {tie['places']} place(s); "
                       f"broken by (layer, head), lowest first: took "
                       f"{', '.join(head_label(l, h) for l, h in tie['chosen'])}")


# ---- patch --------------------------------------------------------------------------------
@click.command()
@click.argument("ckpt", type=click.Path())
@click.option("--kind", default="heads", show_default=True, type=click.Choice(["heads", "resid", "mixer", "position"]))
@click.option("--context-len", default=None, type=POSITIVE, help="Prompt length [default: training length].")
@click.option("--depth", default=0.5, show_default=True, type=float)
@click.option("--n", "n", default=4, show_default=True, type=POSITIVE, help="Clean/corrupted pairs.")
@click.option("--variant", default="single_1", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--query-only", is_flag=True, help="heads/resid/mixer: patch the query position only.")
@click.option("--backend", default="tl", show_default=True, type=click.Choice(["tl", "nnsight"]))
@click.option("--out", default=None, help="Folder for patching.csv and patching.html.")
@click.option("--no-progress", is_flag=True)
@device_options
def patch(ckpt, kind, context_len, depth, n, variant, seed, query_only, backend, out, no_progress, device, dtype):
    """Activation patching clean -> corrupted needle prompt: recovered logit difference."""
    from ..interventions import activation_patching, needle_pairs

    device, dtype = _device(device, dtype)
    _check_out(out)
    ck, model = _load(ckpt, device, dtype)
    L = context_len or _default_len(model)
    pair = needle_pairs(n=n, context_len=L, seed=seed, variant=variant, depths=depth)
    at = [pair.query_pos] if query_only and kind != "position" else None
    res = activation_patching(model, pair, kind=kind, at=at, backend=backend, progress=not no_progress)
    click.echo(f"logit difference: clean {res.clean_diff:.3f}, corrupted {res.corrupt_diff:.3f}")
    click.echo(_patched_where(kind, at, pair))
    click.echo(_patching_table(res.df, kind))
    d = _out_dir(out)
    if d is not None:
        res.df.to_csv(d / "patching.csv", index=False)
        res.figure.write_html(d / "patching.html")
        click.echo(f"tables: {d}")


def _patched_where(kind: str, at, pair) -> str:
    """Which positions each patch covered, in words."""
    if kind == "position":
        return "patched: one layer's residual stream at one position per row"
    if at:
        from ..tasks import TOKENIZER

        tok = TOKENIZER.decode([int(pair.clean[0, at[0]])], stop_at_eos=False)
        return f"patched: the query position only (position {at[0]}, token {tok!r})"
    return "patched: every position"


def _patching_table(df, kind: str, top: int = 10) -> str:
    """The ``top`` patches by recovered fraction, heads named ``L3H0 (F)``, layers ``L3 (F)``."""
    from ..labels import head_label

    rows = df.sort_values("recovered", ascending=False).head(top)
    out = {}
    if kind == "heads":
        out["head"] = [head_label(r.layer, r.head, r.layer_type) for r in rows.itertuples()]
    else:
        out["layer"] = [f"L{r.layer} ({r.layer_type})" for r in rows.itertuples()]
    if kind == "position":
        out["position"] = rows["position"].astype(int).tolist()
        out["token"] = [repr(t) for t in rows["token"]]
    out["recovered"] = rows["recovered"].tolist()
    table = __import__("pandas").DataFrame(out)
    return table.to_string(index=False, float_format=lambda v: f"{v:.3f}")
