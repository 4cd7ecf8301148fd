"""`retrieval-heads train`: train a preset (with overrides) into a run folder.

    retrieval-heads train --preset tiny --out runs/tiny
    retrieval-heads train --preset tiny --out runs/tiny_w64 --window 64 --pos F=nope,S=rope
    retrieval-heads train --preset tiny --out runs/tiny --resume
    torchrun --nproc_per_node 2 -m retrieval_heads.train --preset tiny --out runs/tiny_ddp

Every check (preset, flags, context length vs needle, haystack, window vs context, out
folder) runs before anything is written; a failure is one ``error: ...`` line, exit code 2.
"""

from __future__ import annotations

import click

from ..config import MAX_INT, parse_pos
from ..train.presets import list_presets


class _Command(click.Command):
    """A click command whose unknown-option error lists the valid options."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as e:
            valid = sorted(o for p in self.params for o in p.opts if o.startswith("--"))
            raise click.UsageError(f"no such option: {e.option_name}; valid options: {', '.join(valid)}",
                                   ctx=ctx) from None


def _preset_epilog() -> str:
    return "\b\nPresets (retrieval_heads/data/presets/NAME.json):\n" + "\n".join(
        f"  {k}: {v}" for k, v in list_presets().items())


@click.command(cls=_Command, epilog=_preset_epilog())
@click.option("--preset", default="tiny", show_default=True, metavar="NAME",
              help=f"One of {', '.join(list_presets())}, or a preset .json file.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder to write.")
@click.option("--steps", type=int, help="Optimizer steps.")
@click.option("--layout", help="Layer layout, one letter per layer (F S M D L), e.g. SSSF.")
@click.option("--window", type=int, help="Sliding window (keys seen, including the query).")
@click.option("--pos", help="Positional encoding per attention kind, e.g. F=nope,S=rope.")
@click.option("--context-len", type=int, help="Training context length (tokens).")
@click.option("--seed", type=int, help="Seed of the initialisation and the data.")
@click.option("--device", help="auto, cpu, cuda or cuda:N.")
@click.option("--save-every", type=int, help="Checkpoint every N steps (plus log-spaced early ones).")
@click.option("--eval-every", type=int, help="Evaluate NIAH accuracy and LM loss every N steps.")
@click.option("--batch-size", type=int, help="Global batch (rows per optimizer step, all ranks).")
@click.option("--grad-accum", type=int, help="Micro-steps per optimizer step.")
@click.option("--lr", type=float, help="Peak learning rate.")
@click.option("--lr-schedule", type=click.Choice(["cosine", "wsd"]),
              help="After warm-up: cosine decay, or wsd (constant, then a linear decay over --decay-fraction).")
@click.option("--min-lr-ratio", type=float, help="Last learning rate as a fraction of --lr (1 = constant).")
@click.option("--decay-fraction", type=float, help="wsd: the last fraction of the steps that decays.")
@click.option("--niah-fraction", type=float, help="Fraction of rows that are needle tasks.")
@click.option("--induction-fraction", type=float, help="Fraction of rows that are repeated random strings.")
@click.option("--variant", help="Needle variant used in training and evaluation (e.g. single_1).")
@click.option("--haystack", help="LM text: essay, noise, or a path to a text file / folder.")
@click.option("--stop-at", type=int, help="Stop after this step (with a checkpoint); --resume continues.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace the run in --out.")
@click.option("--no-progress", is_flag=True, help="No progress bar: one line per 5% of the steps instead.")
def train(preset, out, steps, layout, window, pos, context_len, seed, device, save_every, eval_every,
          batch_size, grad_accum, lr, lr_schedule, min_lr_ratio, decay_fraction, niah_fraction,
          induction_fraction, variant, haystack, stop_at, resume, overwrite, no_progress):
    """Train a small hybrid LM on LM text + needle tasks, with checkpoints for scanning."""
    from ..tasks.mixture import answer_reserve
    from ..train.loop import dist_env
    from ..train.loop import train as run_train
    from ..train.presets import load_preset

    model_cfg, cfg = load_preset(preset)
    mchanges = {}
    if layout is not None:
        mchanges.update(layout=layout, n_layers=None)
    if window is not None:
        mchanges["window"] = window
    if pos is not None:
        mchanges["pos"] = {**model_cfg.pos, **parse_pos(pos)}
    tchanges = {k: v for k, v in dict(
        steps=steps, context_len=context_len, seed=seed, device=device, save_every=save_every,
        eval_every=eval_every, batch_size=batch_size, grad_accum=grad_accum, lr=lr, lr_schedule=lr_schedule,
        min_lr_ratio=min_lr_ratio, decay_fraction=decay_fraction, niah_fraction=niah_fraction,
        induction_fraction=induction_fraction, niah_variant=variant,
        haystack=haystack).items() if v is not None}
    cfg = cfg.replace(**tchanges)
    need = cfg.context_len + answer_reserve(cfg.niah_variant)
    if model_cfg.max_seq_len < need:  # room to evaluate past the training length
        mchanges["max_seq_len"] = min(MAX_INT, max(4 * cfg.context_len, need))
    model_cfg = model_cfg.replace(**mchanges) if mchanges else model_cfg
    rank = dist_env()[0]
    if rank == 0:
        click.echo(f"{preset}: {model_cfg.describe()} | context {cfg.context_len}, {cfg.steps} steps, "
                   f"batch {cfg.batch_size}, {cfg.niah_variant} fraction {cfg.niah_fraction} -> {out}")
    res = run_train(model_cfg, cfg, out, resume=resume, overwrite=overwrite, stop_at=stop_at,
                    progress=not no_progress, log=click.echo,
                    log_every=max(1, cfg.steps // 20) if no_progress else None)
    if rank == 0:
        f = res["final"]
        tps = f"{res['tokens_per_s']:,.0f} tokens/s" if res["tokens_per_s"] else "no training step was left to run"
        acc = f", NIAH acc {f['niah_acc']:.2f}, LM loss {f['lm_loss']:.3f}" if f else ""
        click.echo(f"step {res['step']}/{cfg.steps}: {res['wall_s']:.1f}s training, {tps}{acc}; "
                   f"checkpoints in {out}")
