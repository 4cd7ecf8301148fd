"""`retrieval-heads demo` end to end on a few steps: both runs trained and scanned, one report
holding both runs' formation curves and NIAH-vs-tokens lines. (The real demo's timing is
measured outside the test suite; see README.)"""

import importlib.util
import json
import re
from pathlib import Path

from helpers import MC, TC

from retrieval_heads.cli import main

LINE = r"step {step}/{end}  loss \d+\.\d\d  niah \d\.\d\d  (\d+m)?\d+s"


def test_demo_writes_one_report_with_both_runs(tmp_path, capfd):
    out = tmp_path / "demo"
    try:
        main(["demo", "--out", str(out), "--steps", "3", "--windows", "8,64", "--jobs", "2"])
    except SystemExit as e:
        assert e.code == 0
    printed = capfd.readouterr().out  # the workers' lines too (they write to the process's stdout)
    for w in (8, 64):  # parallel runs without bars: progress lines per run, per stage
        assert re.search(rf"^\[window_{w}\] {LINE.format(step=3, end=3)}$", printed, re.M), printed
        assert f"[window_{w}] scanning 4 of 4 checkpoints (0 cached)" in printed
        assert re.search(rf"^\[window_{w}\] scanning 4/4 checkpoints \(step_000003 done\)  \d+s$", printed, re.M)
    report = out / "report.html"
    assert f"report: {report}" in printed
    table = printed[printed.index("[demo] formation of the first full-attention retrieval head"):]
    rows = table.splitlines()[1:5]
    assert rows[0].split() == ["measure", "(threshold)", "window", "8", "window", "64"]
    assert [r.split()[0] for r in rows[1:]] == ["mass", "copy_tf", "copy"]  # every measure, formed or censored
    assert all(re.search(r"(\d[\d,]*|censored at [\d,]+)$", r) for r in rows[1:]), rows
    assert f"compare page: {out / 'compare.html'}" in printed
    html = report.read_text()
    for w in (8, 64):
        assert (out / f"window_{w}" / "scan" / "scores.parquet").exists()
        assert f"window {w}: F-head mass" in html  # one formation panel per run (the primary measure)
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


def test_progress_line_format():
    from retrieval_heads.train.loop import format_duration, progress_line

    assert progress_line(400, 2000, 2.314, 0.0, 72.4) == "step 400/2000  loss 2.31  niah 0.00  1m12s"
    assert progress_line(1, 10, None, None, 3) == "step 1/10  loss -  niah -  3s"
    assert [format_duration(s) for s in (0, 59.6, 600, 3725)] == ["0s", "1m00s", "10m00s", "1h02m05s"]


def test_training_without_bar_logs_every_n_steps(tmp_path):
    from retrieval_heads.train import train

    lines = []
    train(MC, TC, tmp_path / "r", progress=False, log=lines.append, log_every=2)
    assert len(lines) == 3, lines  # steps 2, 4, 6 of 6
    for line, step in zip(lines, (2, 4, 6)):
        assert re.fullmatch(LINE.format(step=step, end=6), line), line
    quiet = []
    train(MC, TC.replace(seed=2), tmp_path / "q", progress=False, log=quiet.append)
    assert quiet == []  # log_every unset: no periodic lines (as before)


def test_demo_worker_logs_progress_lines(tmp_path, capsys):
    """The worker of a parallel demo (no bars): prefixed step lines, then scanning lines."""
    from retrieval_heads import demo

    demo._worker((MC, TC, tmp_path / "window_8", 0))  # 0: the whole budget, no early stop
    out = capsys.readouterr().out.splitlines()
    steps = [ln for ln in out if re.fullmatch(r"\[window_8\] " + LINE.format(step=r"\d", end=6), ln)]
    assert len(steps) == 6  # log_every(6) == 1
    assert out[0].startswith("[window_8] [demo] training layout=SF") and out[0].endswith("for 6 steps -> "
                                                                                         f"{tmp_path / 'window_8'}")
    assert out[1] == "[window_8] training window_8: 6 steps"
    i = out.index("[window_8] scanning window_8")
    assert out[i + 1] == "[window_8] scanning 5 of 5 checkpoints (0 cached)"
    assert [ln.split("  ")[0] for ln in out[i + 2:i + 7]] == [
        f"[window_8] scanning {k}/5 checkpoints (step_00000{s} done)" for k, s in enumerate((0, 1, 2, 3, 6), 1)]
    assert re.fullmatch(r"\[window_8\] \[demo\] window_8 done in \d+ s", out[-1])
    assert demo.log_every(2000) == 100 and demo.log_every(5) == 1


def test_analyses_train_and_scan_logs_progress_lines(tmp_path):
    path = Path(__file__).resolve().parents[2] / "analyses" / "common.py"
    spec = importlib.util.spec_from_file_location("analyses_common_progress", path)
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    lines = []
    common.train_and_scan(MC, TC, tmp_path / "run", log=lines.append, log_every=3,
                          scan_kw=dict(depths=(0.5,), n_per_cell=1))
    assert lines[0] == "training run: 6 steps"
    assert [ln.split("  ")[0] for ln in lines if ln.startswith("step ")] == ["step 3/6", "step 6/6"]
    assert "scanning run" in lines and "scanning 5 of 5 checkpoints (0 cached)" in lines
    assert lines[-1].startswith("scanning 5/5 checkpoints (step_000006 done)")
    assert common.progress_every(2500) == 125
