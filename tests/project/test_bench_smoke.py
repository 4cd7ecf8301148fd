"""The attention benchmark script runs end to end (tiny T; its timings are not checked)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_attention.py"


def test_bench_attention_quick_writes_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_attention", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "res" / "attention_cpu.json"
    bench.main(["--quick", "--T", "256", "--repeats", "1", "--warmup", "0", "--no-gpu", "--out", str(out)])
    res = json.loads(out.read_text())
    assert set(res["cpu"]["timings"]) == {"swa-blocked", "full-sdpa", "swa-eager"}
    assert res["cpu"]["settings"]["T"] == 256 and res["cpu"]["full_over_swa"] > 0
    assert res["gpu"] is None
    assert "full / SWA" in capsys.readouterr().out


# ---- benchmarks/gpu_check.sh: the device check of issue 8, smoke-tested on CPU ------------
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "benchmarks" / "gpu_check.sh"


def _run_check(tmp_path, *args, **env):
    e = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", str(CHECK), *args], cwd=ROOT, env=e, capture_output=True, text=True,
                          timeout=170)


def test_gpu_check_dry_run_lists_the_steps(tmp_path):
    r = _run_check(tmp_path, "--dry-run")
    assert r.returncode == 0, r.stderr
    for step in ("preflight", "attention", "train", "mfu", "pytest_kernels", "pytest_model", "mfu_compile",
                 "recurrent"):
        assert f"[{step}," in r.stdout
    assert "--kernel-T 32768" in r.stdout and "--context-len 8192" in r.stdout
    assert "--preset gpu-base" in r.stdout and "--peak-tflops auto" in r.stdout
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_gpu_check_without_gpu_stops_with_one_line(tmp_path):
    r = _run_check(tmp_path, RH_GPU_CHECK_ALLOW_CPU="0")
    assert r.returncode == 2
    assert r.stdout.strip().count("\n") == 0 and "no CUDA GPU" in r.stdout
    assert list(tmp_path.iterdir()) == []


def test_gpu_check_cpu_smoke_writes_summary(tmp_path):
    """Every step at toy sizes on CPU (about 30 s): the summary JSON has one row per target
    plus the information row, each step ran, and no step failed to produce its result."""
    r = _run_check(tmp_path, RH_GPU_CHECK_ALLOW_CPU="1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    res = json.loads((tmp_path / "gpu_check_cpu.json").read_text())
    assert res["smoke"] and res["ok"] and res["card"] == "cpu"
    names = [row["name"] for row in res["rows"]]
    assert names[:2] == ["GPU tests: test_gpu_kernels.py", "GPU tests: test_gpu.py + test_detect_gpu.py"]
    assert names[2].startswith("SWA w=16 vs full SDPA, T=256")
    assert names[3].startswith("train tokens/s SSSF / FFFF")
    assert names[4].startswith("MFU, gpu-base preset")
    assert names[5].startswith("recurrent kernels")
    assert all(row["status"] in ("PASS", "FAIL") for row in res["rows"][:5])
    assert res["rows"][0]["status"] == res["rows"][1]["status"] == "PASS"  # all skipped without CUDA
    assert res["raw"]["pytest_kernels"]["skipped"] > 0 and res["raw"]["pytest_model"]["skipped"] > 0
    assert res["rows"][5]["status"] == "INFO"
    assert {k: v["rc"] for k, v in res["steps"].items()} == dict.fromkeys(
        ["preflight", "attention", "train", "mfu", "pytest_kernels", "pytest_model", "recurrent"], 0)
    assert res["raw"]["mfu"]["eager"]["rows"][0]["layout"] == "SSSFSSSFSSSF"  # the preset's layout
    assert res["env"]["retrieval_heads"] != "" and not str(res["env"]["retrieval_heads"]).startswith("missing")
    assert "overall: OK" in r.stdout and "MFU, gpu-base preset" in r.stdout
    assert (tmp_path / "gpu_check_cpu.log").stat().st_size > 0


def test_gpu_check_summary_marks_missing_and_failed_steps(tmp_path):
    """The summary on GPU-mode inputs: a timed-out step is ERROR, a low ratio FAIL, and the
    exit status is 1; all targets met gives 0."""
    spec = importlib.util.spec_from_file_location("gpu_check_summary", ROOT / "benchmarks" / "gpu_check_summary.py")
    summ = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summ)
    (tmp_path / "steps.tsv").write_text("attention\t0\t30\t150\ntrain\t124\t150\t150\nmfu\t0\t40\t120\n"
                                        "pytest_kernels\t0\t90\t150\npytest_model\t124\t150\t150\n"
                                        "mfu_compile\tskipped\t0\t150\n")
    att = {"kernel": {"settings": {"T": 32768, "window": 128, "dtype": "bfloat16"}, "swa_path": "swa-flex",
                      "timings": {"swa-flex": {"median_ms": 3.0}, "full-sdpa": {"median_ms": 35.0}},
                      "full_over_swa": 35.0 / 3.0}}
    (tmp_path / "attention.json").write_text(json.dumps(att))
    mfu = {"meta": {"args": {"peak_tflops": 989.0}},
           "rows": [{"layout": "SSSFSSSFSSSF", "mfu": 0.2, "tokens_per_s": 1e6, "model_tflops": 198.0}]}
    (tmp_path / "mfu.json").write_text(json.dumps(mfu))
    (tmp_path / "pytest_kernels.xml").write_text('<testsuites><testsuite tests="10" failures="0" errors="0" '
                                                 'skipped="2"></testsuite></testsuites>')
    assert summ.main(["--work", str(tmp_path), "--card", "h100", "--out", str(tmp_path / "s.json")]) == 1
    rows = {r["name"].split(",")[0]: r for r in json.loads((tmp_path / "s.json").read_text())["rows"]}
    assert rows["GPU tests: test_gpu_kernels.py"]["status"] == "PASS"
    assert rows["GPU tests: test_gpu.py + test_detect_gpu.py"]["status"] == "ERROR"  # timed out: no xml
    assert rows["SWA w=128 vs full SDPA"]["status"] == "PASS"
    assert rows["train tokens/s SSSF / FFFF"]["status"] == "ERROR"
    assert "timed out" in rows["train tokens/s SSSF / FFFF"]["note"]
    assert rows["MFU"]["status"] == "FAIL" and "compile: skipped" in rows["MFU"]["note"]
    # now meet every target
    (tmp_path / "steps.tsv").write_text("attention\t0\t30\t150\ntrain\t0\t60\t150\nmfu\t0\t40\t120\n"
                                        "pytest_kernels\t0\t90\t150\npytest_model\t0\t90\t150\n"
                                        "mfu_compile\t0\t80\t150\n")
    (tmp_path / "pytest_model.xml").write_text('<testsuite tests="4" failures="0" errors="0" skipped="0"/>')
    tr = {"meta": {"args": {"context_len": 8192, "batch_size": 2}},
          "rows": [{"layout": "SSSF", "tokens_per_s": 2.5e5, "d_model": 512},
                   {"layout": "FFFF", "tokens_per_s": 1e5, "d_model": 512}]}
    (tmp_path / "train.json").write_text(json.dumps(tr))
    (tmp_path / "mfu_compile.json").write_text(json.dumps({**mfu, "rows": [{**mfu["rows"][0], "mfu": 0.3}]}))
    assert summ.main(["--work", str(tmp_path), "--card", "h100"]) == 0


def test_gpu_check_only_rejects_unknown_steps_and_reports_unselected_rows(tmp_path):
    r = _run_check(tmp_path, "--only=train,bogus", RH_GPU_CHECK_ALLOW_CPU="1")
    assert r.returncode == 2 and "unknown step 'bogus'" in r.stderr and r.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
    spec = importlib.util.spec_from_file_location("gpu_check_summary", ROOT / "benchmarks" / "gpu_check_summary.py")
    summ = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summ)
    (tmp_path / "steps.tsv").write_text("attention\t0\t30\t150\n")
    att = {"kernel": {"settings": {"T": 32768, "window": 128, "dtype": "bfloat16"}, "swa_path": "swa-flex",
                      "timings": {"swa-flex": {"median_ms": 3.0}, "full-sdpa": {"median_ms": 35.0}},
                      "full_over_swa": 35.0 / 3.0}}
    (tmp_path / "attention.json").write_text(json.dumps(att))
    out = tmp_path / "s.json"
    # a rerun of the attention step alone: the other rows are NOT SELECTED and do not fail it
    assert summ.main(["--work", str(tmp_path), "--card", "h100", "--out", str(out), "--only", "attention"]) == 0
    rows = json.loads(out.read_text())["rows"]
    status = {r["name"].split(",")[0]: r["status"] for r in rows}
    assert status["SWA w=128 vs full SDPA"] == "PASS"
    assert [s for s in status.values() if s != "PASS"] == ["NOT SELECTED"] * 5
    # without --only the same inputs fail: the other steps never ran
    assert summ.main(["--work", str(tmp_path), "--card", "h100", "--out", str(out)]) == 1
