"""Interruptions and concurrency: ``kill -9`` a training process at random moments and resume
it (the weights, every checkpoint and the metrics equal an uninterrupted run's; no half
checkpoint is ever listed; every listed one loads), kill a scan midway and re-run it (its
tables equal a clean scan's), and run two ``retrieval-heads scan`` processes on one run at once."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from reliability_util import ENV, SCAN_ARGS, cli, forked_cli, make_run, running, wait_code
from safetensors.torch import load_file
from helpers import MC, TC, write_preset

import retrieval_heads as rh
from retrieval_heads.train import read_metrics, train
from retrieval_heads.storage.checkpoint import load_train_state
from retrieval_heads.train.loop import LOCK_FILE  # the training lock stays (deleting a lock races)

TIMING = ("tokens_per_s", "time_s")  # the only metrics that may differ between runs


def _train_cmd(preset, out, resume):
    return [sys.executable, "-m", "retrieval_heads.train", "--preset", preset, "--out", str(out),
            "--no-progress", *(["--resume"] if resume else [])]


def check_run_folder(run):
    """What a reader may see at any moment: only complete checkpoints, each loadable."""
    if not run.exists():  # killed before its first write
        return []
    listed = rh.list_checkpoints(run)
    for ck in listed:
        assert not ck.name.startswith("."), ck
        rh.load_checkpoint(ck)  # complete: config.json + matching, finite weights
        state = load_train_state(ck)
        assert state is not None and state["step"] == rh.load_checkpoint(ck).checkpoint["step"]
    return listed


def _progress(out) -> int:
    try:
        return (out / "metrics.jsonl").read_text().count("\n")
    except OSError:
        return 0


def kill_and_resume(preset, out, kills, rng, window_s, how="fork"):
    """Start/resume training as a process (``fork``: forked from this one; ``process``:
    ``python -m retrieval_heads.train``); SIGKILL it ``kills`` times, each at a random moment
    once it has started: after 0-2 more evaluations (each followed by a checkpoint save) plus a
    random delay up to ``window_s``; finally let it finish. Returns the kill points."""
    delays = []
    for attempt in range(kills + 1):
        cmd = _train_cmd(preset, out, resume=attempt > 0)
        if how == "fork":
            log = out.parent / f"{out.name}.attempt{attempt}.log"
            pid = forked_cli(["train", *cmd[3:]], log)
        else:
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
            p.stdout.readline()  # the header line: imports done, training starts now
        if attempt < kills:
            target, delay = _progress(out) + rng.randint(0, 2), rng.uniform(0, window_s)
            delays.append((target, round(delay, 3)))
            while _progress(out) < target and (running(pid) if how == "fork"
                                               else p.poll() is None):
                time.sleep(0.002)
            time.sleep(delay)
            if how == "fork":
                os.kill(pid, signal.SIGKILL)  # a finished child is a zombie until waited for: no error
            else:
                p.send_signal(signal.SIGKILL)
        if how == "fork":
            ok = wait_code(pid) == 0
            err = log.read_text()[-2000:]
        else:
            err = p.communicate(timeout=600)[1]
            ok = p.returncode == 0
        if attempt == kills:
            assert ok, err
        check_run_folder(out)
    # the last run cleaned up
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE]
    return delays


def assert_same_run(a, b):
    ca, cb = rh.list_checkpoints(a), rh.list_checkpoints(b)
    assert [c.name for c in ca] == [c.name for c in cb]
    for x, y in zip(ca, cb):
        wa, wb = load_file(str(x / "model.safetensors")), load_file(str(y / "model.safetensors"))
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (x.name, k)
    ma, mb = read_metrics(a), read_metrics(b)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(ma) == strip(mb)


def _kill_test(tmp_path, capsys, steps, kills, seed, how):
    tc = TC.replace(steps=steps, save_every=4, eval_every=4, eval_samples=2)
    preset = write_preset(tmp_path / "p.json", tc=tc)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    cli(["train", "--preset", preset, "--out", tmp_path / "warm-up", "--stop-at", "0", "--no-progress"], capsys)
    t0 = time.perf_counter()
    kill_and_resume(preset, straight, 0, None, 0)  # uninterrupted
    window = (time.perf_counter() - t0) / len(read_metrics(straight))  # ~ time between evaluations
    delays = kill_and_resume(preset, killed, kills, random.Random(seed), window, how)
    assert_same_run(straight, killed)
    return delays


def test_kill9_training_then_resume_equals_uninterrupted(tmp_path, capsys):
    """Forked training processes, killed 4 times at random moments, then resumed to the end."""
    _kill_test(tmp_path, capsys, steps=12, kills=4, seed=0, how="fork")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_kill9_training_process_many_times(tmp_path, capsys, seed):
    """The same with ``python -m retrieval_heads.train`` processes (another hash seed), 6 kills."""
    _kill_test(tmp_path, capsys, steps=24, kills=6, seed=seed, how="process")


@pytest.mark.parametrize("die_in", ["torch.save", "os.rename"])
def test_death_inside_save_never_shows_a_half_checkpoint(tmp_path, monkeypatch, die_in):
    """Die inside ``save_checkpoint`` (a torn ``train_state.pt`` write, or just before the
    rename that publishes the step), with no clean-up, at each of the first checkpoints: the
    step is absent, never half there, and resuming ends bit-identical to an uninterrupted run."""
    import retrieval_heads.storage.checkpoint as ck_mod

    tc = TC.replace(steps=4, save_every=2, eval_every=2, eval_samples=2)  # checkpoints 0, 1, 2, 4
    quiet = dict(progress=False, log=lambda *a: None)
    straight = tmp_path / "straight"
    train(MC, tc, straight, **quiet)

    class Killed(BaseException):
        pass

    real = {"torch.save": torch.save, "os.rename": os.rename}
    for n_ok in (0, 1, 2):
        out = tmp_path / f"killed{n_ok}"
        calls = {"n": 0}

        def dying(*a, calls=calls, n_ok=n_ok, **k):
            if die_in == "os.rename" and not str(a[1]).rsplit("/", 1)[-1].startswith("step_"):
                return real[die_in](*a, **k)
            calls["n"] += 1
            if calls["n"] > n_ok:
                if die_in == "torch.save":
                    with open(a[1], "wb") as fh:
                        fh.write(b"PK\x03\x04 torn")
                raise Killed()
            return real[die_in](*a, **k)

        with monkeypatch.context() as m:
            m.setattr(ck_mod.torch if die_in == "torch.save" else ck_mod.os, die_in.split(".")[1], dying)
            m.setattr(ck_mod.shutil, "rmtree", lambda *a, **k: None)  # a killed process cleans nothing
            with pytest.raises(Killed):
                train(MC, tc, out, **quiet)
        assert len(check_run_folder(out)) == n_ok
        assert any(p.name.startswith(".tmp_step_") for p in out.iterdir())  # the dead save's leftovers
        train(MC, tc, out, resume=True, **quiet)
        assert_same_run(straight, out)
        assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE]


def test_clean_partial_checkpoints_restores_a_half_swapped_one(tmp_path):
    """A re-save of an existing step renames it aside, then renames the new one in; dying
    between the two leaves no ``step_X``: the clean-up puts the old one back."""
    from retrieval_heads.storage.checkpoint import clean_partial_checkpoints

    run = make_run(tmp_path / "run", steps=(0, 3))
    aside = run / ".old_step_000003_x"
    aside.mkdir()
    os.rename(run / "step_000003", aside / "ckpt")
    (run / ".tmp_step_000003_y").mkdir()
    (run / ".tmp_step_000003_y" / "model.safetensors").write_bytes(b"half")
    assert [c.name for c in rh.list_checkpoints(run)] == ["step_000000"]
    removed = clean_partial_checkpoints(run)
    assert sorted(p.name for p in removed) == [".old_step_000003_x", ".tmp_step_000003_y"]
    assert [c.name for c in check_run_folder_weights_only(run)] == ["step_000000", "step_000003"]
    assert sorted(p.name for p in run.iterdir()) == ["step_000000", "step_000003"]


def check_run_folder_weights_only(run):
    listed = rh.list_checkpoints(run)
    for ck in listed:
        rh.load_checkpoint(ck)
    return listed


# ---- scans ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scan_base(tmp_path_factory):
    d = tmp_path_factory.mktemp("rel_scan")
    base = make_run(d / "base", steps=(0, 1, 2, 3, 4, 5))
    clean = shutil.copytree(base, d / "clean")
    rh.scan(clean, context_lens=(160,), depths=(0.5,), n_per_cell=1, progress=False, report=False)
    return base, clean


def assert_same_tables(a, b):
    for t in ("scores", "niah", "formation", "checkpoints"):
        x, y = pd.read_parquet(a / "scan" / f"{t}.parquet"), pd.read_parquet(b / "scan" / f"{t}.parquet")
        pd.testing.assert_frame_equal(x.drop(columns=["path"], errors="ignore"),
                                      y.drop(columns=["path"], errors="ignore"))
    fa, fb = (json.loads((r / "scan" / "formation.json").read_text()) for r in (a, b))
    assert fa["heads"] == fb["heads"] and fa["run"] == fb["run"]


def check_scan_folder(run):
    """Whatever a killed scan left: every visible table and cache entry is complete."""
    d = run / "scan"
    for f in d.glob("*.parquet"):
        pd.read_parquet(f)
    for f in [*d.glob("*.json"), *(d / "cache").glob("*.json")]:
        json.loads(f.read_text())


def _scan_process(run, how, log):
    """A ``retrieval-heads scan RUN`` process: forked from this one, or a new interpreter."""
    if how == "fork":
        return forked_cli(["scan", run, *SCAN_ARGS], log)
    return subprocess.Popen([sys.executable, "-c", "from retrieval_heads.cli import main; main()", "scan",
                             str(run), *SCAN_ARGS], env=ENV, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _alive(p) -> bool:
    return running(p) if isinstance(p, int) else p.poll() is None


def _kill(p) -> None:
    if isinstance(p, int):
        os.kill(p, signal.SIGKILL)
        os.waitpid(p, 0)
    else:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)


@pytest.mark.parametrize("how,kills", [("fork", 3), pytest.param("process", 4, marks=pytest.mark.slow)])
def test_kill9_scan_then_rescan_equals_clean(scan_base, tmp_path, capsys, how, kills):
    """Kill scans at random moments (while scoring, writing the cache or the tables), check that
    whatever is visible is complete, then re-run: the tables equal a clean scan's."""
    base, clean = scan_base
    rng = random.Random(7)
    for attempt in range(kills):
        run = shutil.copytree(base, tmp_path / f"run{attempt}")
        p = _scan_process(run, how, tmp_path / f"scan{attempt}.log")
        cache = run / "scan" / "cache"
        deadline = time.time() + 300
        target = rng.randint(0, 5)  # checkpoints scored before the kill (+ a random delay)
        while time.time() < deadline and len(list(cache.glob("scores-*.json"))) < target and _alive(p):
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.3))
        _kill(p)
        check_scan_folder(run)
        code, stdout, err = cli(["scan", run, *SCAN_ARGS], capsys)
        assert code == 0, err
        assert_same_tables(run, clean)
        assert not [p for p in (run / "scan").rglob(".tmp*")]  # the re-run removed partial writes


@pytest.mark.parametrize("how", ["fork", pytest.param("process", marks=pytest.mark.slow)])
def test_two_cli_scans_at_once(scan_base, tmp_path, how):
    base, clean = scan_base
    run = shutil.copytree(base, tmp_path / "run")
    logs = [tmp_path / f"scan{i}.log" for i in range(2)]
    procs = [_scan_process(run, how, log) for log in logs]
    codes = [wait_code(p) if isinstance(p, int) else p.wait(timeout=600) for p in procs]
    outs = [log.read_text() for log in logs]
    assert codes == [0, 0], outs
    counts = sorted(next(l for l in o.splitlines() if l.startswith("6 checkpoint(s)")).replace(
        " (tables unchanged)", "") for o in outs)
    # one scored everything; the other waited for the lock, then found it all cached
    assert counts == ["6 checkpoint(s): 0 scored, 6 cached, 0 skipped",
                      "6 checkpoint(s): 6 scored, 0 cached, 0 skipped"], outs
    check_scan_folder(run)
    assert not [p for p in (run / "scan").rglob(".tmp*")]
    assert_same_tables(run, clean)


def test_rescan_repairs_damaged_tables(scan_base, tmp_path, capsys):
    """A table damaged after a scan (truncated, overwritten) is rewritten by the next scan,
    from the cache, instead of being trusted because scan.json still matches."""
    base, clean = scan_base
    run = shutil.copytree(clean, tmp_path / "run")
    (run / "scan" / "scores.parquet").write_bytes(b"garbage")
    (run / "scan" / "formation.json").write_text("{")
    code, stdout, err = cli(["scan", run, *SCAN_ARGS], capsys)
    assert code == 0, err
    assert "6 checkpoint(s): 0 scored, 6 cached, 0 skipped\n" in stdout  # rewritten, not "unchanged"
    assert_same_tables(run, clean)
