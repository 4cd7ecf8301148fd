"""`retrieval-heads demo`: train a small- and a large-window hybrid, scan both, one report."""

from __future__ import annotations

import click


@click.command()
@click.option("--out", default="runs/demo", show_default=True, help="Output folder (one run per window).")
@click.option("--windows", default="16,64", show_default=True, help="Comma-separated SWA windows to compare.")
@click.option("--preset", default="tiny", show_default=True, help="Training preset for both runs.")
@click.option("--steps", default=None, type=int, help="Override the preset's number of steps.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--jobs", default=None, type=int,
              help="Runs trained at once, one process each (default: one per window, up to the core count).")
def demo(out, windows, preset, steps, seed, jobs):
    """Large-Window Laziness on 2 CPU cores: prints the path of the HTML report."""
    from ..demo import run_demo

    try:
        ws = tuple(int(w) for w in windows.split(",") if w.strip())
    except ValueError:
        raise ValueError(f"windows: expected comma-separated integers like 16,256, got {windows!r}") from None
    report = run_demo(out, windows=ws, preset=preset, steps=steps, seed=seed, jobs=jobs)
    click.echo(f"report: {report}")
