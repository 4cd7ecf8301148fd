"""`retrieval-heads` command line. Each subcommand lives in its own module of this package
and is registered in ``_COMMANDS``; a module that fails to import does not break the others.

Errors: a ``ValueError``/``FileNotFoundError`` raised by the library becomes a one-line
``error: ...`` and exit code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import importlib
import sys

import click

# subcommand name -> "module:function"
_COMMANDS = {
    "train": "retrieval_heads.cli.train_cmd:train",
    "scan": "retrieval_heads.cli.scan_cmd:scan",
    "compare": "retrieval_heads.cli.scan_cmd:compare",
    "eval": "retrieval_heads.cli.interventions_cmd:eval_cmd",
    "ablate": "retrieval_heads.cli.interventions_cmd:ablate",
    "patch": "retrieval_heads.cli.interventions_cmd:patch",
    "report": "retrieval_heads.cli.scan_cmd:report",
    "demo": "retrieval_heads.cli.demo_cmd:demo",
    "info": "retrieval_heads.cli.info_cmd:info",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(name for name in _COMMANDS if self._load(name) is not None)

    def get_command(self, ctx, name):
        return self._load(name)

    @staticmethod
    def _load(name):
        if name not in _COMMANDS:
            return None
        mod, fn = _COMMANDS[name].split(":")
        try:
            return getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError):
            return None


@click.group(cls=LazyGroup)
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx, debug):
    """Find, track and intervene on retrieval heads in hybrid language models."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv=None):
    """Entry point: one-line errors with exit code 2 unless --debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="retrieval-heads", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except (ValueError, FileNotFoundError, NotADirectoryError, FileExistsError, PermissionError) as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except SystemExit:
        raise
    sys.exit(0)
