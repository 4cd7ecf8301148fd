"""Whole-model equivalences (float32, CPU, tiny, seeded).

1. Fast paths vs references: the model on its fast paths (SDPA, blocked SWA, chunked
   recurrences) equals the same weights with every ``attn.force_eager = True`` and every
   ``mixer.use_naive = True`` — logits and every parameter gradient.
   Tolerance (float32): ``rtol=1e-4`` and ``atol = 1e-4 * max|reference|`` per tensor
   (gradients reach O(100) here, so a fixed atol would only measure float32 rounding);
   in float64 the same comparison holds to ``1e-10``.
2. Decoding: full-sequence logits equal step-by-step decoding with a ``DecodeCache``
   (``model(t[:, i:i+1], cache=c)``), for every layer kind (F, S, M, D, L: one layout per
   letter of ``config.LAYER_KINDS``, so a newly registered mixer is covered), a mixed
   layout, prefill + decode, chunked prefill, and grouped-query attention.
   Tolerance: ``atol=2e-5, rtol=1e-4``.
"""

from __future__ import annotations

import pytest
import torch

import retrieval_heads as rh
import retrieval_heads.model  # noqa: F401 (imports, hence registers, every mixer)
from retrieval_heads.config import LAYER_KINDS, RECURRENT_KINDS

DECODE_TOL = dict(atol=2e-5, rtol=1e-4)
VOCAB = 64


def _model(layout, window=4, n_heads=4, n_kv_heads=None, chunk_size=8, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = rh.ModelConfig(layout=layout, d_model=32, n_heads=n_heads, n_kv_heads=n_kv_heads,
                         window=window, vocab_size=VOCAB, max_seq_len=128, chunk_size=chunk_size, **kw)
    model = rh.HybridLM(cfg).eval()
    # larger-than-init weights so that every layer visibly changes the logits
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3 / p.shape[-1] ** 0.5 * 3)
    return model


def _tokens(B=2, T=21, seed=0):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def _set_reference(model, on: bool):
    for block in model.blocks:
        if hasattr(block, "attn"):
            block.attn.force_eager = on
        else:
            block.mixer.use_naive = on


def _assert_close_scaled(actual, expected, rtol=1e-4, name=""):
    """|actual - expected| <= rtol * (|expected| + max|expected|), elementwise."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale,
                               msg=lambda m: f"{name}: {m}")


def _logits_and_grads(model, toks):
    model.zero_grad(set_to_none=True)
    logits = model(toks)
    g = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
    (logits * g).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


MIXED = "SF" + "".join(RECURRENT_KINDS)  # "SFMDL": every kind in one model
LAYOUTS = [pytest.param(k, id=k) for k in LAYER_KINDS] + [pytest.param(MIXED, id=MIXED)]


@pytest.mark.parametrize("dtype,rtol", [pytest.param(torch.float32, 1e-4, id="float32"),
                                         pytest.param(torch.float64, 1e-10, id="float64")])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fast_model_equals_eager_naive_model(layout, dtype, rtol):
    model = _model(layout, window=5, chunk_size=8).to(dtype)  # T=21: neither 5 nor 8 divides it
    toks = _tokens()
    fast_logits, fast_grads = _logits_and_grads(model, toks)
    _set_reference(model, True)
    ref_logits, ref_grads = _logits_and_grads(model, toks)
    _set_reference(model, False)
    _assert_close_scaled(fast_logits, ref_logits, rtol, "logits")
    assert fast_grads.keys() == ref_grads.keys()
    assert len(ref_grads) == len(list(model.parameters()))  # every parameter gets a gradient
    for name in ref_grads:
        _assert_close_scaled(fast_grads[name], ref_grads[name], rtol, f"grad of {name}")


def test_reference_switches_really_switch_paths(monkeypatch):
    """Guard against a vacuous comparison: the flags do route to different code."""
    from retrieval_heads.model import kernels, recurrence

    calls = []
    monkeypatch.setattr(kernels, "blocked_swa", lambda *a, _f=kernels.blocked_swa: calls.append("blocked") or _f(*a))
    monkeypatch.setattr(recurrence, "naive_gated_delta_rule",
                        lambda *a, _f=recurrence.naive_gated_delta_rule: calls.append("naive") or _f(*a))
    model = _model("SD", window=5)
    model(_tokens())
    assert calls == ["blocked"]
    calls.clear()
    _set_reference(model, True)
    model(_tokens())
    assert calls == ["naive"]


def _decode_stepwise(model, toks):
    cache = model.new_cache()
    outs = [model(toks[:, i:i + 1], cache=cache) for i in range(toks.shape[1])]
    assert len(cache) == toks.shape[1]
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("layout", LAYOUTS)
@torch.no_grad()
def test_full_sequence_equals_stepwise_decoding(layout):
    model = _model(layout, window=4, chunk_size=8)
    toks = _tokens()
    torch.testing.assert_close(_decode_stepwise(model, toks), model(toks), **DECODE_TOL)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("prefill", [pytest.param(1, id="prefill1"), pytest.param(9, id="prefill9"),
                                     pytest.param(16, id="prefill16")])
@torch.no_grad()
def test_prefill_then_decode_equals_full_sequence(layout, prefill):
    model = _model(layout, window=4, chunk_size=8)
    toks = _tokens()
    cache = model.new_cache()
    outs = [model(toks[:, :prefill], cache=cache)]  # fast path prefill
    outs += [model(toks[:, i:i + 1], cache=cache) for i in range(prefill, toks.shape[1])]
    torch.testing.assert_close(torch.cat(outs, 1), model(toks), **DECODE_TOL)


@pytest.mark.parametrize("layout", [pytest.param(MIXED, id=MIXED)])
@torch.no_grad()
def test_chunked_prefill_equals_full_sequence(layout):
    """Several multi-token calls on one cache (the eager path with cached keys)."""
    model = _model(layout, window=4, chunk_size=8)
    toks = _tokens()
    cache = model.new_cache()
    outs = [model(toks[:, a:b], cache=cache) for a, b in [(0, 6), (6, 13), (13, 14), (14, 21)]]
    torch.testing.assert_close(torch.cat(outs, 1), model(toks), **DECODE_TOL)


@pytest.mark.parametrize("layout", [pytest.param("F", id="F"), pytest.param("S", id="S"),
                                    pytest.param("SF", id="SF")])
@pytest.mark.parametrize("n_kv_heads", [pytest.param(1, id="kv1"), pytest.param(2, id="kv2")])
def test_grouped_query_attention(layout, n_kv_heads):
    model = _model(layout, window=4, n_heads=4, n_kv_heads=n_kv_heads)
    assert model.blocks[0].attn.W_K.weight.shape == (n_kv_heads * 8, 32)
    toks = _tokens()
    with torch.no_grad():
        torch.testing.assert_close(_decode_stepwise(model, toks), model(toks), **DECODE_TOL)
    fast_logits, fast_grads = _logits_and_grads(model, toks)
    _set_reference(model, True)
    ref_logits, ref_grads = _logits_and_grads(model, toks)
    _assert_close_scaled(fast_logits, ref_logits, name="logits")
    for name in ref_grads:
        _assert_close_scaled(fast_grads[name], ref_grads[name], name=f"grad of {name}")
    # hook shapes: k/v carry kv heads, q/z/pattern carry query heads
    _, cache = model.run_with_cache(toks[:1, :7])
    assert cache["blocks.0.attn.hook_k"].shape == (1, 7, n_kv_heads, 8)
    assert cache["blocks.0.attn.hook_q"].shape == (1, 7, 4, 8)
    assert cache["blocks.0.attn.hook_pattern"].shape == (1, 4, 7, 7)


@torch.no_grad()
def test_generate_matches_argmax_of_full_forward():
    model = _model(MIXED, window=4)
    toks = _tokens(B=2, T=9)
    new = model.generate(toks, max_new_tokens=5)
    seq = toks
    for _ in range(5):
        nxt = model(seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(new, seq[:, 9:])
