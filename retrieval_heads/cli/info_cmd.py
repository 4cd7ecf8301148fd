"""`retrieval-heads info`: describe a model configuration (layout, parameters, hooks)."""

from __future__ import annotations

import click

from ..config import ModelConfig, parse_pos


@click.command()
@click.option("--layout", default="SSSF", show_default=True, help="One letter per layer: F S M D L.")
@click.option("--d-model", default=128, show_default=True, type=int)
@click.option("--n-heads", default=4, show_default=True, type=int)
@click.option("--window", default=64, show_default=True, type=int)
@click.option("--pos", default="F=rope,S=rope", show_default=True, help="Positional encoding per kind.")
@click.option("--hf", "hf_path", default=None, type=click.Path(exists=True),
              help="Describe a Hugging Face checkpoint (or a folder of them) instead, from its config.json.")
@click.option("--trust-remote-code", is_flag=True, help="With --hf: allow configs that ship their own code.")
def info(layout, d_model, n_heads, window, pos, hf_path, trust_remote_code):
    """Build a model from the options and print its layout, size and hook names."""
    from ..model import HybridLM

    if hf_path is not None:
        from ..hf.loader import describe_hf

        click.echo(describe_hf(hf_path, trust_remote_code=trust_remote_code))
        return

    cfg = ModelConfig(layout=layout, d_model=d_model, n_heads=n_heads, window=window, pos=parse_pos(pos))
    model = HybridLM(cfg)
    click.echo(cfg.describe())
    click.echo(f"parameters (non-embedding): {model.num_params():,}")
    for l, kind in enumerate(cfg.layout):
        hooks = [n for n in model.hook_dict if n.startswith(f"blocks.{l}.")]
        click.echo(f"layer {l} [{kind}]: {len(hooks)} hooks, e.g. {hooks[min(1, len(hooks) - 1)]}")
