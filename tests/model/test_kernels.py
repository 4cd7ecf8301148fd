"""Every fast kernel equals its reference: outputs AND gradients (float32, CPU).

Tolerances (float32): attention ``atol=2e-5, rtol=1e-4``; chunked recurrences vs their
step-by-step loops ``atol=1e-4, rtol=1e-4`` (the chunked forms reassociate long sums
and solve a triangular system, so they drift a little more).

- ``kernels.blocked_swa`` vs ``kernels.eager_attention`` (the masked T×T reference) for
  w = 1, small w, w not dividing T, w = T-1, w >= T.
- ``kernels.sdpa_attention`` (full causal) vs eager with ``window=None``.
- ``kernels.fast_attention`` dispatch (auto / blocked / sdpa) vs eager.
- ``recurrence.chunk_*`` vs ``recurrence.naive_*`` with and without an initial state and
  for chunk sizes that do and do not divide T (including chunk > T and chunk = 1).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from retrieval_heads.model import kernels, recurrence

ATTN_TOL = dict(atol=2e-5, rtol=1e-4)
REC_TOL = dict(atol=1e-4, rtol=1e-4)


def _qkv(B=2, H=3, T=37, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g, requires_grad=True) for _ in range(3)]


def _out_and_grads(fn, inputs, seed=1):
    """Output of fn(*inputs) and the gradients of <out, random cotangent> w.r.t. inputs."""
    out = fn(*inputs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    grads = torch.autograd.grad((out * g).sum(), inputs)
    return out.detach(), grads


def _assert_same(fast, ref, tol, names):
    (o_f, g_f), (o_r, g_r) = fast, ref
    torch.testing.assert_close(o_f, o_r, **tol, msg=lambda m: f"output differs: {m}")
    for name, a, b in zip(names, g_f, g_r):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, n=name: f"grad of {n} differs: {m}")


# ----------------------------------------------------------------------------- attention
SWA_CASES = [  # (T, window)
    pytest.param(37, 1, id="w1"),
    pytest.param(37, 4, id="w4-T37-ragged"),
    pytest.param(32, 8, id="w8-T32-divides"),
    pytest.param(37, 8, id="w8-T37-ragged"),
    pytest.param(64, 16, id="w16-T64"),
    pytest.param(37, 36, id="w=T-1"),
    pytest.param(37, 37, id="w=T"),
    pytest.param(20, 64, id="w>T"),
    pytest.param(1, 4, id="T1"),
]


@pytest.mark.parametrize("T,window", SWA_CASES)
def test_blocked_swa_matches_eager(T, window):
    q, k, v = _qkv(T=T)
    pos = torch.arange(T)
    fast = _out_and_grads(lambda q, k, v: kernels.blocked_swa(q, k, v, window), (q, k, v))
    ref = _out_and_grads(lambda q, k, v: kernels.eager_attention(q, k, v, pos, pos, window), (q, k, v))
    _assert_same(fast, ref, ATTN_TOL, "qkv")


@pytest.mark.parametrize("T", [pytest.param(1, id="T1"), pytest.param(17, id="T17"),
                               pytest.param(64, id="T64")])
def test_sdpa_full_matches_eager(T):
    q, k, v = _qkv(T=T)
    pos = torch.arange(T)
    fast = _out_and_grads(kernels.sdpa_attention, (q, k, v))
    ref = _out_and_grads(lambda q, k, v: kernels.eager_attention(q, k, v, pos, pos, None), (q, k, v))
    _assert_same(fast, ref, ATTN_TOL, "qkv")


@pytest.mark.parametrize("backend", ["auto", "blocked", "sdpa"])
@pytest.mark.parametrize("window", [pytest.param(None, id="full"), pytest.param(5, id="w5"),
                                    pytest.param(100, id="w100>T")])
def test_fast_attention_dispatch_matches_eager(backend, window):
    q, k, v = _qkv(T=29)
    pos = torch.arange(29)
    fast = _out_and_grads(lambda q, k, v: kernels.fast_attention(q, k, v, window, backend), (q, k, v))
    ref = _out_and_grads(lambda q, k, v: kernels.eager_attention(q, k, v, pos, pos, window), (q, k, v))
    _assert_same(fast, ref, ATTN_TOL, "qkv")


def test_blocked_swa_mask_cache_is_not_mutated():
    """The cached block mask is shared across calls; a second call must give the same result."""
    q, k, v = _qkv(T=23)
    a = kernels.blocked_swa(q, k, v, 5)
    b = kernels.blocked_swa(q, k, v, 5)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_attention_mask_window_counts_the_query_itself():
    pos = torch.arange(6)
    m = kernels.attention_mask(pos, pos, 3)
    assert m.sum(-1).tolist() == [1, 2, 3, 3, 3, 3]  # w keys including itself
    assert m[5].tolist() == [False, False, False, True, True, True]
    assert kernels.attention_mask(pos, pos, None).sum(-1).tolist() == [1, 2, 3, 4, 5, 6]


# ----------------------------------------------------------------------------- recurrences
def _rec_inputs(B=2, H=2, T=23, Dk=4, Dv=5, seed=0, with_state=False, delta=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, Dk, generator=g)
    k = torch.randn(B, H, T, Dk, generator=g)
    if delta:  # the delta rule is stable for unit-norm keys (as in the D mixer)
        k = F.normalize(k, dim=-1)
    v = torch.randn(B, H, T, Dv, generator=g)
    log_a = -F.softplus(torch.randn(B, H, T, generator=g))  # <= 0
    beta = torch.sigmoid(torch.randn(B, H, T, generator=g))
    state = torch.randn(B, H, Dv, Dk, generator=g) * 0.5 if with_state else None
    return q, k, v, log_a, beta, state


def _rec_out_and_grads(fn, tensors, seed=1):
    tensors = [t.clone().requires_grad_(True) for t in tensors]
    o, S = fn(*tensors)
    g = torch.Generator().manual_seed(seed)
    go, gS = torch.randn(o.shape, generator=g), torch.randn(S.shape, generator=g)
    grads = torch.autograd.grad((o * go).sum() + (S * gS).sum(), tensors)
    return (torch.cat([o.detach().flatten(), S.detach().flatten()]), grads)


CHUNKS = [pytest.param(1, id="chunk1"), pytest.param(5, id="chunk5-ragged"),
          pytest.param(8, id="chunk8-ragged"), pytest.param(23, id="chunk=T"),
          pytest.param(64, id="chunk>T")]
STATES = [pytest.param(False, id="zero-state"), pytest.param(True, id="init-state")]


@pytest.mark.parametrize("with_state", STATES)
@pytest.mark.parametrize("chunk", CHUNKS)
def test_chunk_decay_linear_attention_matches_naive(chunk, with_state):
    q, k, v, log_a, _, state = _rec_inputs(with_state=with_state)
    names = ["q", "k", "v", "log_a"] + (["state"] if with_state else [])
    tensors = [q, k, v, log_a] + ([state] if with_state else [])

    def fast(q, k, v, la, *s):
        return recurrence.chunk_decay_linear_attention(q, k, v, la, s[0] if s else None, chunk=chunk)

    def ref(q, k, v, la, *s):
        return recurrence.naive_decay_linear_attention(q, k, v, la, s[0] if s else None)

    _assert_same(_rec_out_and_grads(fast, tensors), _rec_out_and_grads(ref, tensors), REC_TOL, names)


@pytest.mark.parametrize("with_state", STATES)
@pytest.mark.parametrize("chunk", CHUNKS)
def test_chunk_gated_delta_rule_matches_naive(chunk, with_state):
    q, k, v, log_a, beta, state = _rec_inputs(with_state=with_state, delta=True)
    names = ["q", "k", "v", "beta", "log_a"] + (["state"] if with_state else [])
    tensors = [q, k, v, beta, log_a] + ([state] if with_state else [])

    def fast(q, k, v, b, la, *s):
        return recurrence.chunk_gated_delta_rule(q, k, v, b, la, s[0] if s else None, chunk=chunk)

    def ref(q, k, v, b, la, *s):
        return recurrence.naive_gated_delta_rule(q, k, v, b, la, s[0] if s else None)

    _assert_same(_rec_out_and_grads(fast, tensors), _rec_out_and_grads(ref, tensors), REC_TOL, names)


@pytest.mark.parametrize("kind", ["decay", "delta"])
def test_chunked_recurrence_continues_from_split(kind):
    """Running [0, t) then [t, T) from the carried state equals one run over [0, T)."""
    q, k, v, log_a, beta, _ = _rec_inputs(T=19, delta=kind == "delta")
    if kind == "decay":
        run = lambda sl, s: recurrence.chunk_decay_linear_attention(
            q[:, :, sl], k[:, :, sl], v[:, :, sl], log_a[:, :, sl], s, chunk=4)
    else:
        run = lambda sl, s: recurrence.chunk_gated_delta_rule(
            q[:, :, sl], k[:, :, sl], v[:, :, sl], beta[:, :, sl], log_a[:, :, sl], s, chunk=4)
    o_all, S_all = run(slice(0, 19), None)
    o1, S1 = run(slice(0, 7), None)
    o2, S2 = run(slice(7, 19), S1)
    torch.testing.assert_close(torch.cat([o1, o2], 2), o_all, **REC_TOL)
    torch.testing.assert_close(S2, S_all, **REC_TOL)


def test_blocked_swa_mask_cached_under_inference_mode_still_trains():
    """The mask cache may be filled inside ``torch.inference_mode`` (a scan) and then used
    with autograd (training): that must not raise or change the result."""
    q, k, v = _qkv(T=41, seed=5)
    with torch.inference_mode():
        kernels.blocked_swa(q.detach(), k.detach(), v.detach(), 7)  # T=41, w=7: a fresh cache key
    pos = torch.arange(41)
    fast = _out_and_grads(lambda q, k, v: kernels.blocked_swa(q, k, v, 7), (q, k, v))
    ref = _out_and_grads(lambda q, k, v: kernels.eager_attention(q, k, v, pos, pos, 7), (q, k, v))
    _assert_same(fast, ref, ATTN_TOL, "qkv")
