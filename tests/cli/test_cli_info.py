"""Smoke test of `retrieval-heads info` (click's CliRunner and the real entry point)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from retrieval_heads.cli import cli, main

ARGS = ["info", "--layout", "SSFD", "--d-model", "32", "--n-heads", "4", "--window", "8",
        "--pos", "F=nope,S=rope"]


def test_info_via_click_runner():
    result = CliRunner().invoke(cli, ARGS)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "layout=SSFD" in out and "window=8" in out and "F=nope" in out and "S=rope" in out
    assert "parameters (non-embedding):" in out
    for l, kind in enumerate("SSFD"):
        assert f"layer {l} [{kind}]" in out


def test_main_exits_zero_and_bad_config_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as ok:
        main(ARGS)
    assert ok.value.code == 0
    assert "layer 3 [D]" in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad:
        main(["info", "--layout", "SXF"])
    assert bad.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: layout:") and "Traceback" not in err


def test_console_script_runs_in_a_subprocess():
    proc = subprocess.run([sys.executable, "-c", "from retrieval_heads.cli import main; main()", *ARGS],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "layer 2 [F]" in proc.stdout
