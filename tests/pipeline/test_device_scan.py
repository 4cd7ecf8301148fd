"""The device and dtype of a native scan (issue 18), on the CPU: which device each choice picks,
the errors (CUDA asked for and absent, unknown values) before anything is written, and the
cache key: the settings of a default scan key exactly as before the option existed (pinned
below, computed by the code before the change), a float32 spelling keys as the default, bf16
has its own entries, and the device is not part of the key (docs/GPU.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

import retrieval_heads as rh
from retrieval_heads.pipeline.scanner import ScanSettings, scan_device, scan_dtype

RUN = Path(__file__).parents[1] / "fixtures" / "micro_run"
TINY = dict(context_lens=(144,), depths=(0.5,), n_per_cell=2, seed=3, recurrent=True, only_correct=False,
            batch_size=4, progress=False, report=False, threshold=0.01)
# ScanSettings().key() and the golden scan's key, by the code before `dtype` existed (commit 0c64c78)
KEY_DEFAULT = "327c7f76aad00dd0e42982731a565706b6de59f941bf305423a8246f09720dec"
KEY_GOLDEN = "f522511990700eb6980d6ec9eb3c45ea98c0ca465598a4ab0e67ffbb85dcbada"
GOLDEN = dict(context_lens=(144, 180), depths=(0.2, 0.5, 0.8), n_per_cell=2, seed=3, recurrent=True,
              only_correct=False)
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")


@pytest.fixture
def run(tmp_path):
    """Two checkpoints of the micro run (first and last)."""
    d = tmp_path / "run"
    d.mkdir()
    shutil.copy(RUN / "run.json", d / "run.json")
    for s in ("step_000000", "step_001000"):
        shutil.copytree(RUN / s, d / s)
    return d


# ---- selection ---------------------------------------------------------------------------
def test_default_and_cpu_are_cpu():
    assert scan_device(None) == torch.device("cpu")
    assert scan_device("cpu") == torch.device("cpu")
    assert scan_device(torch.device("cpu")) == torch.device("cpu")
    assert scan_device(" CPU ") == torch.device("cpu")


def test_auto_without_cuda_is_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert scan_device("auto") == torch.device("cpu")


def test_auto_and_cuda_with_cuda_pick_the_local_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert scan_device("auto") == torch.device("cuda:0")
    assert scan_device("cuda") == torch.device("cuda:0")
    assert scan_device("cuda", local_rank=3) == torch.device("cuda:3")  # one GPU per torchrun rank
    assert scan_device("auto", local_rank=1) == torch.device("cuda:1")
    assert scan_device("cuda:2", local_rank=1) == torch.device("cuda:2")  # an explicit index wins


@NO_CUDA
@pytest.mark.parametrize("dev", ["cuda", "cuda:0", "CUDA"])
def test_cuda_without_cuda_names_the_fix(dev):
    with pytest.raises(ValueError, match=r"CUDA is not available; use --device cpu"):
        scan_device(dev)


@pytest.mark.parametrize("dev", ["tpu", "mps", "", "npu", 3])
def test_bad_devices_are_refused(dev):
    with pytest.raises(ValueError, match=r"^device: "):
        scan_device(dev)


@pytest.mark.parametrize("given,want", [(None, None), ("fp32", None), ("float32", None), ("auto", None),
                                        (torch.float32, None), ("bf16", "bfloat16"), ("bfloat16", "bfloat16"),
                                        (torch.bfloat16, "bfloat16")])
def test_dtypes(given, want):
    assert scan_dtype(given) == want


@pytest.mark.parametrize("bad", ["fp16", "float16", "int8", "", "half"])
def test_bad_dtypes_are_refused(bad):
    with pytest.raises(ValueError, match=r"dtype: .* use float32 \(fp32, the default\) or bfloat16"):
        scan_dtype(bad)
    with pytest.raises(ValueError, match=r"dtype: "):
        ScanSettings(dtype=bad)


# ---- the cache key -----------------------------------------------------------------------
def test_default_settings_serialise_and_key_as_before():
    assert "dtype" not in ScanSettings().to_dict()
    assert ScanSettings().key() == KEY_DEFAULT
    assert ScanSettings(**GOLDEN).key() == KEY_GOLDEN
    for spelled in ("fp32", "float32", "auto", torch.float32):  # a float32 spelling is the default
        s = ScanSettings(**GOLDEN, dtype=spelled)
        assert s.dtype is None and s.key() == KEY_GOLDEN and "dtype" not in s.to_dict()


def test_bf16_is_part_of_the_key():
    s = ScanSettings(**GOLDEN, dtype="bf16")
    assert s.to_dict()["dtype"] == "bfloat16" and s.key() != KEY_GOLDEN
    assert s.key() == ScanSettings(**GOLDEN, dtype="bfloat16").key()
    assert s.torch_dtype() is torch.bfloat16 and ScanSettings().torch_dtype() is torch.float32


# ---- scans -------------------------------------------------------------------------------
@NO_CUDA
def test_scan_on_cuda_without_cuda_writes_nothing(run, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"CUDA is not available; use --device cpu"):
        rh.scan(run, out=out, device="cuda", **TINY)
    assert not out.exists() and not (run / "scan").exists()
    with pytest.raises(ValueError, match=r"^device: 'tpu'"):
        rh.scan(run, device="tpu", **TINY)
    with pytest.raises(ValueError, match=r"^dtype: 'fp16'"):
        rh.scan(run, dtype="fp16", **TINY)
    assert not (run / "scan").exists()


def test_device_is_not_in_the_key_but_bf16_is(run, monkeypatch):
    """cpu, then auto (here the CPU): the second finds every entry cached and leaves the tables
    unchanged; bf16 scores again into its own entries, recorded in the settings, and its scores
    agree with float32 within the bf16 tolerance of docs/GPU.md (measured here on the CPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    a = rh.scan(run, device="cpu", **TINY)
    assert a.attrs["scan"]["n_scored"] == 2
    cache = run / "scan" / "cache"
    entries = sorted(cache.glob("scores-*.json"))
    assert len(entries) == 2
    assert all("device" not in json.loads(f.read_text()) for f in entries)  # CPU entries as before
    b = rh.scan(run, device="auto", **TINY)
    assert b.attrs["scan"]["n_scored"] == 0 and b.attrs["scan"]["unchanged"]
    c = rh.scan(run, dtype="bf16", **TINY)
    assert c.attrs["scan"]["n_scored"] == 2 and not c.attrs["scan"]["unchanged"]
    assert len(list(cache.glob("scores-*.json"))) == 4 and len(list(cache.glob("qk-*.json"))) == 2
    state = json.loads((run / "scan" / "scan.json").read_text())
    assert state["settings"]["dtype"] == "bfloat16"
    assert json.loads((run / "scan" / "formation.json").read_text())["settings"]["dtype"] == "bfloat16"
    key = ["step", "layer", "head", "metric"]
    m = a.merge(c, on=key, suffixes=("_fp32", "_bf16"))
    assert len(m) == len(a) == len(c)
    qk = m[m.metric.isin(["qk_distance", "qk_l2"])]  # weights only, always on the CPU in float32
    assert (qk.value_fp32 == qk.value_bf16).all()
    mass = m[m.metric == "mass"].dropna()
    assert len(mass) and (mass.value_fp32 - mass.value_bf16).abs().max() < 0.02
    back = rh.scan(run, **TINY)  # float32 again: its entries are still there
    assert back.attrs["scan"]["n_scored"] == 0
    pd.testing.assert_frame_equal(back.reset_index(drop=True), a.reset_index(drop=True))


def test_scan_settings_without_dtype_read_from_an_older_scan_json():
    """A scan.json written before the option (no "dtype" key) rebuilds the same settings."""
    old = json.loads(json.dumps(ScanSettings(**GOLDEN).to_dict()))  # as stored: lists, no dtype
    assert ScanSettings(**old).key() == KEY_GOLDEN
