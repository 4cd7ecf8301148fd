"""Scan reliability (issue 17): worker processes die with a killed scan and never write
without its lock (item 7); a damaged cache entry is ignored, named and rebuilt (item 8); a
max_new_tokens that leaves no prompt room is blamed as such (item 9); a refused scan creates
nothing under RUN/scan (item 4)."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import psutil
import pytest
from reliability_util import ENV, SCAN_ARGS, assert_one_line_error, cli, make_run

TABLES = ("scores.parquet", "niah.parquet", "formation.parquet", "formation_measures.parquet")


def _tables(scan_dir):
    return {t: pd.read_parquet(scan_dir / t) for t in TABLES}


def _assert_same_tables(a, b):
    for t in TABLES:
        pd.testing.assert_frame_equal(a[t], b[t], check_exact=True)


# --- item 8: a damaged cache entry is ignored, named and rebuilt ----------------------------
@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """A run scanned once (the clean tables), copied fresh for each damage."""
    run = make_run(tmp_path_factory.mktemp("clean") / "run")
    import retrieval_heads as rh

    rh.scan(run, context_lens=(160,), depths=(0.5,), n_per_cell=1, progress=False, report=False)
    return run


DAMAGE = {
    "not_utf8": b"\x80\x81\x82 not json",
    "truncated": None,  # the first half of the file
    "json_list": b"[1, 2, 3]",
    "wrong_shape": "wrong_shape",  # valid JSON of the right keys, one matrix row cut short
}


@pytest.mark.parametrize("which", ["scores", "qk"])
@pytest.mark.parametrize("how", list(DAMAGE))
def test_damaged_cache_entry_is_rebuilt(scanned, tmp_path, capsys, which, how):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(scanned, run)
    clean = _tables(run / "scan")
    victim = sorted((run / "scan" / "cache").glob(f"{which}-*.json"))[-1]
    if how == "truncated":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    elif how == "wrong_shape":
        d = json.loads(victim.read_text())
        mat = d["metrics"]["copy"] if which == "scores" else d["rel_l2"]
        mat[-1] = mat[-1][:-1]
        victim.write_text(json.dumps(d))
    else:
        victim.write_bytes(DAMAGE[how])
    code, _, err = cli(["scan", run, *SCAN_ARGS], capsys)
    assert code == 0, err
    warnings = [l for l in err.splitlines() if "damaged cache entry" in l]
    assert len(warnings) == 1 and str(victim) in warnings[0] and warnings[0].startswith("warning: "), err
    _assert_same_tables(_tables(run / "scan"), clean)
    json.loads(victim.read_text())  # rebuilt
    code, _, err = cli(["scan", run, *SCAN_ARGS], capsys)  # and trusted again: no warning
    assert code == 0 and "damaged" not in err, err


def test_damaged_hashes_entry_is_recomputed(scanned, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(scanned, run)
    clean = _tables(run / "scan")
    hf = run / "scan" / "cache" / "hashes.json"
    hashes = json.loads(hf.read_text())
    for k in hashes:
        hashes[k] = 5  # wrong type
    hf.write_text(json.dumps(hashes))
    code, _, err = cli(["scan", run, *SCAN_ARGS], capsys)
    assert code == 0, err
    _assert_same_tables(_tables(run / "scan"), clean)


# --- item 9 and item 4: refused scans write nothing -----------------------------------------
def test_max_new_tokens_without_prompt_room(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    code, _, err = cli(["scan", run, *SCAN_ARGS, "--max-new-tokens", "1000000000"], capsys)
    assert code != 0
    assert_one_line_error(err)
    assert err.strip().splitlines()[-1] == (
        "error: max_new_tokens: 1000000000 decoded tokens leave no room for a prompt in the model's "
        "max_seq_len=256; use --max-new-tokens below 256")
    assert not (run / "scan").exists()


@pytest.mark.parametrize("args,needle", [
    (["--context-lens", "20"], "context_len"),
    (["--reference", "7"], "reference"),
    (["--threshold", "2"], "threshold"),
    (["--max-new-tokens", "256"], "max_new_tokens"),
    (["--context-lens", "250"], "context_lens"),
])
@pytest.mark.parametrize("out", [False, True])
def test_refused_scan_creates_nothing(tmp_path, capsys, args, needle, out):
    run = make_run(tmp_path / "run")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    extra = ["--out", tmp_path / "out"] if out else []
    code, _, err = cli(["scan", run, *SCAN_ARGS, *args, *extra], capsys)
    assert code != 0
    assert_one_line_error(err, needle)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not (run / "scan").exists() and not (tmp_path / "out").exists()


# --- item 7: workers die with a killed scan -------------------------------------------------
def _workers(pid):
    """The pool's worker processes of scan ``pid`` (not its resource tracker)."""
    try:
        kids = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    out = []
    for k in kids:
        try:
            if "resource_tracker" not in " ".join(k.cmdline()):
                out.append(k)
        except psutil.Error:
            pass
    return out


def _alive(p):
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_kill9_scan_takes_its_workers_along(tmp_path):
    run = make_run(tmp_path / "run", steps=tuple(range(0, 24, 2)))  # 12 checkpoints
    cache = run / "scan" / "cache"
    args = ["--context-lens", "160", "--depths", "0.1,0.3,0.5,0.7,0.9", "--n-per-cell", "2",
            "--no-progress", "--no-report", "--workers", "2"]
    proc = subprocess.Popen([sys.executable, "-c", "from retrieval_heads.cli import main; main()", "scan",
                             str(run), *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline:  # kill once the workers are scoring: a first entry written
            assert proc.poll() is None, proc.stderr.read().decode()
            workers = workers if len(workers) >= 2 else _workers(proc.pid)
            if len(workers) >= 2 and cache.exists() and any(cache.glob("scores-*.json")):
                break
            time.sleep(0.02)
        else:
            pytest.fail("the scan's workers never started scoring")
        os.kill(proc.pid, signal.SIGKILL)
        t_kill = time.time()
        proc.wait()
        n_at_kill = len(list(cache.glob("scores-*.json")))
        assert n_at_kill < 12, "the scan finished before the kill: make the checkpoints slower"
        deadline = time.time() + 5
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.05)
        alive = [w.pid for w in workers if _alive(w)]
        assert not alive, f"workers {alive} outlived their killed scan"
        time.sleep(1.0)  # anything still writing would show now
        late = {f.name: f.stat().st_mtime - t_kill for f in cache.glob("*.json")
                if f.name != "hashes.json" and f.stat().st_mtime > t_kill}
        # workers never write: they hand their results to the scan, which writes them under its
        # lock, so nothing can be written once the scan has died
        assert not late, f"cache entries written after the scan died (without its lock): {late}"
    finally:
        for w in workers:
            if _alive(w):
                w.kill()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the next scan completes, and its tables equal a clean scan's
    r = subprocess.run([sys.executable, "-c", "from retrieval_heads.cli import main; main()", "scan", str(run),
                        *args[:-2]], env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("how", ["auto_map", "garbage_weights"])
def test_refused_hf_scan_creates_nothing(tmp_path, capsys, how):
    """Issue 17, item 4: an HF scan created PATH/scan/ before any check, also when it refused
    auto_map or garbage weights. Both are now found while reading, before anything is written."""
    import json

    from retrieval_heads.hf.testing import save_tiny

    ck = save_tiny("qwen3", tmp_path / "hf")
    if how == "auto_map":
        cfg = json.loads((ck / "config.json").read_text())
        cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
        (ck / "config.json").write_text(json.dumps(cfg))
    else:
        for f in ck.glob("*.safetensors"):
            f.write_bytes(b"\x80garbage" * 64)
    code, _, err = cli(["scan", ck, "--context-lens", "80", "--depths", "0.5", "--n-per-cell", "1",
                        "--no-progress", "--no-report"], capsys)
    assert code == 2, err
    assert_one_line_error(err, "auto_map" if how == "auto_map" else "unreadable safetensors file")
    assert not (ck / "scan").exists()
