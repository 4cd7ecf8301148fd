"""The attention benchmark script runs end to end (tiny T; its timings are not checked)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_attention.py"


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
