"""`retrieval-heads` command line. Each subcommand lives in its own module of this package
and is registered in ``_COMMANDS``; a module that fails to import does not break the others.

Errors: a bad option or argument, and a ``ValueError``/``OSError`` (``FileNotFoundError``,
``PermissionError``, ...) or out-of-memory error raised by the library, become one line
``error: ...`` on stderr and exit code 2 (``--debug`` shows the library's traceback).
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


def _one_line(msg) -> str:
    return " ".join(part.strip() for part in str(msg).splitlines() if part.strip())


def _is_oom(e: BaseException) -> bool:
    msg = str(e).lower()
    return isinstance(e, MemoryError) or "out of memory" in msg or "can't allocate memory" in msg


def main(argv=None):
    """Entry point: one-line errors with exit code 2 unless --debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="retrieval-heads", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:  # bad option or argument: one line, like the library's errors
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        click.echo(f"error: {_one_line(e.format_message())}{hint}", err=True)
        sys.exit(2)
    except (ValueError, OSError) as e:  # FileNotFoundError, PermissionError, disk full, ...
        if debug:
            raise
        click.echo(f"error: {_one_line(e)}", err=True)
        sys.exit(2)
    except (MemoryError, RuntimeError) as e:  # torch's OutOfMemoryError is a RuntimeError
        if debug or not _is_oom(e):
            raise
        click.echo(f"error: out of memory ({_one_line(e)[:300]}); use a shorter context or a smaller batch",
                   err=True)
        sys.exit(2)
    except SystemExit:
        raise
    sys.exit(0)
