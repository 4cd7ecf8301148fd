"""CUDA fast paths vs the eager reference (outputs and gradients). Skipped without a GPU.

FlexAttention is compiled on first use (tens of seconds). Tolerances: float32
``atol=rtol=2e-3`` (TF32 / kernel reassociation); bfloat16 ``atol=rtol=3e-2``.
"""

from __future__ import annotations

import pytest
import torch

import retrieval_heads as rh
from retrieval_heads.model import kernels

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TOL = {torch.float32: dict(atol=2e-3, rtol=2e-3), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}


def _qkv(T, dtype, B=2, H=4, D=64):
    g = torch.Generator(device="cuda").manual_seed(0)
    return [torch.randn(B, H, T, D, device="cuda", dtype=dtype, generator=g).requires_grad_(True)
            for _ in range(3)]


def _out_grads(fn, qkv):
    out = fn(*qkv)
    g = torch.randn(out.shape, device="cuda", dtype=out.dtype, generator=torch.Generator("cuda").manual_seed(1))
    return [out.detach().float()] + [x.float() for x in torch.autograd.grad((out * g).sum(), qkv)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T,window", [(256, 1), (300, 64), (512, 128), (256, None)],
                         ids=["T256-w1", "T300-w64", "T512-w128", "T256-full"])
def test_flex_matches_eager(T, window, dtype):
    if not kernels.flex_available():
        pytest.skip("FlexAttention not available")
    qkv = _qkv(T, dtype)
    pos = torch.arange(T, device="cuda")
    ref = _out_grads(lambda q, k, v: kernels.eager_attention(q.float(), k.float(), v.float(), pos, pos, window).to(dtype), qkv)
    fast = _out_grads(lambda q, k, v: kernels.flex_swa(q, k, v, window), qkv)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("window", [None, 16], ids=["full", "w16"])
def test_fast_attention_auto_matches_eager_on_cuda(window, dtype):
    qkv = _qkv(200, dtype)
    pos = torch.arange(200, device="cuda")
    ref = _out_grads(lambda q, k, v: kernels.eager_attention(q.float(), k.float(), v.float(), pos, pos, window).to(dtype), qkv)
    fast = _out_grads(lambda q, k, v: kernels.fast_attention(q, k, v, window, "auto"), qkv)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, **TOL[dtype])


def test_model_on_cuda_fast_equals_eager_and_decoding():
    torch.manual_seed(0)
    cfg = rh.ModelConfig(layout="SFMDL", d_model=64, n_heads=4, window=16, vocab_size=64, max_seq_len=256)
    model = rh.HybridLM(cfg).cuda().eval()
    toks = torch.randint(0, 64, (2, 80), device="cuda")
    with torch.no_grad():
        fast = model(toks)
        model.set_force_eager(True)
        eager = model(toks)
        model.set_force_eager(False)
        cache = model.new_cache()
        steps = torch.cat([model(toks[:, :40], cache=cache)] +
                          [model(toks[:, i:i + 1], cache=cache) for i in range(40, 80)], 1)
    torch.testing.assert_close(fast, eager, **TOL[torch.float32])
    torch.testing.assert_close(steps, fast, **TOL[torch.float32])
