"""The command line's own behaviour: fast start, --version, suggestions, readable errors.

`retrieval-heads --help` and `--version` must not import torch (a subcommand imports what it
needs); the start-up time itself is measured in benchmarks/bench_cli_startup.py.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import click
import pytest

import retrieval_heads
from retrieval_heads import cli as cli_mod
from retrieval_heads.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "tiny_deep"

# Run the entry point in a fresh interpreter and report which heavy modules it imported.
_PROBE = """
import sys
from retrieval_heads.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("torch", "transformer_lens", "transformers", "pandas", "nnsight", "plotly")
               if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


def _probe(*args):
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=120)
    heavy = [ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY=")]
    return proc, heavy[-1][len("HEAVY="):] if heavy else None


@pytest.mark.parametrize("args", [["--help"], ["--version"], []] + [[name, "--help"] for name in sorted(COMMANDS)])
def test_help_and_version_import_no_torch(args):
    proc, heavy = _probe(*args)
    assert proc.returncode == 0, proc.stderr
    assert heavy == "", f"retrieval-heads {' '.join(args)} imported {heavy}"


def test_version_matches_the_package():
    proc, _ = _probe("--version")
    assert proc.stdout.strip() == f"retrieval-heads {retrieval_heads.__version__}"
    import importlib.metadata as md

    assert md.version("retrieval-heads") == retrieval_heads.__version__


def test_bare_command_prints_the_help_not_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    out, err = capsys.readouterr()
    assert e.value.code == 0 and err == ""
    assert out.startswith("Usage: retrieval-heads [OPTIONS] COMMAND [ARGS]...")
    assert "\n  scan " in out and "\n  train " in out


def test_help_lists_every_command_with_its_own_short_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name, (target, short) in COMMANDS.items():
        mod, fn = target.split(":")
        cmd = getattr(importlib.import_module(mod), fn)
        first_paragraph = " ".join(cmd.help.split("\n\n")[0].split())
        # the registry's line is what --help shows without importing the command: it must not drift
        assert first_paragraph.startswith(short.rstrip(".")), (name, short, first_paragraph)
        assert f"\n  {name} " in out


def test_mistyped_command_gets_a_suggestion(capsys):
    with pytest.raises(SystemExit) as e:
        main(["scna", "runs/x"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.strip() == ("error: no such command 'scna'. Did you mean 'scan'? Commands: ablate, compare, demo, "
                           "eval, export, info, patch, report, scan, train (see 'retrieval-heads --help')")
    with pytest.raises(SystemExit):
        main(["xyzzy"])
    assert "Did you mean" not in capsys.readouterr().err


def test_a_command_that_cannot_import_is_listed_and_says_why(monkeypatch, capsys):
    monkeypatch.setitem(COMMANDS, "broken", ("retrieval_heads.cli.no_such_module_xyz:cmd", "A broken command."))
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "\n  broken   A broken command." in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["broken"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.strip() == ("error: the 'broken' command cannot be loaded: ModuleNotFoundError: "
                           "No module named 'retrieval_heads.cli.no_such_module_xyz'")


def test_missing_dependency_of_a_command_names_the_package(monkeypatch, capsys):
    def fail(name, *a, **k):
        raise ModuleNotFoundError("No module named 'scipy'", name="scipy")

    monkeypatch.setattr(cli_mod.importlib, "import_module", fail)
    with pytest.raises(SystemExit) as e:
        main(["scan", "x"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: the 'scan' command cannot be loaded: ModuleNotFoundError: "
                                               "No module named 'scipy'; install it (pip install scipy)")


@pytest.mark.parametrize("cmd", ["scan", "eval", "ablate"])
def test_list_option_errors_name_the_option(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, str(FIXTURE), "--context-lens", "256;512"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: Invalid value for '--context-lens': expected comma-separated integers like '256,512', "
        f"got '256;512' (see 'retrieval-heads {cmd} --help')")
    with pytest.raises(SystemExit):
        main([cmd, str(FIXTURE), "--depths", "0.1,x"])
    assert "Invalid value for '--depths': expected comma-separated numbers" in capsys.readouterr().err


def test_option_types_parse_lists():
    from retrieval_heads.cli.options import FLOAT_LIST, INT_LIST

    assert INT_LIST.convert("256, 512,", None, None) == (256, 512)
    assert FLOAT_LIST.convert("0.1,0.5", None, None) == (0.1, 0.5)
    with pytest.raises(click.BadParameter, match="expected comma-separated integers like '256,512', got ','"):
        INT_LIST.convert(",", None, None)


def test_patch_query_only_prints_the_query_position_and_head_labels(capsys):
    with pytest.raises(SystemExit) as e:
        main(["patch", str(FIXTURE), "--query-only", "--n", "2", "--no-progress"])
    out = capsys.readouterr().out
    assert e.value.code == 0, out
    lines = out.splitlines()
    assert lines[1].startswith("patched: the query position only (position 159, token ")
    assert lines[2].split() == ["head", "recovered"]
    assert lines[3].split()[:2] == ["L5H3", "(F)"]  # the top head of the fixture, in the one label scheme
    assert all(" -1" not in ln for ln in lines[2:])  # no placeholder position column


def test_head_labels_round_trip():
    from retrieval_heads.interventions import format_heads
    from retrieval_heads.labels import head_label, parse_head_label

    assert head_label(3, 0) == "L3H0" and head_label(3, 0, "F") == "L3H0 (F)"
    assert format_heads([(1, 0), (3, 2)]) == "L1H0,L3H2"
    assert [parse_head_label(s) for s in ("L3H0", "l3h0", "3.0", "3:0")] == [(3, 0)] * 4
    with pytest.raises(ValueError, match="expected a head like 'L3H1'"):
        parse_head_label("L3")
