"""Attention masks seen through the hooks: window semantics per layer kind.

Window convention (docs/ARCHITECTURE.md): ``w`` = number of keys a query sees *including itself*,
so query ``i`` sees key ``j`` iff ``0 <= i - j < w``. `F` layers are causal-full.
Recurrent layers have no ``attn`` submodule, hence no ``hook_pattern``.
"""

from __future__ import annotations

import pytest
import torch

import retrieval_heads as rh

T = 24


def _model(layout="SSFD", window=8, **kw):
    torch.manual_seed(0)
    cfg = rh.ModelConfig(layout=layout, d_model=32, n_heads=4, window=window, vocab_size=64,
                         max_seq_len=64, chunk_size=8, **kw)
    return rh.HybridLM(cfg).eval()


def _tokens(B=2, T=T, seed=0):
    return torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(seed))


def _allowed(T, window):
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    d = i - j
    return (d >= 0) & (d < window) if window is not None else d >= 0


@pytest.mark.parametrize("window", [pytest.param(1, id="w1"), pytest.param(8, id="w8"),
                                    pytest.param(5, id="w5"), pytest.param(64, id="w64>T")])
def test_run_with_cache_patterns_follow_layer_kind(window):
    model = _model("SSFD", window=window)
    _, cache = model.run_with_cache(_tokens())
    for l, kind in enumerate(model.cfg.layout):
        name = f"blocks.{l}.attn.hook_pattern"
        if kind == "D":
            assert name not in cache
            assert not any(k.startswith(f"blocks.{l}.") and "pattern" in k for k in cache)
            continue
        pat = cache[name]  # [batch, head, q, k]
        assert pat.shape == (2, 4, T, T)
        allowed = _allowed(T, window if kind == "S" else None)
        assert torch.all(pat[..., ~allowed] == 0), f"layer {l} ({kind}) attends outside its mask"
        assert torch.all(pat[..., allowed] > 0), f"layer {l} ({kind}) misses keys inside its mask"
        torch.testing.assert_close(pat.sum(-1), torch.ones(2, 4, T))
        # exactly w keys per query once the window is full (w including the query itself)
        n_keys = allowed.sum(-1)
        expect = torch.clamp(torch.arange(1, T + 1), max=window) if kind == "S" else torch.arange(1, T + 1)
        assert n_keys.tolist() == expect.tolist()


def test_window_one_is_identity_pattern():
    model = _model("S", window=1)
    _, cache = model.run_with_cache(_tokens(), names_filter=lambda n: n.endswith("hook_pattern"))
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"], torch.eye(T).expand(2, 4, T, T))


def test_hook_asserts_mask_on_scores_and_pattern():
    """A forward hook checks the mask itself: -inf scores and zero pattern exactly outside it."""
    window = 8
    model = _model("SSFD", window=window)
    seen = []

    def check_scores(scores, hook):
        l = int(hook.name.split(".")[1])
        allowed = _allowed(scores.shape[-1], model.cfg.layer_window(l))
        assert torch.isneginf(scores[..., ~allowed]).all(), hook.name
        assert torch.isfinite(scores[..., allowed]).all(), hook.name
        seen.append(hook.name)

    def check_pattern(pattern, hook):
        l = int(hook.name.split(".")[1])
        allowed = _allowed(pattern.shape[-1], model.cfg.layer_window(l))
        assert (pattern[..., ~allowed] == 0).all(), hook.name
        assert (pattern[..., allowed] > 0).all(), hook.name
        seen.append(hook.name)

    model.run_with_hooks(_tokens(), fwd_hooks=[
        (lambda n: n.endswith("hook_attn_scores"), check_scores),
        (lambda n: n.endswith("hook_pattern"), check_pattern),
    ])
    assert sorted(seen) == sorted(f"blocks.{l}.attn.hook_{h}" for l in (0, 1, 2)
                                  for h in ("attn_scores", "pattern"))
    # the mask hook sees the layer's configured window
    assert model.blocks[0].attn.window == window and model.blocks[2].attn.window is None


def test_decode_rows_respect_window():
    """In decoding, the one attention row per step sees the last w keys (cache included)."""
    window = 4
    model = _model("SF", window=window)
    toks = _tokens(B=1, T=10)
    cache = model.new_cache()
    model(toks[:, :6], cache=cache)
    rows = {}

    def grab(p, hook):
        rows[hook.name] = p.detach()

    model.run_with_hooks(toks[:, 6:7], cache=cache, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), grab)])
    s_row = rows["blocks.0.attn.hook_pattern"][0, :, 0]  # (head, 7 keys)
    f_row = rows["blocks.1.attn.hook_pattern"][0, :, 0]
    assert s_row.shape[-1] == 7
    assert (s_row[:, :3] == 0).all() and (s_row[:, 3:] > 0).all()  # keys 3..6 = last 4
    assert (f_row > 0).all()


def test_changing_layer_window_changes_mask_on_fast_and_eager_paths():
    """Interventions set ``attn.window``; both paths must honour the new window."""
    model = _model("S", window=8)
    toks = _tokens()
    model.blocks[0].attn.window = 3
    fast = model(toks)
    _, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_pattern"))
    pat = cache["blocks.0.attn.hook_pattern"]
    assert (pat[..., ~_allowed(T, 3)] == 0).all()
    torch.testing.assert_close(model.run_with_hooks(toks, fwd_hooks=[
        ("blocks.0.attn.hook_pattern", lambda p, hook: p)]), fast, atol=2e-5, rtol=1e-4)
