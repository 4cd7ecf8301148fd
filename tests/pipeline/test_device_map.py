"""``device_map`` of the HF loader (issue 18: HF checkpoints larger than one GPU load with
``device_map="auto"``, spread by accelerate): forwarded to ``from_pretrained``, the model then
left where accelerate put it (not moved), and refused together with ``device``. On this CPU
machine "auto" places every layer on the CPU; the memory figures need a GPU (docs/GPU.md)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from retrieval_heads.hf import loader
from retrieval_heads.hf.testing import save_tiny


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny("olmo3", tmp_path_factory.mktemp("hf") / "tiny")


def test_device_map_is_forwarded_and_the_model_not_moved(ckpt, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen, real = [], AutoModelForCausalLM.from_pretrained

    def spy(*a, **kw):
        seen.append(kw)
        return real(*a, **{k: v for k, v in kw.items() if k != "device_map"})

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    moved = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **kw: moved.append(a) or self)
    model = loader.load_hf_model(ckpt, device_map="auto")
    assert seen[-1]["device_map"] == "auto" and not moved and not model.training
    loader.load_hf_model(ckpt, device="cpu")
    assert "device_map" not in seen[-1] and moved  # without a map: as before, moved to the device


def test_device_map_with_device_is_refused(ckpt):
    with pytest.raises(ValueError, match=r"device_map: 'auto' places the model itself; give device or device_map"):
        loader.load_hf(ckpt, device="cpu", device_map="auto")


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is None, reason="device_map needs accelerate")
def test_device_map_auto_loads_on_this_machine(ckpt):
    """With accelerate installed, "auto" really loads (all on the CPU here) and detects as usual."""
    m = loader.load_hf(ckpt, device_map="auto")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert m.device.type == want
    ref = loader.load_hf(ckpt, device="cpu")
    x = torch.randint(3, 300, (1, 24))
    with torch.no_grad():
        a, b = m.hf(x.to(m.device)).logits.float().cpu(), ref.hf(x).logits.float()
    assert torch.allclose(a, b, atol=1e-5)
