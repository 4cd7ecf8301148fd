"""CUDA fast paths against their references. Marked `gpu`: skipped without a CUDA GPU
(CI never has one); run on a GPU machine with `pytest -m gpu tests/model/test_gpu.py`."""

import pytest
import torch

import retrieval_heads as rh
from retrieval_heads.model import kernels, recurrence

pytestmark = pytest.mark.gpu
DEV = "cuda"


def _qkv(B=2, H=4, T=1024, D=64, dtype=torch.float32, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g).to(DEV, dtype).requires_grad_(True) for _ in range(3)]


@pytest.mark.parametrize("window", [None, 1, 64, 128, 700], ids=lambda w: f"w{w}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_flex_matches_eager(window, dtype):
    q, k, v = _qkv(dtype=dtype)
    pos = torch.arange(q.shape[2], device=DEV)
    ref = kernels.eager_attention(q.float(), k.float(), v.float(), pos, pos, window)
    out = kernels.flex_swa(q, k, v, window)
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    assert (out.float() - ref).abs().max().item() < tol * 10
    g_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
    g_out = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    for a, b in zip(g_out, g_ref):
        scale = b.abs().max().item() + 1e-6
        assert (a.float() - b.float()).abs().max().item() / scale < (1e-4 if dtype == torch.float32 else 5e-2)


def test_auto_backend_uses_flex_for_sliding_window():
    q, k, v = _qkv(T=512, dtype=torch.bfloat16)
    pos = torch.arange(512, device=DEV)
    out = kernels.fast_attention(q, k, v, 64, "auto")
    ref = kernels.eager_attention(q.float(), k.float(), v.float(), pos, pos, 64)
    assert (out.float() - ref).abs().max().item() < 0.1


@pytest.mark.parametrize("fn", ["decay", "delta"])
def test_chunked_recurrences_on_cuda(fn):
    g = torch.Generator().manual_seed(0)
    B, H, T, D = 2, 4, 300, 32
    q, k, v = (torch.randn(B, H, T, D, generator=g).to(DEV) for _ in range(3))
    k = torch.nn.functional.normalize(k, dim=-1)
    log_a = -torch.rand(B, H, T, generator=g).to(DEV)
    beta = torch.rand(B, H, T, generator=g).to(DEV)
    if fn == "decay":
        a, _ = recurrence.naive_decay_linear_attention(q, k, v, log_a)
        b, _ = recurrence.chunk_decay_linear_attention(q, k, v, log_a, chunk=64)
    else:
        a, _ = recurrence.naive_gated_delta_rule(q, k, v, beta, log_a)
        b, _ = recurrence.chunk_gated_delta_rule(q, k, v, beta, log_a, chunk=64)
    assert (a - b).abs().max().item() < 1e-3


@pytest.mark.parametrize("layout", ["SSSF", "SFDL", "MSMF", "SFMDL"])
def test_model_fast_path_and_decoding_on_cuda(layout):
    torch.manual_seed(0)
    cfg = rh.ModelConfig(layout=layout, d_model=128, n_heads=4, window=32, max_seq_len=1024)
    model = rh.HybridLM(cfg).to(DEV).eval()
    x = torch.randint(0, 256, (2, 200), device=DEV)
    with torch.no_grad():
        fast = model(x)
        model.set_force_eager(True)
        eager = model(x)
        model.set_force_eager(False)
        cache = model.new_cache()
        steps = torch.cat([model(x[:, :150], cache=cache)] +
                          [model(x[:, i:i + 1], cache=cache) for i in range(150, 200)], dim=1)
    assert (fast - eager).abs().max().item() < 1e-3
    assert (fast - steps).abs().max().item() < 1e-3


def test_bf16_autocast_training_step_is_finite():
    torch.manual_seed(0)
    model = rh.HybridLM(rh.ModelConfig(layout="SSSF", d_model=128, n_heads=4, window=64,
                                       max_seq_len=4096)).to(DEV)
    x = torch.randint(0, 256, (2, 2049), device=DEV)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
