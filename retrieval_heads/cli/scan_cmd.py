"""`retrieval-heads scan RUN`, `compare RUN...` and `report RUN`.

    retrieval-heads scan runs/x --context-lens 256,512 --workers 2
    retrieval-heads scan runs/x --device auto               # on the GPU when there is one (docs/GPU.md)
    retrieval-heads scan runs/demo --out scans/demo     # a folder of runs: each to scans/demo/<run>
    retrieval-heads compare runs/w64 runs/w256 runs/w1024 --out laziness.html
    retrieval-heads report runs/x
"""

from __future__ import annotations

import os
import sys

import click

from ..labels import head_label
from .options import FLOAT_LIST, INT_LIST


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--variant", default="single_1", show_default=True, help="Needle task variant (RULER name).")
@click.option("--context-lens", default=None, type=INT_LIST,
              help="Comma-separated prompt lengths [default: training length].")
@click.option("--depths", default="0.1,0.3,0.5,0.7,0.9", type=FLOAT_LIST, show_default=True,
              help="Needle depths in [0, 1].")
@click.option("--n-per-cell", default=2, show_default=True, type=int, help="Samples per (length, depth).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the fixed needle set.")
@click.option("--haystack", default=None, help="Haystack override (built-in name or path).")
@click.option("--tasks", "tasks_file", default=None, type=click.Path(dir_okay=False),
              help="RULER-format .jsonl ({index, input, outputs, length}) scored instead of generated needles.")
@click.option("--compat", type=click.Choice(["ours", "thunlp", "wu"]), default=None,
              help="Score as the original code does: thunlp = the study (--query-offset 2 --answer-positions "
                   "variants), wu = Retrieval_Head (--span-locate overlap --accept rouge) [default: ours]; "
                   "single options below override the preset.")
@click.option("--query-offset", type=click.IntRange(min=1), default=None,
              help="Mass/entropy query row = len(prompt) - K (1 = last prompt token, ours; 2 = the study's).")
@click.option("--answer-positions", type=click.Choice(["exact", "variants"]), default=None,
              help="Mass over the gold spans (exact) or every occurrence of x, ' x', 'x.', ' x.', ': x', ': x.'.")
@click.option("--span-locate", type=click.Choice(["exact", "overlap"]), default=None,
              help="Answer span: exact tokens, or Wu's first window covering > 90% of the needle's token set.")
@click.option("--accept", type=click.Choice(["exact", "rouge"]), default=None,
              help="Answered: value in the answer (exact), or Wu's ROUGE-1 recall > 0.5 of a decode to "
                   "newline or 50 tokens.")
@click.option("--recurrent", is_flag=True, help="Also score M/D/L layers via their effective attention.")
@click.option("--all-samples", is_flag=True, help="Average copy scores over all samples, not only correct ones.")
@click.option("--max-new-tokens", default=None, type=int, help="Greedy decode steps [default: answer length + 1].")
@click.option("--reference", default="first", show_default=True,
              help="Q/K distance reference: 'first', a step number or a checkpoint folder.")
@click.option("--threshold", default=0.1, show_default=True, type=float, help="Copy score of a retrieval head.")
@click.option("--causal", is_flag=True,
              help="Also score every head causally (ablation, attribution; docs/CAUSAL.md) and add the formation "
                   "measure 'ablation' (1.0 nat). Costs about 6x the attention scores per checkpoint.")
@click.option("--workers", default=1, show_default=True, type=int, help="Parallel scoring processes.")
@click.option("--batch-size", default=8, show_default=True, type=int, help="Samples per forward pass.")
@click.option("--force", is_flag=True, help="Rescore every checkpoint, ignoring the cache.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Write tables, report and cache to this folder [default: RUN/scan]; "
                   "a folder of runs goes to OUT/<run name>.")
@click.option("--no-report", is_flag=True, help="Do not write report.html.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--trust-remote-code", is_flag=True, help="HF checkpoints: run modelling code shipped with them.")
@click.option("--tokenizer", default=None, help="HF checkpoints: tokenizer folder [default: the checkpoint's].")
@click.option("--device", default=None,
              help="cpu, cuda, cuda:N or auto (CUDA when present) [default: cpu for run folders, "
                   "auto for HF checkpoints]. docs/GPU.md.")
@click.option("--dtype", default=None,
              help="float32 or bf16 (run folders: a setting, keyed in the cache; HF checkpoints also auto, "
                   "float16) [default: float32; HF: auto].")
def scan(run, variant, context_lens, depths, n_per_cell, seed, haystack, tasks_file, compat, query_offset,
         answer_positions, span_locate, accept, recurrent, all_samples,
         max_new_tokens, reference, threshold, causal, workers, batch_size, force, out, no_report, no_progress,
         trust_remote_code, tokenizer, dtype, device):
    """Score every checkpoint of RUN for retrieval heads; write tables and a report to RUN/scan/
    (or --out).

    RUN may also be a Hugging Face checkpoint folder or a folder of them (checkpoint-*, step*),
    scanned in training order, or a folder of runs (e.g. runs/demo: window_16/, window_64/),
    each scanned in name order. Exits 1 (after scanning the rest) when a checkpoint could not be read."""
    from ..pipeline import ScanSettings, find_runs
    from ..pipeline import scan as run_scan
    from ..hf.loader import is_hf_path
    from ..storage import list_checkpoints

    hf_kw = {k: v for k, v in dict(trust_remote_code=trust_remote_code, tokenizer=tokenizer).items() if v}
    if hf_kw and not is_hf_path(run):
        raise click.UsageError(f"--{next(iter(hf_kw)).replace('_', '-')} applies to Hugging Face checkpoints; "
                               f"{run} holds none")
    if is_hf_path(run):
        hf_kw.update({k: v for k, v in dict(dtype=dtype, device=device).items() if v})
        dtype = None
    else:  # our run folders: a bad --device/--dtype, or cuda without CUDA, fails here, before any write
        from ..pipeline.scanner import scan_device, scan_dtype

        device = str(scan_device(device))
        dtype = scan_dtype(dtype)
        hf_kw["device"] = device
    settings = ScanSettings(variant=variant, context_lens=context_lens, depths=depths,
                            n_per_cell=n_per_cell, seed=seed, haystack=haystack, recurrent=recurrent,
                            only_correct=not all_samples, max_new_tokens=max_new_tokens, tasks=tasks_file,
                            compat=compat, query_offset=query_offset, answer_positions=answer_positions,
                            span_locate=span_locate, accept=accept, dtype=dtype)
    if tasks_file is not None and not is_hf_path(run):
        from ..tasks import load_jsonl

        click.echo(f"tasks {load_jsonl(tasks_file).summary()}", err=True)  # answers not located: counted here
    kw = dict(reference=reference, threshold=threshold, workers=workers, batch_size=batch_size,
              progress=not no_progress, force=force, report=not no_report,
              echo=lambda m: click.echo(m, err=True), **hf_kw, **({"causal": True} if causal else {}))
    runs = []
    if not is_hf_path(run) and os.path.isdir(run) and not list_checkpoints(run):
        runs = find_runs(run)  # a folder of runs (none: run_scan's one-line "no checkpoints" error)
    if not runs:
        info = run_scan(run, settings, out=out, **kw).attrs["scan"]
        _print_scan(info, threshold)
        if info["n_skipped"]:  # each was reported as "skipped step_XXXXXX: why" while scanning
            click.echo(f"error: {info['n_skipped']} checkpoint(s) could not be read and were skipped", err=True)
            sys.exit(1)
        return
    click.echo(f"{run} holds {len(runs)} runs: {', '.join(p.name for p in runs)}; scanning each")
    results = {}
    for i, rd in enumerate(runs, 1):
        click.echo(f"[{i}/{len(runs)}] {rd}")
        try:
            info = run_scan(rd, settings, out=None if out is None else os.path.join(out, rd.name), **kw).attrs["scan"]
        except (ValueError, OSError) as e:  # this run is unreadable: say so, scan the others
            click.echo(f"error: {rd.name}: {' '.join(str(e).split())}", err=True)
            results[rd.name] = None
            continue
        _print_scan(info, threshold)
        results[rd.name] = info
    click.echo("summary:")
    for name, info in results.items():
        click.echo(f"  {name}: {_summary_line(info, threshold)}")
    failed = [n for n, i in results.items() if i is None]
    skipped = sum(i["n_skipped"] for i in results.values() if i is not None)
    if failed:
        click.echo(f"error: {len(failed)} of {len(runs)} run(s) could not be scanned: {', '.join(failed)}", err=True)
        sys.exit(2)
    if skipped:
        click.echo(f"error: {skipped} checkpoint(s) could not be read and were skipped", err=True)
        sys.exit(1)


def _formation_line(info: dict, threshold: float) -> str:
    f = info["formation"]
    if f["step"] is not None:
        return (f"first full-attention retrieval head: {head_label(f['layer'], f['head'])} at step {f['step']} "
                f"({f['tokens_seen']:,} tokens)")
    return f"no full-attention retrieval head formed (copy >= {threshold})"


def _counts_line(info: dict) -> str:
    return (f"{info['n_checkpoints']} checkpoint(s): {info['n_scored']} scored, {info['n_cached']} cached, "
            f"{info['n_skipped']} skipped" + (" (tables unchanged)" if info["unchanged"] else ""))


def _summary_line(info: dict | None, threshold: float) -> str:
    """One line per run of a folder of runs."""
    if info is None:
        return "not scanned (error above)"
    f = info["formation"]
    formed = (f"{head_label(f['layer'], f['head'])} formed at step {f['step']} ({f['tokens_seen']:,} tokens)"
              if f["step"] is not None else "not formed")
    return f"{formed}; {info['n_checkpoints']} checkpoint(s), {info['n_skipped']} skipped; tables: {info['scan_dir']}"


def _print_scan(info: dict, threshold: float) -> None:
    if "describe" in info:  # HF checkpoints: the layout read from their config
        click.echo(info["describe"])
        if info["needle_errors"]:
            click.echo(f"{info['needle_errors']} needle sample(s) left out: answer span not located "
                       "(see checkpoints.parquet)", err=True)
    click.echo(_counts_line(info))
    click.echo(_formation_line(info, threshold))
    fm = info.get("formation_measures") or {}
    if "ablation" in fm:  # a causal scan: the causal formation beside the attention ones
        click.echo("formation by measure (first full-attention head): " + "; ".join(
            f"{m} {head_label(r['layer'], r['head'])} at step {r['step']}" if r.get("formed")
            else f"{m} not formed (censored at step {r.get('censored_at_step')})" for m, r in fm.items()))
    click.echo(f"tables: {info['scan_dir']}")


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", default="compare.html", show_default=True, help="Output HTML (+ .parquet/.json beside it).")
def compare(runs, out):
    """Formation step and NIAH-vs-tokens of several scanned RUNS on one figure."""
    from ..pipeline import compare_runs, summary_display

    path, summary = compare_runs(runs, out)
    shown = summary_display(summary[["label", "formation_step", "formation_tokens", "final_niah_accuracy"]])
    with __import__("pandas").option_context("display.width", 160, "display.max_columns", 20):
        click.echo(shown.to_string(index=False))
    click.echo(f"wrote {path}")


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--out", default=None, help="Output HTML [default: RUN/scan/report.html].")
def report(run, out):
    """Rebuild RUN/scan/report.html from the existing scan tables (RUN may also be a folder
    written by `scan --out`)."""
    from ..pipeline import build_report

    click.echo(f"wrote {build_report(run, out)}")
