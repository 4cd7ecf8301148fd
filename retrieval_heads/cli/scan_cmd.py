"""`retrieval-heads scan RUN`, `compare RUN...` and `report RUN`.

    retrieval-heads scan runs/x --context-lens 256,512 --workers 2
    retrieval-heads compare runs/w64 runs/w256 runs/w1024 --out laziness.html
    retrieval-heads report runs/x
"""

from __future__ import annotations

import sys

import click


def _floats(s: str) -> tuple:
    try:
        return tuple(float(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {s!r}") from None


def _ints(s: str | None):
    if s is None:
        return None
    try:
        return tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {s!r}") from None


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--variant", default="single_1", show_default=True, help="Needle task variant (RULER name).")
@click.option("--context-lens", default=None, help="Comma-separated prompt lengths [default: training length].")
@click.option("--depths", default="0.1,0.3,0.5,0.7,0.9", show_default=True, help="Needle depths in [0, 1].")
@click.option("--n-per-cell", default=2, show_default=True, type=int, help="Samples per (length, depth).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the fixed needle set.")
@click.option("--haystack", default=None, help="Haystack override (built-in name or path).")
@click.option("--recurrent", is_flag=True, help="Also score M/D/L layers via their effective attention.")
@click.option("--all-samples", is_flag=True, help="Average copy scores over all samples, not only correct ones.")
@click.option("--max-new-tokens", default=None, type=int, help="Greedy decode steps [default: answer length + 1].")
@click.option("--reference", default="first", show_default=True,
              help="Q/K distance reference: 'first', a step number or a checkpoint folder.")
@click.option("--threshold", default=0.1, show_default=True, type=float, help="Copy score of a retrieval head.")
@click.option("--workers", default=1, show_default=True, type=int, help="Parallel scoring processes.")
@click.option("--batch-size", default=8, show_default=True, type=int, help="Samples per forward pass.")
@click.option("--force", is_flag=True, help="Rescore every checkpoint, ignoring the cache.")
@click.option("--no-report", is_flag=True, help="Do not write report.html.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--trust-remote-code", is_flag=True, help="HF checkpoints: run modelling code shipped with them.")
@click.option("--tokenizer", default=None, help="HF checkpoints: tokenizer folder [default: the checkpoint's].")
@click.option("--dtype", default=None, help="HF checkpoints: auto, float32, bfloat16 or float16 [default: auto].")
@click.option("--device", default=None, help="HF checkpoints: cpu, cuda, ... [default: cuda if available].")
def scan(run, variant, context_lens, depths, n_per_cell, seed, haystack, recurrent, all_samples,
         max_new_tokens, reference, threshold, workers, batch_size, force, no_report, no_progress,
         trust_remote_code, tokenizer, dtype, device):
    """Score every checkpoint of RUN for retrieval heads; write tables and a report to RUN/scan/.

    RUN may also be a Hugging Face checkpoint folder or a folder of them (checkpoint-*, step*),
    scanned in training order. Exits 1 (after scanning the rest) when a checkpoint could not be read."""
    from ..detect.scanner import ScanSettings, scan as run_scan
    from ..hf.loader import is_hf_path

    hf_kw = {k: v for k, v in dict(trust_remote_code=trust_remote_code, tokenizer=tokenizer, dtype=dtype,
                                   device=device).items() if v}
    if hf_kw and not is_hf_path(run):
        raise click.UsageError(f"--{next(iter(hf_kw)).replace('_', '-')} applies to Hugging Face checkpoints; "
                               f"{run} holds none")
    settings = ScanSettings(variant=variant, context_lens=_ints(context_lens), depths=_floats(depths),
                            n_per_cell=n_per_cell, seed=seed, haystack=haystack, recurrent=recurrent,
                            only_correct=not all_samples, max_new_tokens=max_new_tokens)
    df = run_scan(run, settings, reference=reference, threshold=threshold, workers=workers,
                  batch_size=batch_size, progress=not no_progress, force=force, report=not no_report,
                  echo=lambda m: click.echo(m, err=True), **hf_kw)
    info = df.attrs["scan"]
    if "describe" in info:  # HF checkpoints: the layout read from their config
        click.echo(info["describe"])
        if info["needle_errors"]:
            click.echo(f"{info['needle_errors']} needle sample(s) left out: answer span not located "
                       "(see checkpoints.parquet)", err=True)
    click.echo(f"{info['n_checkpoints']} checkpoint(s): {info['n_scored']} scored, {info['n_cached']} cached, "
               f"{info['n_skipped']} skipped" + (" (tables unchanged)" if info["unchanged"] else ""))
    f = info["formation"]
    if f["step"] is not None:
        click.echo(f"first full-attention retrieval head: L{f['layer']}.H{f['head']} at step {f['step']} "
                   f"({f['tokens_seen']:,} tokens)")
    else:
        click.echo(f"no full-attention retrieval head formed (copy >= {threshold})")
    click.echo(f"tables: {info['scan_dir']}")
    if info["n_skipped"]:  # each was reported as "skipped step_XXXXXX: why" while scanning
        click.echo(f"error: {info['n_skipped']} checkpoint(s) could not be read and were skipped", err=True)
        sys.exit(1)


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", default="compare.html", show_default=True, help="Output HTML (+ .parquet/.json beside it).")
def compare(runs, out):
    """Formation step and NIAH-vs-tokens of several scanned RUNS on one figure."""
    from ..report import compare_runs

    path, summary = compare_runs(runs, out)
    with __import__("pandas").option_context("display.width", 160, "display.max_columns", 20):
        click.echo(summary[["label", "formation_step", "formation_tokens", "final_niah_accuracy"]].to_string(index=False))
    click.echo(f"wrote {path}")


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--out", default=None, help="Output HTML [default: RUN/scan/report.html].")
def report(run, out):
    """Rebuild RUN/scan/report.html from the existing scan tables."""
    from ..report import build_report

    click.echo(f"wrote {build_report(run, out)}")
