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
from safetensors.torch import load_file

import retrieval_heads as rh
from reliability_util import ENV, SCAN_ARGS, cli, cli_process, make_run
from retrieval_heads.train.checkpoint import load_train_state
from retrieval_heads.train import read_metrics, train
from test_train import MC, TC, write_preset

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


def kill_and_resume(preset, out, kills, rng, window_s):
    """Start/resume training as a process; SIGKILL it ``kills`` times, each after a random delay
    once it has started training; finally let it finish. Returns the delays used."""
    delays = []
    for attempt in range(kills + 1):
        p = subprocess.Popen(_train_cmd(preset, out, resume=attempt > 0), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=ENV)
        if attempt < kills:
            p.stdout.readline()  # the header line: imports done, training starts now
            delay = rng.uniform(0, window_s)
            delays.append(round(delay, 3))
            time.sleep(delay)
            p.send_signal(signal.SIGKILL)
        out_s, err_s = p.communicate(timeout=600)
        if attempt == kills:
            assert p.returncode == 0, err_s
        check_run_folder(out)
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


def _kill_test(tmp_path, capsys, steps, kills, seed):
    tc = TC.replace(steps=steps, save_every=4, eval_every=4, eval_samples=2)
    preset = write_preset(tmp_path / "p.json", tc=tc)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    t0 = time.perf_counter()
    code, _, err = cli(["train", "--preset", preset, "--out", straight, "--no-progress"], capsys)
    assert code == 0, err
    window = 1.5 * (time.perf_counter() - t0)  # about the training part of a run, imports excluded
    delays = kill_and_resume(preset, killed, kills, random.Random(seed), window)
    assert_same_run(straight, killed)
    return delays


def test_kill9_training_then_resume_equals_uninterrupted(tmp_path, capsys):
    _kill_test(tmp_path, capsys, steps=8, kills=2, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_kill9_training_many_times(tmp_path, capsys, seed):
    _kill_test(tmp_path, capsys, steps=24, kills=6, seed=seed)


@pytest.mark.parametrize("die_in", ["torch.save", "os.rename"])
def test_death_inside_save_never_shows_a_half_checkpoint(tmp_path, monkeypatch, die_in):
    """Die inside ``save_checkpoint`` (a torn ``train_state.pt`` write, or just before the
    rename that publishes the step), with no clean-up, at each of the first checkpoints: the
    step is absent, never half there, and resuming ends bit-identical to an uninterrupted run."""
    import retrieval_heads.train.checkpoint as ck_mod

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

        def dying(*a, **k):
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


@pytest.mark.parametrize("when", ["scoring", pytest.param("random", marks=pytest.mark.slow)])
def test_kill9_scan_then_rescan_equals_clean(scan_base, tmp_path, capsys, when):
    base, clean = scan_base
    rng = random.Random(7)
    for attempt in range(1 if when == "scoring" else 3):
        run = shutil.copytree(base, tmp_path / f"run{attempt}")
        p = subprocess.Popen([sys.executable, "-c", "from retrieval_heads.cli import main; main()", "scan",
                              str(run), *SCAN_ARGS], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cache = run / "scan" / "cache"
        deadline = time.time() + 300
        if when == "scoring":  # after the first checkpoint is scored, before the last
            while time.time() < deadline and len(list(cache.glob("scores-*.json"))) < 1 and p.poll() is None:
                time.sleep(0.01)
        else:
            while time.time() < deadline and not (run / "scan").exists() and p.poll() is None:
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 1.5))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        if when == "scoring":
            assert len(list(cache.glob("scores-*.json"))) < 6, "the scan finished before the kill"
        check_scan_folder(run)
        code, stdout, err = cli(["scan", run, *SCAN_ARGS], capsys)
        assert code == 0, err
        assert_same_tables(run, clean)


def test_two_cli_scans_at_once(scan_base, tmp_path):
    base, clean = scan_base
    run = shutil.copytree(base, tmp_path / "run")
    procs = [subprocess.Popen([sys.executable, "-c", "from retrieval_heads.cli import main; main()", "scan",
                               str(run), *SCAN_ARGS], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e
    counts = sorted(o.splitlines()[0] for o, _ in outs)
    # one scored everything; the other waited for the lock, then found it all cached
    # (or, started later, found it cached straight away)
    assert counts == ["6 checkpoint(s): 0 scored, 6 cached, 0 skipped",
                      "6 checkpoint(s): 6 scored, 0 cached, 0 skipped"] or \
        counts[0].startswith("6 checkpoint(s): 0 scored, 6 cached"), counts
    check_scan_folder(run)
    assert not [p for p in (run / "scan").rglob(".tmp*")]
    assert_same_tables(run, clean)
