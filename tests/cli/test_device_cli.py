"""`--device` / `--dtype` of `scan`, `eval`, `ablate` and `patch` (issue 18), on the CPU: auto
runs here on the CPU, `--device cuda` without CUDA is one `error:` line naming the fix with
exit code 2 and nothing written, unknown values are refused the same way."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import retrieval_heads as rh
from retrieval_heads.storage.checkpoint import save_checkpoint
from tests.reliability_util import assert_one_line_error, cli

RUN = Path(__file__).parents[1] / "fixtures" / "micro_run"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
SCAN_TINY = ["--context-lens", "144", "--depths", "0.5", "--n-per-cell", "1", "--seed", "3", "--batch-size", "2",
             "--no-progress", "--no-report"]


@pytest.fixture
def run(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    shutil.copy(RUN / "run.json", d / "run.json")
    shutil.copytree(RUN / "step_001000", d / "step_001000")
    return d


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    cfg = rh.ModelConfig(layout="SSF", d_model=32, n_heads=2, window=16, max_seq_len=320)
    d = tmp_path_factory.mktemp("run")
    save_checkpoint(d, 10, rh.HybridLM(cfg), train_cfg=rh.TrainConfig(context_len=128), tokens_seen=1280)
    return d


@NO_CUDA
@pytest.mark.parametrize("dev", ["cuda", "cuda:0"])
def test_scan_cuda_without_cuda(run, tmp_path, capsys, dev):
    out = tmp_path / "out"
    code, _, err = cli(["scan", run, "--device", dev, "--out", out, *SCAN_TINY], capsys)
    assert code == 2
    assert_one_line_error(err, f"device: '{dev}' requested but CUDA is not available", "use --device cpu")
    assert not out.exists() and not (run / "scan").exists()


@pytest.mark.parametrize("opt,value,needle", [("--device", "tpu", "device: 'tpu'"),
                                              ("--device", "mps", "device: 'mps'"),
                                              ("--dtype", "fp16", "dtype: 'fp16'"),
                                              ("--dtype", "int8", "dtype: 'int8'")])
def test_scan_bad_values(run, capsys, opt, value, needle):
    code, _, err = cli(["scan", run, opt, value, *SCAN_TINY], capsys)
    assert code == 2
    assert_one_line_error(err, needle)
    assert not (run / "scan").exists()


def test_scan_auto_runs_here(run, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = cli(["scan", run, "--device", "auto", *SCAN_TINY], capsys)
    assert code == 0, err
    assert "1 checkpoint(s): 1 scored" in out
    code, out, err = cli(["scan", run, "--device", "cpu", *SCAN_TINY], capsys)  # the device is not keyed
    assert code == 0 and "1 checkpoint(s): 0 scored, 1 cached, 0 skipped (tables unchanged)" in out


@NO_CUDA
@pytest.mark.parametrize("cmd", [["eval", "--context-lens", "128"], ["ablate", "--top-k", "1"],
                                 ["patch", "--n", "1"]])
def test_interventions_cuda_without_cuda(ckpt, tmp_path, capsys, cmd):
    out = tmp_path / "out"
    code, _, err = cli([cmd[0], ckpt, *cmd[1:], "--device", "cuda", "--out", out, "--no-progress"], capsys)
    assert code == 2
    assert_one_line_error(err, "CUDA is not available", "use --device cpu")
    assert not out.exists()


@pytest.mark.parametrize("cmd", ["eval", "ablate", "patch"])
def test_interventions_bad_values(ckpt, capsys, cmd):
    code, _, err = cli([cmd, ckpt, "--device", "tpu"], capsys)
    assert code == 2
    assert_one_line_error(err, "device: 'tpu'")
    code, _, err = cli([cmd, ckpt, "--dtype", "fp16"], capsys)
    assert code == 2
    assert_one_line_error(err, "dtype: 'fp16'")


def test_patch_auto_and_bf16_run_here(ckpt, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["patch", ckpt, "--kind", "resid", "--context-len", "128", "--n", "2", "--no-progress"]
    code, out, err = cli([*args, "--device", "auto"], capsys)
    assert code == 0, err
    assert "logit difference: clean" in out
    code, out, err = cli([*args, "--dtype", "bf16"], capsys)
    assert code == 0, err
    assert " in bfloat16: " in err and "logit difference: clean" in out
