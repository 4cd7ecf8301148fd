"""Models out: ``HybridLM.save_pretrained`` / ``from_pretrained`` in Hugging Face's folder layout,
``transformers.AutoModelForCausalLM.from_pretrained`` after ``import retrieval_heads`` (identical
logits), ``rh.load_checkpoint`` on such a folder and on another HF checkpoint (a pointer to
``rh.hf.load_hf``)."""

import json
import subprocess
import sys

import pytest
import torch

import retrieval_heads as rh
from retrieval_heads.storage import CheckpointError


@pytest.mark.parametrize("layout,tie", [("SF", True), ("SMF", False)])
def test_auto_model_gives_identical_logits(tmp_path, layout, tie):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = rh.ModelConfig(layout=layout, d_model=32, n_heads=2, window=4, max_seq_len=64, tie_embeddings=tie)
    model = rh.HybridLM(cfg).eval()
    model.save_pretrained(tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    assert d["model_type"] == "retrieval_heads_hybrid" and d["architectures"] == ["HybridLMForCausalLM"]
    assert (tmp_path / "model.safetensors").exists()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "retrieval_heads_hybrid"
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "HybridLMForCausalLM"
    x = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        want = model(x)
        assert torch.equal(hf(x).logits, want)
        assert torch.equal(rh.HybridLM.from_pretrained(tmp_path)(x), want)
        assert torch.equal(rh.load_checkpoint(tmp_path)(x), want)
    assert (hf.model.unembed.weight is hf.model.embed.weight) == tie


def test_import_stays_light_and_registration_is_lazy(tmp_path):
    """``import retrieval_heads`` imports neither torch nor transformers; the Auto classes know the
    model once transformers is imported, whichever comes first."""
    rh.HybridLM(rh.ModelConfig(layout="SF", d_model=32, n_heads=2, window=4, max_seq_len=64)).save_pretrained(tmp_path)
    code = ("import sys; import retrieval_heads; assert 'torch' not in sys.modules and 'transformers' not in "
            "sys.modules; from transformers import AutoModelForCausalLM as A; "
            f"print(type(A.from_pretrained({str(tmp_path)!r})).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("HybridLMForCausalLM")


def test_hf_model_type_constants_agree():
    from retrieval_heads.hf import auto
    from retrieval_heads.model import hybrid
    from retrieval_heads.storage import checkpoint

    assert auto.HF_MODEL_TYPE == hybrid.HF_MODEL_TYPE == checkpoint.HF_MODEL_TYPE
    assert auto.HF_ARCHITECTURE == hybrid.HF_ARCHITECTURE == auto.HybridLMForCausalLM.__name__


def test_load_checkpoint_on_another_hf_folder_points_to_load_hf(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    with pytest.raises(CheckpointError, match=r"Hugging Face checkpoint \(model_type 'gemma3_text'\).*rh.hf.load_hf"):
        rh.load_checkpoint(tmp_path)
