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
    ref = _out_grads(lambda q, k, v: kernels.eager_attention(q.float(), k.float(), v.float(), pos, pos,
                                                             window).to(dtype), qkv)
    fast = _out_grads(lambda q, k, v: kernels.flex_swa(q, k, v, window), qkv)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("window", [None, 16], ids=["full", "w16"])
def test_fast_attention_auto_matches_eager_on_cuda(window, dtype):
    qkv = _qkv(200, dtype)
    pos = torch.arange(200, device="cuda")
    ref = _out_grads(lambda q, k, v: kernels.eager_attention(q.float(), k.float(), v.float(), pos, pos,
                                                             window).to(dtype), qkv)
    fast = _out_grads(lambda q, k, v: kernels.fast_attention(q, k, v, window, "auto"), qkv)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, **TOL[dtype])


# ---- flash-linear-attention kernels for the recurrent mixers (skipped without fla) --------
# Compared with the torch chunked forms in float32 (``recurrence.chunk_*``), outputs, final
# states and the gradients of every input. Errors are RMS ratios, ||a - b|| / ||b|| (as in
# fla's own tests): fla's fp32 matmuls run in TF32, hence 5e-3 there and 2e-2 in bf16.
from retrieval_heads.model import recurrence  # noqa: E402

RATIO = {torch.float32: 5e-3, torch.bfloat16: 2e-2}


def _need_fla():
    if not recurrence.fla_available():
        pytest.skip("flash-linear-attention (fla) not installed")


def _ratio(a, b):
    a, b = a.float(), b.float()
    return ((a - b).square().mean().sqrt() / b.square().mean().sqrt().clamp_min(1e-12)).item()


def _rec_inputs(dtype, B=2, H=4, T=300, Dk=64, Dv=64):
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    q = r(B, H, T, Dk) * Dk ** -0.5
    k = torch.nn.functional.normalize(r(B, H, T, Dk), dim=-1)
    v = r(B, H, T, Dv)
    log_a = -torch.nn.functional.softplus(r(B, H, T)) * 0.3  # (B, H, T), <= 0
    beta = torch.sigmoid(r(B, H, T))
    S0 = r(B, H, Dv, Dk) * 0.1
    return [x.to(dtype).requires_grad_(True) for x in (q, k, v)] + \
           [x.requires_grad_(True) for x in (log_a, beta, S0)]


def _rec_fns(kind):
    """(fla path, torch chunked reference), both taking (q, k, v, log_a, beta, S0)."""
    if kind == "decay":
        return (lambda q, k, v, a, b, s: recurrence.decay_linear_attention(q, k, v, a, s, backend="fla"),
                lambda q, k, v, a, b, s: recurrence.chunk_decay_linear_attention(q, k, v, a, s))
    return (lambda q, k, v, a, b, s: recurrence.gated_delta_rule(q, k, v, b, a, s, backend="fla"),
            lambda q, k, v, a, b, s: recurrence.chunk_gated_delta_rule(q, k, v, b, a, s))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["decay", "delta"])
def test_fla_recurrence_forward_matches_torch_chunked(kind, dtype):
    _need_fla()
    fla_fn, ref_fn = _rec_fns(kind)
    with torch.no_grad():
        q, k, v, log_a, beta, S0 = _rec_inputs(dtype)
        assert recurrence.use_fla(q, v, "fla")
        o, S = fla_fn(q, k, v, log_a, beta, S0)
        o_ref, S_ref = ref_fn(q.float(), k.float(), v.float(), log_a, beta, S0)
    assert o.shape == o_ref.shape and S.shape == S_ref.shape and o.dtype == dtype
    assert _ratio(o, o_ref) < RATIO[dtype]
    assert _ratio(S, S_ref) < RATIO[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["decay", "delta"])
def test_fla_recurrence_backward_matches_torch_chunked(kind, dtype):
    _need_fla()
    if not recurrence.fla_backward_ok():
        pytest.skip("fla's gated backward is disabled on Hopper with Triton in [3.4, 3.7.1) (fla #640)")
    fla_fn, ref_fn = _rec_fns(kind)
    q, k, v, log_a, beta, S0 = xs = _rec_inputs(dtype)
    names = ["q", "k", "v", "log_a", "beta", "S0"]
    if kind == "decay":
        xs, names = [q, k, v, log_a, S0], ["q", "k", "v", "log_a", "S0"]
    o, S = fla_fn(q, k, v, log_a, beta, S0)
    o_ref, S_ref = ref_fn(q.float(), k.float(), v.float(), log_a, beta, S0)
    w = torch.randn(o.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    grads = torch.autograd.grad((o.float() * w).sum() + S.float().sum(), xs)
    grads_ref = torch.autograd.grad((o_ref * w).sum() + S_ref.sum(), xs)
    assert _ratio(o, o_ref) < RATIO[dtype]
    for name, a, b in zip(names, grads, grads_ref):
        assert _ratio(a, b) < RATIO[dtype] * 2, name


def _mdl_model(backend):
    torch.manual_seed(0)
    cfg = rh.ModelConfig(layout="MDLF", d_model=256, n_heads=4, window=32, vocab_size=64, max_seq_len=512,
                         recurrent_backend=backend)
    return rh.HybridLM(cfg).cuda()


def test_fla_model_bf16_inference_matches_torch():
    """An M/D/L model under bf16 autocast without gradients: auto picks fla, logits match."""
    _need_fla()
    x = torch.randint(0, 64, (2, 256), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    out = {}
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        probe = torch.zeros(1, 4, 64, 64, device="cuda")
        assert recurrence.use_fla(probe, probe, "auto")
        for backend in ("auto", "torch"):
            out[backend] = _mdl_model(backend).eval()(x).float()
    assert _ratio(out["auto"], out["torch"]) < 3e-2


def test_fla_model_bf16_training_step_matches_torch():
    """A bf16 autocast training step: loss and every parameter gradient match the torch
    chunked form. Where fla's backward is disabled (Hopper + Triton 3.4-3.7.0) auto must
    fall back to the torch form for training instead of failing."""
    _need_fla()
    x = torch.randint(0, 64, (2, 257), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    out = {}
    for backend in ("auto", "torch"):
        model = _mdl_model(backend)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        out[backend] = (loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()
                                         if p.grad is not None})
    (l_fla, g_fla), (l_ref, g_ref) = out["auto"], out["torch"]
    assert abs(l_fla.item() - l_ref.item()) < 1e-2 * abs(l_ref.item())
    for n in g_ref:
        assert _ratio(g_fla[n], g_ref[n]) < 5e-2, n
    with torch.autocast("cuda", dtype=torch.bfloat16):
        probe = torch.zeros(1, 4, 64, 64, device="cuda")
        assert recurrence.use_fla(probe, probe, "auto", needs_grad=True) == recurrence.fla_backward_ok()


def test_fla_prefill_then_torch_decode_continues_the_state():
    """Prefill through fla (state handed over in our layout), then decode one token at a
    time on the torch form: equals one fla forward over the whole sequence."""
    _need_fla()
    torch.manual_seed(0)
    cfg = rh.ModelConfig(layout="MDL", d_model=128, n_heads=2, vocab_size=64, max_seq_len=256,
                         recurrent_backend="fla")
    model = rh.HybridLM(cfg).cuda().eval()
    toks = torch.randint(0, 64, (2, 120), device="cuda")
    with torch.no_grad():
        full = model(toks)
        cache = model.new_cache()
        steps = torch.cat([model(toks[:, :100], cache=cache)] +
                          [model(toks[:, i:i + 1], cache=cache) for i in range(100, 120)], 1)
    assert _ratio(steps, full) < RATIO[torch.float32]
