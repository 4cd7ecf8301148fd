"""`retrieval-heads demo` end to end on a few steps: both runs trained and scanned, one report
holding both runs' formation curves and NIAH-vs-tokens lines. (The real demo's timing is
measured outside the test suite; see README.)"""

import json

from retrieval_heads.cli import main


def test_demo_writes_one_report_with_both_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    try:
        main(["demo", "--out", str(out), "--steps", "3", "--windows", "8,64"])
    except SystemExit as e:
        assert e.code == 0
    printed = capsys.readouterr().out
    report = out / "report.html"
    assert f"report: {report}" in printed
    html = report.read_text()
    for w in (8, 64):
        assert (out / f"window_{w}" / "scan" / "scores.parquet").exists()
        assert f"F-head copy score: window {w}" in html  # one formation panel per run
        assert f'"name":"window {w}"' in html  # NIAH-vs-tokens line per run
    summary = json.loads((out / "demo.json").read_text())
    assert len(summary["runs"]) == 2
    assert {r["window"] for r in summary["runs"]} == {8, 64}


def test_demo_rejects_a_window_larger_than_the_context(tmp_path, capsys):
    try:
        main(["demo", "--out", str(tmp_path / "d"), "--steps", "2", "--windows", "8,4096"])
    except SystemExit as e:
        assert e.code == 2
    assert "error: windows:" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_demo_worker_failure_is_one_line_error(tmp_path, capsys):
    """A failure inside a worker process (here: the run folder cannot be created) stops the
    demo with the worker's one-line error and exit 2, and no report is written."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    try:
        main(["demo", "--out", str(blocker / "demo"), "--steps", "2", "--windows", "8,16,32", "--jobs", "2"])
    except SystemExit as e:
        assert e.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Not a directory" in err and err.count("\n") == 1


def test_run_demo_rejects_bad_jobs(tmp_path):
    import pytest

    from retrieval_heads.demo import run_demo

    with pytest.raises(ValueError, match="jobs"):
        run_demo(tmp_path / "d", windows=(8, 16), steps=1, jobs=0)
    assert not (tmp_path / "d").exists()
