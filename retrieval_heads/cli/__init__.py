"""`retrieval-heads` command line. Each subcommand lives in its own module of this package
and is registered in ``COMMANDS`` with its one-line help, so that ``retrieval-heads --help``
and ``--version`` import no torch: a subcommand's module is imported only when it runs (or
its own ``--help`` is asked for). A subcommand whose module fails to import is still listed;
running it prints the import error as one line.

Errors: a bad option or argument, and a ``ValueError``/``OSError`` (``FileNotFoundError``,
``PermissionError``, ...) or out-of-memory error raised by the library, become one line
``error: ...`` on stderr and exit code 2 (``--debug`` shows the library's traceback).
"""

from __future__ import annotations

import difflib
import importlib
import logging
import sys

import click

from .._version import __version__

# subcommand name -> ("module:function", one-line help shown by `retrieval-heads --help`).
# tests/cli/test_cli_startup.py checks that each line equals the command's own short help.
COMMANDS = {
    "train": ("retrieval_heads.cli.train_cmd:train",
              "Train a small hybrid LM on LM text + needle tasks, with checkpoints for scanning."),
    "scan": ("retrieval_heads.cli.scan_cmd:scan",
             "Score every checkpoint of RUN for retrieval heads; write tables and a report."),
    "compare": ("retrieval_heads.cli.scan_cmd:compare",
                "Formation step and NIAH-vs-tokens of several scanned RUNS on one figure."),
    "eval": ("retrieval_heads.cli.interventions_cmd:eval_cmd",
             "NIAH accuracy per length and depth, long-context loss by position, short-context loss."),
    "ablate": ("retrieval_heads.cli.interventions_cmd:ablate",
               "Ablate the top-K heads by --rank-by; controls: K random heads of the same layer kind, K SWA heads."),
    "patch": ("retrieval_heads.cli.interventions_cmd:patch",
              "Activation patching clean -> corrupted needle prompt: recovered logit difference."),
    "report": ("retrieval_heads.cli.scan_cmd:report",
               "Rebuild RUN/scan/report.html from the existing scan tables."),
    "demo": ("retrieval_heads.cli.demo_cmd:demo",
             "Large-Window Laziness on 2 CPU cores: prints the path of the HTML report."),
    "export": ("retrieval_heads.cli.export_cmd:export",
               "Write a scan's per-sample head scores in another tool's format (wu: Wu et al.'s head_score JSON)."),
    "info": ("retrieval_heads.cli.info_cmd:info",
             "Build a model from the options and print its layout, size and hook names."),
}


class CommandImportError(click.ClickException):
    """A subcommand whose module cannot be imported (a missing dependency, a broken install)."""


class LazyGroup(click.Group):
    """A group that lists its subcommands from ``COMMANDS`` and imports one only to run it."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        target = COMMANDS[name][0]
        mod, fn = target.split(":")
        try:
            return getattr(importlib.import_module(mod), fn)
        except ImportError as e:
            missing = getattr(e, "name", None)
            hint = f"; install it (pip install {missing})" if missing and "." not in missing else ""
            raise CommandImportError(f"the '{name}' command cannot be loaded: {type(e).__name__}: {e}{hint}") from e
        except AttributeError as e:
            raise CommandImportError(f"the '{name}' command cannot be loaded: {target} is missing ({e})") from e

    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name is not None and name not in COMMANDS and not name.startswith("-"):
            close = difflib.get_close_matches(name, list(COMMANDS), n=3, cutoff=0.5)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise click.UsageError(f"no such command {name!r}.{hint} Commands: {', '.join(sorted(COMMANDS))}",
                                   ctx=ctx)
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][1]) for name in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.version_option(__version__, "--version", prog_name="retrieval-heads", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("-v", "--verbose", count=True, help="Log the library's diagnostics to stderr (-vv: debug detail).")
@click.option("-q", "--quiet", is_flag=True, help="Log errors only (no library warnings).")
@click.pass_context
def cli(ctx, debug, verbose, quiet):
    """Find, track and intervene on retrieval heads in hybrid language models."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    setup_logging(verbose, quiet)


class _Stderr(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record is emitted (redirections included)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


_LOG_HANDLER: _Stderr | None = None


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """The ``retrieval_heads`` logger to stderr, one ``level: message`` line per record: warnings by
    default, info with ``-v``, debug with ``-vv``, errors only with ``--quiet``."""
    global _LOG_HANDLER
    log = logging.getLogger("retrieval_heads")
    if _LOG_HANDLER is None:
        _LOG_HANDLER = _Stderr()
        _LOG_HANDLER.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        log.addHandler(_LOG_HANDLER)
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    log.setLevel(level)


def _one_line(msg) -> str:
    return " ".join(part.strip() for part in str(msg).splitlines() if part.strip())


def _is_oom(e: BaseException) -> bool:
    msg = str(e).lower()
    return isinstance(e, MemoryError) or "out of memory" in msg or "can't allocate memory" in msg


def main(argv=None):
    """Entry point: one-line errors with exit code 2 unless --debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if not [a for a in args if a != "--debug"]:  # a bare `retrieval-heads`: the help, not an error
        click.echo(cli.get_help(click.Context(cli, info_name="retrieval-heads")))
        sys.exit(0)
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
