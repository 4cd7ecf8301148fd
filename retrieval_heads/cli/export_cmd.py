"""``retrieval-heads export RUN --format wu --out DIR``: a scan's per-sample head scores in Wu et
al.'s ``head_score`` JSON (see ``retrieval_heads.pipeline.export``)."""

from __future__ import annotations

import click


@click.command("export")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["wu"]), default="wu", show_default=True,
              help="wu: {\"layer-head\": [per-sample copy scores]} per checkpoint (nightdessert/Retrieval_Head).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the files.")
@click.option("--scan-dir", default=None, type=click.Path(file_okay=False),
              help="The scan's folder [default: RUN/scan].")
@click.option("--batch-size", default=8, show_default=True, type=int, help="Samples per forward pass.")
def export(run, fmt, out, scan_dir, batch_size):
    """Write a scan's per-sample head scores in another tool's format (wu: Wu et al.'s head_score JSON).

    One file per scanned checkpoint, OUT/step_XXXXXX.json; the checkpoints are scored again with
    the scan's settings (the scan tables keep only means)."""
    from ..pipeline.export import export_wu

    files = export_wu(run, out, scan_dir=scan_dir, batch_size=batch_size, echo=lambda m: click.echo(m, err=True))
    click.echo(f"wrote {len(files)} file(s) to {out}")
