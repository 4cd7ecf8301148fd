"""Backend choice of the recurrent mixers on CPU: fla is never imported or used for CPU
tensors, a missing fla on CUDA falls back to the torch chunked form with one log line per
process, and the fla adapters' layout/state translation is right (checked against a
stand-in that follows fla's documented conventions: (B, T, H, D) inputs, state (B, H, K, V)).
The real fla kernels are compared with the torch forms in tests/model/test_gpu_kernels.py."""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch

import retrieval_heads as rh
from retrieval_heads.config import RECURRENT_KINDS
from retrieval_heads.model import MIXERS, recurrence

MSG = recurrence.FLA_MISSING_MESSAGE


def _inputs(B=2, H=2, T=40, Dk=16, Dv=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, T, Dk, generator=g) * 0.3 for _ in range(2))
    k = torch.nn.functional.normalize(k, dim=-1)
    v = torch.randn(B, H, T, Dv, generator=g)
    log_a = -torch.rand(B, H, T, generator=g) * 0.5
    beta = torch.rand(B, H, T, generator=g)
    S0 = torch.randn(B, H, Dv, Dk, generator=g) * 0.1
    return [x.to(dtype) for x in (q, k, v, log_a, beta, S0)]


# --- a stand-in for fla.ops, written from fla's docstrings: (B, T, H, D) inputs, g in log
# space, state h (B, H, K, V) with o_t = scale * q_t h_t ---------------------------------
def _fake_simple_gla(q, k, v, g=None, scale=None, initial_state=None, output_final_state=False, **kw):
    dtype, (q, k, v) = q.dtype, (x.float() for x in (q, k, v))  # fp32 inside, o in q's dtype
    B, T, H, K = q.shape
    h = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.float()
    outs = []
    for t in range(T):
        h = h * g[:, t, :, None, None].exp() + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(scale * (q[:, t, :, None, :] @ h).squeeze(-2))  # (B, H, V)
    return torch.stack(outs, 1).to(dtype), h


def _fake_gdr(q, k, v, g=None, beta=None, scale=None, initial_state=None, output_final_state=False, **kw):
    dtype, (q, k, v, beta) = q.dtype, (x.float() for x in (q, k, v, beta))
    B, T, H, K = q.shape
    h = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.float()
    outs = []
    for t in range(T):
        h = h * g[:, t, :, None, None].exp()
        kt = k[:, t]  # (B, H, K)
        u = beta[:, t, :, None] * (v[:, t] - (kt[:, :, None, :] @ h).squeeze(-2))  # (B, H, V)
        h = h + kt[..., None] * u[:, :, None, :]
        outs.append(scale * (q[:, t, :, None, :] @ h).squeeze(-2))
    return torch.stack(outs, 1).to(dtype), h


@pytest.fixture
def fake_fla(monkeypatch):
    """Install the stand-in as ``fla`` and count its calls."""
    calls = []
    mods = {name: types.ModuleType(name) for name in
            ("fla", "fla.ops", "fla.ops.simple_gla", "fla.ops.gated_delta_rule")}

    def counted(fn, name):
        def wrapper(*a, **kw):
            calls.append(name)
            return fn(*a, **kw)
        return wrapper

    mods["fla.ops.simple_gla"].chunk_simple_gla = counted(_fake_simple_gla, "simple_gla")
    mods["fla.ops.gated_delta_rule"].chunk_gated_delta_rule = counted(_fake_gdr, "gdr")
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    real = recurrence.fla_available  # an lru_cache: forget what it saw, before and after
    real.cache_clear()
    yield calls
    real.cache_clear()


@pytest.fixture
def fresh_log_flag(monkeypatch):
    monkeypatch.setattr(recurrence, "_fla_missing_logged", False)


def test_fla_adapters_translate_layout_and_state(fake_fla):
    q, k, v, log_a, beta, S0 = _inputs()
    o, S = recurrence.fla_decay_linear_attention(q, k, v, log_a, S0)
    o_ref, S_ref = recurrence.naive_decay_linear_attention(q, k, v, log_a, S0)
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(S, S_ref, atol=1e-5, rtol=1e-5)
    o, S = recurrence.fla_gated_delta_rule(q, k, v, beta, log_a, S0)
    o_ref, S_ref = recurrence.naive_gated_delta_rule(q, k, v, beta, log_a, S0)
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(S, S_ref, atol=1e-5, rtol=1e-5)
    assert fake_fla == ["simple_gla", "gdr"]


@pytest.mark.parametrize("backend", ["auto", "fla"])
def test_cpu_tensors_never_touch_fla(backend, fake_fla, fresh_log_flag, monkeypatch, caplog):
    asked = []
    monkeypatch.setattr(recurrence, "fla_available", lambda: asked.append(1) or True)
    q, k, v, log_a, beta, _ = _inputs()
    with caplog.at_level(logging.INFO, logger=recurrence.__name__):
        for dtype in (torch.float32, torch.bfloat16):
            qq, kk, vv, aa = q.to(dtype), k.to(dtype), v.to(dtype), log_a.to(dtype)
            o, _ = recurrence.decay_linear_attention(qq, kk, vv, aa, backend=backend)
            ref, _ = recurrence.chunk_decay_linear_attention(qq, kk, vv, aa)
            assert torch.equal(o, ref)
        o, _ = recurrence.gated_delta_rule(q, k, v, beta, log_a, backend=backend)
        assert torch.equal(o, recurrence.chunk_gated_delta_rule(q, k, v, beta, log_a)[0])
        cfg = rh.ModelConfig(layout="S" + "".join(RECURRENT_KINDS), d_model=64, n_heads=4, window=8, max_seq_len=64,
                             recurrent_backend=backend)
        rh.HybridLM(cfg)(torch.randint(0, 256, (1, 24)))
    assert fake_fla == [] and asked == []  # never imported, never called
    assert MSG not in caplog.text


def test_missing_fla_on_cuda_falls_back_with_one_log_line(fresh_log_flag, monkeypatch, caplog):
    monkeypatch.setattr(recurrence, "_on_cuda", lambda x: True)  # pretend the tensors are on CUDA
    monkeypatch.setattr(recurrence, "fla_available", lambda: False)
    q, k, v, log_a, beta, _ = _inputs(dtype=torch.bfloat16)
    with caplog.at_level(logging.INFO, logger=recurrence.__name__):
        for _ in range(3):
            o, _ = recurrence.decay_linear_attention(q, k, v, log_a)
            assert torch.equal(o, recurrence.chunk_decay_linear_attention(q, k, v, log_a)[0])
        recurrence.use_fla(q, v, "auto")
        assert not recurrence.use_fla(q, v, "torch")
    lines = [r for r in caplog.records if r.getMessage() == MSG]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "\n" not in MSG
    with pytest.raises(RuntimeError, match="fla"):
        recurrence.use_fla(q, v, "fla")


def test_dispatch_rules_when_fla_is_present(monkeypatch, fresh_log_flag, caplog):
    monkeypatch.setattr(recurrence, "_on_cuda", lambda x: True)
    monkeypatch.setattr(recurrence, "fla_available", lambda: True)
    q, k, v, *_ = _inputs()
    bf = lambda x: x.bfloat16()  # noqa: E731
    assert recurrence.use_fla(bf(q), bf(v), "auto")
    assert not recurrence.use_fla(q, v, "auto")  # float32 stays exact on the torch form
    assert recurrence.use_fla(q, v, "fla")
    assert not recurrence.use_fla(q, v, "torch")
    assert not recurrence.use_fla(bf(q[:, :, :1]), bf(v[:, :, :1]), "fla")  # a decode step
    assert not recurrence.use_fla(bf(q[..., :8]), bf(v), "fla")  # heads narrower than 16
    with pytest.raises(ValueError, match="recurrent_backend"):
        recurrence.use_fla(q, v, "triton")
    assert MSG not in caplog.text


def test_mixers_route_through_the_backend(monkeypatch):
    """M and L go through decay_linear_attention, D through gated_delta_rule (each mixer
    through its declared family's function), with cfg's backend."""
    seen = []
    real_d, real_g = recurrence.decay_linear_attention, recurrence.gated_delta_rule
    monkeypatch.setattr(recurrence, "decay_linear_attention",
                        lambda *a, backend, **kw: seen.append(("decay", backend)) or real_d(*a, backend=backend, **kw))
    monkeypatch.setattr(recurrence, "gated_delta_rule",
                        lambda *a, backend, **kw: seen.append(("delta", backend)) or real_g(*a, backend=backend, **kw))
    layout = "".join(c for c in RECURRENT_KINDS if MIXERS[c].family in ("decay", "delta"))  # "MDL"
    cfg = rh.ModelConfig(layout=layout, d_model=32, n_heads=2, max_seq_len=64, recurrent_backend="torch")
    rh.HybridLM(cfg)(torch.randint(0, 256, (1, 10)))
    assert seen == [(MIXERS[c].family, "torch") for c in layout]
    assert seen[:3] == [("decay", "torch"), ("delta", "torch"), ("decay", "torch")]


def test_training_on_an_affected_fla_setup_uses_torch_with_one_log_line(monkeypatch, fresh_log_flag, caplog):
    """fla #640: where its gated backward refuses to run, auto keeps fla for inference only."""
    monkeypatch.setattr(recurrence, "_on_cuda", lambda x: True)
    monkeypatch.setattr(recurrence, "fla_available", lambda: True)
    monkeypatch.setattr(recurrence, "fla_backward_ok", lambda index=0: False)
    monkeypatch.setattr(recurrence, "_fla_backward_logged", False)
    q, k, v, log_a, _, _ = _inputs(dtype=torch.bfloat16)
    with caplog.at_level(logging.INFO, logger=recurrence.__name__):
        assert recurrence.use_fla(q, v, "auto")  # inference
        for _ in range(2):
            assert not recurrence.use_fla(q, v, "auto", needs_grad=True)  # training
        q.requires_grad_(True)
        o, _ = recurrence.decay_linear_attention(q, k, v, log_a.bfloat16())  # took the torch form
        assert o.requires_grad
    assert [r.getMessage() for r in caplog.records] == [recurrence.FLA_BACKWARD_MESSAGE]
    with pytest.raises(RuntimeError, match="#640"):
        recurrence.use_fla(q, v, "fla", needs_grad=True)


@pytest.mark.parametrize("capability,name,triton_v,ok", [
    ((9, 0), "NVIDIA H100 80GB HBM3", "3.6.0", False),
    ((9, 0), "NVIDIA H200", "3.4.0", False),
    ((9, 0), "NVIDIA H100 80GB HBM3", "3.7.1", True),
    ((9, 0), "NVIDIA H100 80GB HBM3", "3.3.1", True),
    ((8, 0), "NVIDIA A100-SXM4-80GB", "3.6.0", True),
], ids=["h100-triton3.6", "h200-triton3.4", "h100-triton3.7.1", "h100-triton3.3", "a100-triton3.6"])
def test_fla_backward_ok_rule(capability, name, triton_v, ok, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__=triton_v))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: name)
    assert recurrence.fla_backward_ok.__wrapped__(0) is ok
