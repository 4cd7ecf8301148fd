"""`retrieval-heads train`: overrides, resume/overwrite, and one-line errors that write nothing."""

import json

import pytest
from helpers import TC, write_preset

import retrieval_heads as rh
from retrieval_heads.cli import main
from retrieval_heads.train import read_metrics


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture
def preset(tmp_path):
    return write_preset(tmp_path / "micro.json", tc=TC.replace(steps=2, save_every=2, eval_every=2))


def test_train_cli_end_to_end(tmp_path, preset, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(["train", "--preset", preset, "--out", str(out), "--no-progress",
                             "--steps", "3", "--seed", "4", "--window", "4", "--pos", "F=rope"], capsys)
    assert code == 0, err
    assert "step 3/3" in stdout and "tokens/s" in stdout and "NIAH acc" in stdout
    # without a bar, progress lines (one per 5% of the steps: here every step)
    assert all(f"step {s}/3  loss " in stdout for s in (1, 2, 3)), stdout
    run_cfg = json.loads((out / "run.json").read_text())
    assert run_cfg["train"]["steps"] == 3 and run_cfg["train"]["seed"] == 4
    assert run_cfg["model"]["window"] == 4 and run_cfg["model"]["pos"] == {"F": "rope", "S": "rope"}
    assert [p.name for p in rh.list_checkpoints(out)][-1] == "step_000003"
    assert read_metrics(out)[-1]["step"] == 3
    # same run again: refused without --resume; --resume on a finished run is a no-op
    code, _, err = run(["train", "--preset", preset, "--out", str(out), "--steps", "3", "--seed", "4",
                        "--window", "4", "--pos", "F=rope"], capsys)
    assert code == 2 and "already holds this run; pass --resume" in err
    code, stdout, _ = run(["train", "--preset", preset, "--out", str(out), "--steps", "3", "--seed", "4",
                           "--window", "4", "--pos", "F=rope", "--resume", "--no-progress"], capsys)
    assert code == 0 and "step 3/3" in stdout
    # a different run in --out: refused unless --overwrite
    code, _, err = run(["train", "--preset", preset, "--out", str(out), "--steps", "2"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "holds a different run (differs in: model, seed)" in err and "--overwrite" in err
    assert [p.name for p in rh.list_checkpoints(out)][-1] == "step_000003"  # untouched
    code, _, err = run(["train", "--preset", preset, "--out", str(out), "--steps", "2", "--no-progress",
                        "--overwrite"], capsys)
    assert code == 0, err
    assert [p.name for p in rh.list_checkpoints(out)][-1] == "step_000002"


def test_learning_rate_schedule_options(tmp_path, preset, capsys):
    out = tmp_path / "wsd"
    code, _, err = run(["train", "--preset", preset, "--out", str(out), "--steps", "4", "--no-progress",
                        "--lr", "0.01", "--lr-schedule", "wsd", "--decay-fraction", "0.5", "--min-lr-ratio", "0"],
                       capsys)
    assert code == 0, err
    t = json.loads((out / "run.json").read_text())["train"]
    assert (t["lr_schedule"], t["decay_fraction"], t["min_lr_ratio"]) == ("wsd", 0.5, 0.0)
    # warm-up over 2 steps (the preset's), then the decay over the last 2 of 4: 0.005, 0.01, 0.005, 0
    assert [rh.train.lr_at(rh.TrainConfig(**t), s) for s in range(4)] == pytest.approx([0.005, 0.01, 0.005, 0.0])
    assert read_metrics(out)[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the last update's rate
    code, _, err = run(["train", "--preset", preset, "--out", str(tmp_path / "x"), "--lr-schedule", "step"], capsys)
    assert code == 2 and "'step' is not one of 'cosine', 'wsd'" in err and not (tmp_path / "x").exists()
    code, _, err = run(["train", "--preset", preset, "--out", str(tmp_path / "y"), "--decay-fraction", "2"], capsys)
    assert code == 2 and "decay_fraction: must lie in [0, 1], got 2" in err and err.count("\n") == 1
    assert not (tmp_path / "y").exists()


def test_layout_override(tmp_path, preset, capsys):
    out = tmp_path / "r"
    code, stdout, err = run(["train", "--preset", preset, "--out", str(out), "--steps", "1",
                             "--layout", "SSF", "--no-progress"], capsys)
    assert code == 0, err
    assert rh.load_checkpoint(out / "step_000001").cfg.layout == "SSF"


def test_unknown_preset_lists_valid(tmp_path, capsys):
    code, _, err = run(["train", "--preset", "huge", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "valid presets: " in err
    assert all(n in err for n in ("tiny", "small", "gpu-small", "gpu-base"))
    assert not (tmp_path / "x").exists()


def test_unknown_flag_lists_valid(tmp_path, capsys):
    code, _, err = run(["train", "--preset", "tiny", "--out", str(tmp_path / "x"), "--stpes", "3"], capsys)
    assert code == 2
    assert "no such option: --stpes" in err and "--steps" in err and "--context-len" in err
    assert not (tmp_path / "x").exists()


def bad_haystack(tmp_path, name, content):
    f = tmp_path / name
    f.write_bytes(content)
    return ["--haystack", str(f)]


@pytest.mark.parametrize("case", ["short_context", "empty_haystack", "binary_haystack",
                                  "window_over_context", "bad_layout", "bad_pos", "no_cuda_device",
                                  "missing_haystack"])
def test_bad_input_one_line_error_nothing_written(tmp_path, case, capsys):
    args = {
        "short_context": ["--context-len", "120"],
        "empty_haystack": bad_haystack(tmp_path, "empty.txt", b""),
        "binary_haystack": bad_haystack(tmp_path, "image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00"),
        "window_over_context": ["--window", "300", "--context-len", "256"],
        "bad_layout": ["--layout", "SSXF"],
        "bad_pos": ["--pos", "F=alibi"],
        "no_cuda_device": ["--device", "cuda:0" if not _cuda() else "tpu"],
        "missing_haystack": ["--haystack", str(tmp_path / "nope.txt")],
    }[case]
    out = tmp_path / "out"
    code, stdout, err = run(["train", "--preset", "tiny", "--out", str(out), *args], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists()
    expect = {"short_context": "too short", "empty_haystack": "is empty",
              "binary_haystack": "not a text file", "window_over_context": "larger than the context",
              "bad_layout": "unknown letter", "bad_pos": "use one of", "no_cuda_device": "device",
              "missing_haystack": "neither a built-in haystack"}[case]
    assert expect in err


def test_out_not_a_run_is_never_deleted(tmp_path, preset, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = run(["train", "--preset", preset, "--out", str(out), "--overwrite"], capsys)
    assert code == 2 and "holds no retrieval-heads run" in err
    assert (out / "notes.txt").read_text() == "keep me"
    code, _, err = run(["train", "--preset", preset, "--out", str(out / "notes.txt")], capsys)
    assert code == 2
    code, _, err = run(["train", "--preset", preset, "--out", str(tmp_path / "y"), "--resume",
                        "--overwrite"], capsys)
    assert code == 2 and "contradict" in err and not (tmp_path / "y").exists()


def _cuda():
    import torch
    return torch.cuda.is_available()
