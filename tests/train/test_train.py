"""Training loop: schedules, exact resume, gradient accumulation, torchrun DDP, presets."""

import json
import math
import os
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file

import retrieval_heads as rh
from helpers import MC, TC, write_preset  # noqa: F401 - also used by other test files
from retrieval_heads.train import checkpoint_steps, list_presets, load_preset, lr_at, read_metrics, train



def weights(path):
    return load_file(str(path / "model.safetensors"))


def assert_same_weights(a, b, exact=True):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        if exact:
            assert torch.equal(wa[k], wb[k]), k
        else:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_lr_schedule():
    c = rh.TrainConfig(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(c, 0) == pytest.approx(1e-4) and lr_at(c, 9) == pytest.approx(1e-3)
    assert lr_at(c, 10) == pytest.approx(1e-3)
    assert lr_at(c, 55) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert lr_at(c, 100) == pytest.approx(1e-4)
    lrs = [lr_at(c, s) for s in range(10, 100)]
    assert lrs == sorted(lrs, reverse=True)


def test_wsd_schedule_holds_then_decays_linearly():
    c = rh.TrainConfig(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1, lr_schedule="wsd", decay_fraction=0.2)
    assert lr_at(c, 0) == pytest.approx(1e-4) and lr_at(c, 9) == pytest.approx(1e-3)  # the same warmup
    const = c.replace(min_lr_ratio=1.0)
    # stable phase: exactly the constant-LR run's rates up to step 80 = 100 * (1 - 0.2)
    assert [lr_at(c, s) for s in range(80)] == [lr_at(const, s) for s in range(80)]
    assert lr_at(c, 79) == 1e-3 and lr_at(c, 80) == pytest.approx(1e-3 * (1 - 0.9 / 20))
    assert lr_at(c, 89) == pytest.approx(1e-3 * (1 - 0.9 * 10 / 20))  # linear, halfway
    assert lr_at(c, 99) == pytest.approx(1e-4) and lr_at(c, 150) == pytest.approx(1e-4)  # the last update: min_lr
    decay = [lr_at(c, s) for s in range(79, 100)]
    assert decay == sorted(decay, reverse=True) and len(set(decay)) == len(decay)
    assert all(lr_at(const, s) == 1e-3 for s in range(10, 100))  # min_lr_ratio 1: constant
    with pytest.raises(ValueError, match="lr_schedule: 'step'; use one of cosine, wsd"):
        rh.TrainConfig(lr_schedule="step")
    with pytest.raises(ValueError, match=r"decay_fraction: must lie in \[0, 1\]"):
        rh.TrainConfig(lr_schedule="wsd", decay_fraction=1.5)
    # old configs (no lr_schedule field) load as cosine
    assert rh.TrainConfig.from_dict({"steps": 5}).lr_schedule == "cosine"


def test_checkpoint_schedule_resolves_early_training():
    c = rh.TrainConfig(steps=1000, save_every=100)
    s = checkpoint_steps(c)
    assert s[:12] == [0, 1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45]
    assert {100, 200, 900, 1000} <= set(s) and s == sorted(set(s)) and s[-1] == 1000
    assert checkpoint_steps(c.replace(save_log_spaced=False)) == list(range(0, 1001, 100))
    assert checkpoint_steps(rh.TrainConfig(steps=5, save_every=100)) == [0, 1, 2, 3, 4, 5]


def test_train_writes_run_and_resume_is_bit_exact(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    r = train(MC, TC, straight, progress=False)
    assert r["step"] == 6 and r["tokens_seen"] == 6 * 4 * 140
    assert [p.name for p in rh.list_checkpoints(straight)] == [
        "step_000000", "step_000001", "step_000002", "step_000003", "step_000006"]
    rows = read_metrics(straight)
    assert [row["step"] for row in rows] == [0, 1, 2, 3, 6]
    assert {"step", "tokens_seen", "lr", "train_loss", "lm_loss", "niah_acc", "niah_token_acc",
            "tokens_per_s"} <= rows[-1].keys()
    assert 0.0 <= rows[-1]["niah_acc"] <= 1.0 and rows[-1]["train_loss"] < rows[1]["train_loss"]
    run = json.loads((straight / "run.json").read_text())
    assert rh.ModelConfig.from_dict(run["model"]) == MC and rh.TrainConfig.from_dict(run["train"]) == TC
    m = rh.load_checkpoint(straight / "step_000006")
    assert not m.training and m.checkpoint["step"] == 6

    # N steps, stop, resume N more: identical weights and optimizer state
    train(MC, TC, split, stop_at=4, progress=False)
    assert rh.list_checkpoints(split)[-1].name == "step_000004"
    with pytest.raises(ValueError, match="pass --resume"):
        train(MC, TC, split, progress=False)
    train(MC, TC, split, resume=True, progress=False)
    for step in (3, 6):
        assert_same_weights(straight / f"step_{step:06d}", split / f"step_{step:06d}")
    sa = rh.train.load_train_state(straight / "step_000006")["optimizer"]["state"]
    sb = rh.train.load_train_state(split / "step_000006")["optimizer"]["state"]
    assert all(torch.equal(sa[k][n], sb[k][n]) for k in sa for n in sa[k])
    ra, rb = read_metrics(straight), read_metrics(split)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("time_s", "tokens_per_s")} for r in rows]
    assert strip(ra) == strip(rb)  # metrics after the resume point are not duplicated
    # resuming a finished run does nothing
    assert train(MC, TC, split, resume=True, progress=False)["step"] == 6


def test_grad_accum_follows_the_same_trajectory(tmp_path):
    c = TC.replace(steps=3, save_every=3, eval_every=3)
    train(MC, c, tmp_path / "a", progress=False)
    train(MC, c.replace(grad_accum=2), tmp_path / "b", progress=False)
    train(MC, c.replace(grad_accum=4), tmp_path / "c", progress=False)
    assert_same_weights(tmp_path / "a/step_000003", tmp_path / "b/step_000003", exact=False)
    assert_same_weights(tmp_path / "a/step_000003", tmp_path / "c/step_000003", exact=False)
    with pytest.raises(ValueError, match="not divisible by world_size × grad_accum"):
        train(MC, c.replace(grad_accum=3), tmp_path / "d", progress=False)
    assert not (tmp_path / "d").exists()




def test_torchrun_two_processes_match_one(tmp_path):
    """Global batch semantics: 2 ranks × 2 rows == 1 process × grad_accum 2 × 2 rows."""
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not on PATH")
    c = TC.replace(steps=2, save_every=2, eval_every=2)
    preset = write_preset(tmp_path / "p.json", tc=c)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "retrieval_heads.train",
           "--preset", preset, "--out", str(tmp_path / "ddp"), "--no-progress"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    # rank 0 alone reports: one progress line per step and one final line
    assert p.stdout.count("step 2/2  loss") == 1 and p.stdout.count("step 2/2: ") == 1, p.stdout
    meta = rh.train.load_train_state(tmp_path / "ddp/step_000002")
    assert meta["world_size"] == 2
    # same rows per forward, grads summed in the same order: bit-identical (1 thread, as torchrun)
    torch.set_num_threads(1)
    train(MC, c.replace(grad_accum=2), tmp_path / "one", progress=False)
    assert_same_weights(tmp_path / "ddp/step_000002", tmp_path / "one/step_000002", exact=True)
    train(MC, c, tmp_path / "one_big", progress=False)  # one micro-batch: equal up to rounding
    assert_same_weights(tmp_path / "ddp/step_000002", tmp_path / "one_big/step_000002", exact=False)
    assert [r["step"] for r in read_metrics(tmp_path / "ddp")] == [0, 1, 2]


def test_presets_load_and_fit():
    names = list_presets()
    assert {"tiny", "small", "gpu-small", "gpu-base"} <= names.keys()
    for name in names:
        mc, tc = load_preset(name)
        rh.train.check_configs(mc, tc)
    mc, tc = load_preset("tiny")
    assert mc.layout == "SSSF" and mc.window <= 32 and tc.context_len == 256
    with pytest.raises(ValueError, match="valid presets: ") as e:
        load_preset("huge")
    assert all(n in str(e.value) for n in names)


@pytest.mark.slow
def test_tiny_preset_learns_niah(tmp_path):
    """The tiny preset reaches >= 90% NIAH accuracy at its training length (a few minutes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # conftest pins 1 thread; the preset assumes 2 cores
    mc, tc = load_preset("tiny")
    try:
        r = train(mc, tc.replace(device="cpu"), tmp_path / "tiny", progress=False)
    finally:
        torch.set_num_threads(threads)
    rows = read_metrics(tmp_path / "tiny")
    assert r["final"]["niah_acc"] >= 0.9, rows[-1]
    assert rows[1]["niah_acc"] == 0.0  # retrieval forms during training, not at the start
    final = rh.load_checkpoint(rh.list_checkpoints(tmp_path / "tiny")[-1])
    assert rh.train.evaluate(final, tc, n=64)["niah_acc"] >= 0.9


def test_train_state_file_and_trainer_state(tmp_path):
    """train_state.pt holds exactly what an exact resume needs; ``running`` are the loss sums
    since the last evaluation (a checkpoint between evaluations carries them over)."""
    from retrieval_heads.train.loop import TrainerState, read_metrics

    tc = TC.replace(steps=4, eval_every=2, save_every=2, save_log_spaced=False)
    train(MC, tc, tmp_path / "r", progress=False, stop_at=3, log=lambda *a: None)
    st = rh.train.load_train_state(tmp_path / "r" / "step_000003")
    assert list(st) == ["optimizer", "step", "tokens_seen", "rng", "world_size", "running"]
    assert (st["step"], st["tokens_seen"], st["world_size"]) == (3, 3 * 4 * 140, 1)
    loss_sum, loss_n, niah_sum, niah_n = st["running"]  # step 3 only: step 2 was evaluated
    assert loss_n == 1 and loss_sum > 0 and niah_n == 2 and niah_sum > 0
    rows = read_metrics(tmp_path / "r")
    assert [r["step"] for r in rows] == [0, 2]
    s = TrainerState()
    s.running = st["running"]
    s.record_step(1.5, 2.0, 2.0, tokens=10, dt=0.5)
    assert s.running == [loss_sum + 1.5, 2, niah_sum + 2.0, niah_n + 2.0]
    assert (s.step, s.tokens_seen, s.train_time, s.tokens_per_s(10)) == (1, 10, 0.5, 20.0)
