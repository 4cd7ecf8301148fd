"""The sharded scan (``torchrun -m retrieval_heads.pipeline.distributed``, issue 18) on the CPU
with 2 gloo processes: its tables equal the serial scan's stored golden tables, its cache is the
serial scan's (a serial re-scan finds everything cached and leaves the tables unchanged), only
rank 0 writes, and a setting that fails on rank 0 ends every rank at once with one error line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import retrieval_heads as rh
from retrieval_heads.pipeline import distributed
from tests.pipeline.test_scan_golden import SETTINGS, assert_scan_matches_golden

RUN = Path(__file__).parents[1] / "fixtures" / "micro_run"


def golden_args(run, out) -> list[str]:
    s = SETTINGS
    args = [str(run), "--out", str(out), "--variant", s["variant"],
            "--context-lens", ",".join(map(str, s["context_lens"])), "--depths", ",".join(map(str, s["depths"])),
            "--n-per-cell", str(s["n_per_cell"]), "--seed", str(s["seed"]), "--reference", str(s["reference"]),
            "--threshold", str(s["threshold"]), "--batch-size", str(s["batch_size"]), "--no-report"]
    return args + (["--recurrent"] if s["recurrent"] else []) + ([] if s["only_correct"] else ["--all-samples"])


def torchrun(args, n: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                           "-m", "retrieval_heads.pipeline.distributed", *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture
def run(tmp_path):
    return shutil.copytree(RUN, tmp_path / "micro_run")


def test_two_process_scan_equals_the_serial_scan(run, tmp_path):
    out = tmp_path / "scan"
    p = torchrun(golden_args(run, out))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "6 checkpoint(s): 6 scored on 2 rank(s), 0 cached, 0 skipped" in p.stdout
    for rank, steps in ((0, ("000000", "000400", "000800")), (1, ("000200", "000600", "001000"))):
        for s in steps:  # round-robin shares
            assert f"rank {rank}: step_{s} done" in p.stderr
    assert_scan_matches_golden(out)
    assert not (run / "scan").exists()  # --out leaves the run folder untouched
    assert len(list((out / "cache").glob("scores-*.json"))) == 6 and len(list((out / "cache").glob("qk-*.json"))) == 6
    assert not list(out.rglob(".tmp-*"))
    # the serial scan of the same folder: everything cached, the tables (and scan.json) already its own
    s = dict(SETTINGS)
    kw = {k: s.pop(k) for k in ("reference", "threshold", "batch_size")}
    df = rh.scan(run, out=out, progress=False, report=False, **kw, **s)
    assert df.attrs["scan"]["n_scored"] == 0 and df.attrs["scan"]["unchanged"]


def test_rank0_error_ends_every_rank_and_writes_nothing(run, tmp_path):
    out = tmp_path / "scan"
    p = torchrun([str(run), "--out", str(out), "--context-lens", "100000", "--no-report"], timeout=120)
    assert p.returncode != 0
    assert "error: context_lens: [100000]" in p.stderr and "Traceback" not in p.stderr.split("error:")[0]
    assert not out.exists() or not any(out.glob("*.parquet"))


def test_without_torchrun_it_is_a_serial_scan_and_refuses_bad_options(run, tmp_path, capsys, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.main([str(run), "--device", "tpu"]) == 2
    assert "error: device: 'tpu'" in capsys.readouterr().err
    assert distributed.main([str(run), "--dtype", "fp16"]) == 2
    assert "error: dtype: 'fp16'" in capsys.readouterr().err
    assert not (run / "scan").exists()
    out = tmp_path / "serial"
    assert distributed.main(golden_args(run, out)) == 0
    assert "6 checkpoint(s): 6 scored on 1 rank(s)" in capsys.readouterr().out
    assert_scan_matches_golden(out)
