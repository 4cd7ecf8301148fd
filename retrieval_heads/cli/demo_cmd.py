"""`retrieval-heads demo`: train hybrids that differ only in their SWA window, scan them, one report."""

from __future__ import annotations

import click


@click.command()
@click.option("--out", default="runs/demo", show_default=True, help="Output folder (one run per window).")
@click.option("--windows", default="2,8,32", show_default=True, help="Comma-separated SWA windows to compare.")
@click.option("--preset", default="laziness-cpu", show_default=True, help="Training preset for every run.")
@click.option("--steps", default=None, type=int, help="Override the preset's number of steps.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--jobs", default=None, type=int,
              help="Runs trained at once, one process each (default: one per window, up to the core count).")
@click.option("--stop-when-formed", default=3, show_default=True, type=click.IntRange(min=0),
              help="Stop a run once its first full-attention head has held the mass measure for this many "
                   "checkpoints (0: train the whole budget).")
def demo(out, windows, preset, steps, seed, jobs, stop_when_formed):
    """Large-Window Laziness on 2 CPU cores: prints the path of the HTML report."""
    from ..demo import run_demo

    try:
        ws = tuple(int(w) for w in windows.split(",") if w.strip())
    except ValueError:
        raise ValueError(f"windows: expected comma-separated integers like 16,256, got {windows!r}") from None
    report = run_demo(out, windows=ws, preset=preset, steps=steps, seed=seed, jobs=jobs,
                      stop_when_formed=stop_when_formed)
    click.echo(f"report: {report}")
