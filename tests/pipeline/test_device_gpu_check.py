"""The native-scan step of ``benchmarks/gpu_check.sh`` (issue 18), on the CPU: the script stays
valid bash and plans the step on GPU machines only; the step writes "skipped" without CUDA; the
summary turns its JSON into two rows (tables within tolerance, speed ratio), ERROR when it has
no result, and no rows when the step was not planned (CPU smoke, issue 8's work folders)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "benchmarks" / "gpu_check.sh"


def _summary():
    spec = importlib.util.spec_from_file_location("gpu_check_summary", ROOT / "benchmarks" / "gpu_check_summary.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_script_is_valid_bash_and_plans_the_scan_on_gpus_only(tmp_path):
    assert subprocess.run(["bash", "-n", str(CHECK)]).returncode == 0
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    gpu = subprocess.run(["bash", str(CHECK), "--dry-run"], env=env, capture_output=True, text=True, cwd=ROOT)
    assert gpu.returncode == 0 and "[scan, timeout 150s]" in gpu.stdout and "--scan-check" in gpu.stdout
    cpu = subprocess.run(["bash", str(CHECK), "--dry-run", "--cpu-smoke"], env=env, capture_output=True, text=True,
                         cwd=ROOT)
    assert cpu.returncode == 0 and "[scan," not in cpu.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer without CUDA")
def test_scan_check_without_cuda_is_skipped(tmp_path):
    out = tmp_path / "scan.json"
    assert _summary().scan_check(out) == 0
    assert "no CUDA" in json.loads(out.read_text())["skipped"]


def _result(fp32=3e-6, cpu_s=40.0, cuda_s=1.5):
    per = {"copy": 0.0, "mass": fp32, "entropy": fp32 / 2}
    return {"micro": {"fp32": {"max_abs": fp32, "per_metric": per, "nan_mismatch": 0},
                      "bf16": {"per_metric": {"mass": 2e-3, "copy": 0.01}, "within_tolerance": True},
                      "formation": {"cpu": 1000, "cuda_fp32": 1000}},
            "torchrun": "max |diff| vs cpu 3e-06",
            "small": {"n_checkpoints": 3, "context_lens": [512], "cpu_threads": 16, "fp32_max_abs": 1e-6,
                      "seconds": {"cpu": cpu_s, "cuda_fp32": cuda_s, "cuda_bf16": 1.0}}}


def _rows(summ, work, **kw):
    res = summ.summarize(work, "h200", None, **kw)
    return [r for r in res["rows"] if r["name"].startswith("native scan")], res


def test_summary_rows_of_the_scan_step(tmp_path, capsys):
    summ = _summary()
    (tmp_path / "steps.tsv").write_text("scan\t0\t80\t150\n")
    (tmp_path / "scan.json").write_text(json.dumps(_result()))
    rows, _ = _rows(summ, tmp_path)
    assert [r["status"] for r in rows] == ["PASS", "PASS"]
    assert rows[1]["value"] == round(40 / 1.5, 1) and "torchrun 1 rank cuda" in rows[0]["note"]
    (tmp_path / "scan.json").write_text(json.dumps(_result(fp32=3e-3, cpu_s=10.0)))
    rows, res = _rows(summ, tmp_path)
    assert [r["status"] for r in rows] == ["FAIL", "FAIL"] and not res["ok"]
    assert "native scan CPU / CUDA fp32 time" in capsys.readouterr().out  # in the printed table
    (tmp_path / "scan.json").unlink()
    (tmp_path / "steps.tsv").write_text("scan\t124\t150\t150\n")
    rows, _ = _rows(summ, tmp_path)
    assert [r["status"] for r in rows] == ["ERROR", "ERROR"] and "timed out" in rows[0]["note"]
    (tmp_path / "scan.json").write_text(json.dumps({"error": "RuntimeError: CUDA error"}))
    (tmp_path / "steps.tsv").write_text("scan\t1\t20\t150\n")
    rows, _ = _rows(summ, tmp_path)
    assert [r["status"] for r in rows] == ["ERROR", "ERROR"] and "CUDA error" in rows[0]["note"]
    rows, _ = _rows(summ, tmp_path, only="attention")  # a rerun of another step
    assert [r["status"] for r in rows] == ["NOT SELECTED", "NOT SELECTED"]


def test_no_scan_rows_when_the_step_was_not_planned(tmp_path):
    (tmp_path / "steps.tsv").write_text("attention\t0\t30\t150\n")
    rows, _ = _rows(_summary(), tmp_path)
    assert rows == []
