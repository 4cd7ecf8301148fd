"""`retrieval-heads scan` on a folder of runs, `scan --out`, head labels in the scan output and
report, and `compare`'s printed table (integers, "not formed")."""

import json
import shutil

import pandas as pd
import pytest
from test_scan import make_run

import retrieval_heads as rh
from retrieval_heads.cli import main
from retrieval_heads.pipeline import compare_runs, summary_display

ARGS = ["--context-lens", "150", "--depths", "0.5", "--n-per-cell", "1", "--no-progress", "--no-report"]


def cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture(scope="module")
def runs_folder(tmp_path_factory):
    """runs/ holding window_16/ and window_64/, two checkpoints each (like runs/demo)."""
    root = tmp_path_factory.mktemp("folder") / "runs"
    make_run(root / "window_64", window=64, steps=(0, 2))
    make_run(root / "window_16", window=16, steps=(0, 2))
    return root


@pytest.fixture
def runs(runs_folder, tmp_path):
    return shutil.copytree(runs_folder, tmp_path / "runs")


def test_scan_a_folder_of_runs_scans_each_in_order(runs, capsys):
    code, out, err = cli(["scan", runs, *ARGS], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{runs} holds 2 runs: window_16, window_64; scanning each"
    assert lines[1] == f"[1/2] {runs / 'window_16'}"
    assert lines[5] == f"[2/2] {runs / 'window_64'}"
    assert lines[2] == "2 checkpoint(s): 2 scored, 0 cached, 0 skipped"
    assert lines[-3] == "summary:"
    assert lines[-2] == (f"  window_16: not formed; 2 checkpoint(s), 0 skipped; "
                         f"tables: {runs / 'window_16' / 'scan'}")
    assert lines[-1] == (f"  window_64: not formed; 2 checkpoint(s), 0 skipped; "
                         f"tables: {runs / 'window_64' / 'scan'}")
    for w in (16, 64):
        assert (runs / f"window_{w}" / "scan" / "scores.parquet").exists()
    assert not (runs / "scan").exists()


def test_scan_a_folder_of_runs_with_one_unreadable_run(runs, capsys):
    """A run that cannot be scanned at all is a one-line error; the others are still scanned (exit 2)."""
    for ck in rh.list_checkpoints(runs / "window_16"):
        (ck / "config.json").write_text("{not json")
    code, out, err = cli(["scan", runs, *ARGS], capsys)
    assert code == 2
    assert out.splitlines()[-2] == "  window_16: not scanned (error above)"
    assert (runs / "window_64" / "scan" / "scores.parquet").exists()
    assert err.splitlines()[0].startswith("error: window_16: ")
    assert err.splitlines()[-1] == "error: 1 of 2 run(s) could not be scanned: window_16"


def test_scan_an_empty_folder_is_a_one_line_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = cli(["scan", empty, *ARGS], capsys)
    assert code == 2 and out == ""
    assert err == (f"error: {empty}: no checkpoints (step_XXXXXX folders) to scan, "
                   "and no run folders holding them\n")
    assert list(empty.iterdir()) == []


def test_api_scan_of_a_folder_of_runs_names_them(runs):
    with pytest.raises(ValueError) as e:
        rh.scan(runs, context_lens=(150,), depths=(0.5,), n_per_cell=1, progress=False)
    assert str(e.value) == (f"{runs}: no checkpoints (step_XXXXXX folders) here, but 2 run(s) in it: "
                            f"window_16, window_64; scan each run folder "
                            f"(`retrieval-heads scan {runs}` scans them all)")


def test_scan_out_writes_tables_report_and_cache_there(runs, tmp_path, capsys):
    run, dest = runs / "window_16", tmp_path / "scans" / "w16"
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    code, out, err = cli(["scan", run, *[a for a in ARGS if a != "--no-report"], "--out", dest], capsys)
    assert code == 0, err
    assert out.splitlines()[-1] == f"tables: {dest}"
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # the run is only read
    for f in ("scores.parquet", "niah.parquet", "formation.parquet", "checkpoints.parquet", "formation.json",
              "scan.json", "report.html", ".lock"):
        assert (dest / f).exists(), f
    assert list((dest / "cache").glob("scores-*.json"))
    html = (dest / "report.html").read_text()
    assert f"Retrieval heads: {run}" in html
    # a rescan finds its cache in DIR; `report DIR` and `compare DIR ...` read the tables there
    code, out, _ = cli(["scan", run, *ARGS, "--out", dest], capsys)
    assert code == 0 and "2 checkpoint(s): 0 scored, 2 cached, 0 skipped (tables unchanged)" in out
    (dest / "report.html").unlink()
    code, out, _ = cli(["report", dest], capsys)
    assert code == 0 and out == f"wrote {dest / 'report.html'}\n" and (dest / "report.html").exists()
    code, out, _ = cli(["compare", dest, "--out", tmp_path / "c.html"], capsys)
    assert code == 0 and "SF w=16" in out


def test_api_scan_out(runs, tmp_path):
    df = rh.scan(runs / "window_64", context_lens=(150,), depths=(0.5,), n_per_cell=1, progress=False,
                 report=False, out=tmp_path / "o")
    assert df.attrs["scan"]["scan_dir"] == str(tmp_path / "o")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "o" / "scores.parquet"), df)
    assert not (runs / "window_64" / "scan").exists()


def test_scan_folder_of_runs_with_out_goes_to_out_run_name(runs, tmp_path, capsys):
    dest = tmp_path / "all"
    code, out, err = cli(["scan", runs, *ARGS, "--out", dest], capsys)
    assert code == 0, err
    assert sorted(p.name for p in dest.iterdir()) == ["window_16", "window_64"]
    for w in (16, 64):
        assert (dest / f"window_{w}" / "scores.parquet").exists()
        assert not (runs / f"window_{w}" / "scan").exists()
    assert out.splitlines()[-1].endswith(f"tables: {dest / 'window_64'}")


def test_head_labels_in_scan_output_and_report(runs, capsys):
    """Threshold 0 over all samples: the first F head (layer 1, head 0) 'forms' at step 0."""
    run = runs / "window_16"
    code, out, err = cli(["scan", run, "--context-lens", "150", "--depths", "0.5", "--n-per-cell", "1",
                          "--no-progress", "--all-samples", "--threshold", "0"], capsys)
    assert code == 0, err
    assert "first full-attention retrieval head: L1H0 at step 0 (0 tokens)" in out.splitlines()
    html = (run / "scan" / "report.html").read_text()
    assert "): L1H0 at step 0 (0 tokens).</p>" in html and "L1.H0" not in html


def _fake_scan(root, window: int, formed: dict | None, niah: float):
    """The four scan tables and formation.json of a run, written by hand (no model)."""
    d = root / "scan"
    d.mkdir(parents=True)
    pd.DataFrame({"step": [0, 1800], "tokens_seen": [0, 7372800], "layer": [3, 3], "head": [0, 0],
                  "layer_type": ["F", "F"], "metric": ["copy", "copy"], "value": [0.0, 0.5]}).to_parquet(
        d / "scores.parquet")
    pd.DataFrame({"step": [1800], "tokens_seen": [7372800], "context_len": [160], "depth": [0.5],
                  "accuracy": [niah], "n": [2]}).to_parquet(d / "niah.parquet")
    pd.DataFrame({"layer": [3], "head": [0], "layer_type": ["F"], "formed": [formed is not None],
                  "formation_step": [1800.0 if formed else float("nan")]}).to_parquet(d / "formation.parquet")
    pd.DataFrame({"step": [0, 1800], "status": ["ok", "ok"]}).to_parquet(d / "checkpoints.parquet")
    (d / "formation.json").write_text(json.dumps({
        "threshold": 0.1, "model": {"layout": "SSSF", "window": window, "pos": {"F": "nope", "S": "rope"}},
        "run": formed or {"step": None, "layer": None, "head": None, "tokens_seen": None}}))
    return root


def test_compare_prints_integers_and_not_formed(tmp_path, capsys):
    a = _fake_scan(tmp_path / "w16", 16, {"step": 1800, "layer": 3, "head": 0, "tokens_seen": 7372800}, 1.0)
    b = _fake_scan(tmp_path / "w64", 64, None, 0.25)
    code, out, err = cli(["compare", a, b, "--out", tmp_path / "cmp.html"], capsys)
    assert code == 0, err
    assert out.splitlines() == [
        "                  label formation_step formation_tokens  final_niah_accuracy",
        "SSSF w=16 F:nope,S:rope           1800        7,372,800                 1.00",
        "SSSF w=64 F:nope,S:rope     not formed       not formed                 0.25",
        f"wrote {tmp_path / 'cmp.html'}",
    ]
    # the saved tables keep their numeric columns (NaN where not formed)
    s = pd.read_parquet(tmp_path / "cmp.parquet")
    assert s.formation_step.tolist()[0] == 1800 and pd.isna(s.formation_step.tolist()[1])
    html = (tmp_path / "cmp.html").read_text()
    assert "<td>7,372,800</td>" in html and "<td>not formed</td>" in html and "1800.0" not in html


def test_summary_display_leaves_the_summary_alone(tmp_path):
    a = _fake_scan(tmp_path / "w16", 16, {"step": 1800, "layer": 3, "head": 0, "tokens_seen": 7372800}, 1.0)
    _, summary = compare_runs([a], tmp_path / "c.html")
    shown = summary_display(summary)
    assert summary.formation_tokens.dtype == "float64"
    assert shown.loc[0, "formation_tokens"] == "7,372,800" and shown.loc[0, "window"] == "16"
