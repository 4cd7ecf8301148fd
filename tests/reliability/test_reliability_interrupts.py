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


# ---- Ctrl-C (SIGINT) and stop_at: resumed runs end with the uninterrupted run's files ----------
_QUIET = dict(progress=False, log=lambda *a: None)


def _interrupt_tc():
    # checkpoints 0, 1, 2, 3, 4, 8, 12, 16; evaluations there and every 4
    return TC.replace(steps=16, save_every=4, eval_every=4, eval_samples=2)


@pytest.mark.parametrize("at_step", [4, 3, 16])
def test_ctrl_c_inside_evaluation_then_resume_equals_uninterrupted(tmp_path, monkeypatch, at_step):
    """Ctrl-C inside the evaluation of step ``at_step`` (a checkpoint step; 16: the last one):
    the step is saved without its metrics row; --resume runs that evaluation (the same row)
    before going on, so checkpoints, weights and metrics equal an uninterrupted run's."""
    import retrieval_heads.train.loop as loop

    tc = _interrupt_tc()
    straight, out = tmp_path / "straight", tmp_path / "interrupted"
    train(MC, tc, straight, **_QUIET)
    real_evaluate, evaluating = loop.evaluate, []

    def evaluate(model, cfg, n=None):  # Ctrl-C inside the evaluation of step at_step
        if evaluating[-1] == at_step:
            raise KeyboardInterrupt
        return real_evaluate(model, cfg, n)

    real_maybe = loop._maybe_evaluate

    def maybe_evaluate(run, state):
        evaluating.append(state.step)
        return real_maybe(run, state)

    with monkeypatch.context() as m:
        m.setattr(loop, "evaluate", evaluate)
        m.setattr(loop, "_maybe_evaluate", maybe_evaluate)
        with pytest.raises(KeyboardInterrupt):
            train(MC, tc, out, **_QUIET)
    assert at_step not in [r["step"] for r in read_metrics(out)]  # the row was lost ...
    assert (out / f"step_{at_step:06d}").is_dir()  # ... the checkpoint saved
    res = train(MC, tc, out, resume=True, **_QUIET)
    assert res["final"]["step"] == 16
    assert_same_run(straight, out)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE]


def test_ctrl_c_off_schedule_and_stop_at_leave_no_extra_checkpoints(tmp_path, monkeypatch):
    """Ctrl-C between checkpoints (step 6) saves a hidden resume-only checkpoint that
    ``list_checkpoints`` never shows; ``stop_at=6`` saves a visible one marked resume-only.
    --resume continues from either and removes it once past it: the run ends with exactly the
    uninterrupted run's checkpoints, weights and metrics."""
    import retrieval_heads.train.loop as loop

    tc = _interrupt_tc()
    straight = tmp_path / "straight"
    train(MC, tc, straight, **_QUIET)
    names = [c.name for c in rh.list_checkpoints(straight)]
    assert "step_000006" not in names

    stopped = tmp_path / "stopped"
    train(MC, tc, stopped, stop_at=6, **_QUIET)
    assert (stopped / "step_000006").is_dir()  # visible while the run is stopped there (scans see it)
    train(MC, tc, stopped, resume=True, stop_at=7, **_QUIET)  # passes 6, no checkpoint yet
    assert (stopped / "step_000007").is_dir()
    train(MC, tc, stopped, resume=True, **_QUIET)
    assert_same_run(straight, stopped)

    out = tmp_path / "interrupted"
    real_step = loop._train_step

    def train_step(run, step, commit=None):
        if step == 6:  # Ctrl-C in step 7's forward pass: step 6 is saved
            raise KeyboardInterrupt
        return real_step(run, step, commit)

    with monkeypatch.context() as m:
        m.setattr(loop, "_train_step", train_step)
        with pytest.raises(KeyboardInterrupt):
            train(MC, tc, out, **_QUIET)
    assert [c.name for c in rh.list_checkpoints(out)] == [n for n in names if n <= "step_000004"]
    assert [c.name for c in rh.list_checkpoints(out / loop.RESUME_DIR)] == ["step_000006"]
    train(MC, tc, out, resume=True, stop_at=7, **_QUIET)  # resumes from the hidden step 6
    assert not (out / loop.RESUME_DIR).exists()  # passed: removed
    assert [c.name for c in rh.list_checkpoints(out)][-1] == "step_000007"  # stop_at: visible
    train(MC, tc, out, resume=True, **_QUIET)
    assert_same_run(straight, out)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE]


def test_cli_stop_at_then_resume_gives_the_uninterrupted_checkpoints(tmp_path, capsys):
    """``retrieval-heads train --stop-at 6`` then ``--resume``: the checkpoint set (and weights,
    metrics) of an uninterrupted run; no step_000006."""
    preset = write_preset(tmp_path / "p.json", tc=_interrupt_tc())
    runs = {}
    for name, stops in (("straight", [None]), ("stopped", [6, None])):
        out = runs[name] = tmp_path / name
        for i, stop in enumerate(stops):
            argv = ["train", "--preset", preset, "--out", out, "--no-progress"]
            argv += (["--stop-at", str(stop)] if stop is not None else []) + (["--resume"] if i else [])
            code, _, err = cli(argv, capsys)
            assert code == 0, err
    assert "step_000006" not in [c.name for c in rh.list_checkpoints(runs["stopped"])]
    assert_same_run(runs["straight"], runs["stopped"])


@pytest.mark.slow
@pytest.mark.parametrize("interrupts", [20])
def test_ctrl_c_at_random_moments_then_resume_equals_uninterrupted(tmp_path, capsys, interrupts):
    """SIGINT to a forked ``retrieval-heads train`` process at ``interrupts`` seeded random
    moments (inside steps, evaluations, checkpoint saves; on and off the checkpoint schedule),
    each followed by ``--resume``, then a last ``--resume`` to the end: every attempt exits 130
    (or 0 when it finished first) without a traceback, and the run ends with exactly the
    uninterrupted run's checkpoints, weights and metrics."""
    # checkpoints 0, 1, 2, 3, 4, 6, 8, 16, 24, 32, 40; evaluations every 2 steps besides
    tc = TC.replace(steps=40, save_every=8, eval_every=2, eval_samples=2)
    preset = write_preset(tmp_path / "p.json", tc=tc)
    straight, out = tmp_path / "straight", tmp_path / "interrupted"
    t0 = time.perf_counter()
    assert wait_code(forked_cli(["train", *_train_cmd(preset, straight, False)[3:]], tmp_path / "straight.log")) == 0
    window = (time.perf_counter() - t0) / len(read_metrics(straight))  # ~ time between evaluations
    rng, codes = random.Random(17), []
    for attempt in range(interrupts + 1):
        log = tmp_path / f"attempt{attempt}.log"
        pid = forked_cli(["train", *_train_cmd(preset, out, attempt > 0)[3:]], log)
        if attempt < interrupts:
            while running(pid) and not (log.exists() and log.stat().st_size):  # started (past the set-up)
                time.sleep(0.002)
            target = _progress(out) + rng.randint(0, 1)
            while _progress(out) < target and running(pid):
                time.sleep(0.002)
            time.sleep(rng.uniform(0, window))
            os.kill(pid, signal.SIGINT)
        codes.append(wait_code(pid))
        text = log.read_text()
        assert codes[-1] in ((130, 0) if attempt < interrupts else (0,)), text[-2000:]
        assert "Traceback" not in text, text[-2000:]
        check_run_folder(out)
    assert codes.count(130) >= interrupts // 2, codes  # most signals hit a training process
    assert_same_run(straight, out)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE]
