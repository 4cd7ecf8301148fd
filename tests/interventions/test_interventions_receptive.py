"""Receptive-field windows: exact windowed recurrences, no-op when w >= T, decode-cache parity."""

import pytest
import torch

import retrieval_heads as rh
from retrieval_heads.interventions import layer_windows, receptive_field


def _model(layout, **kw):
    torch.manual_seed(0)
    cfg = rh.ModelConfig(layout=layout, d_model=32, n_heads=2, window=6, chunk_size=8, max_seq_len=256, **kw)
    return rh.HybridLM(cfg).eval()


X = torch.randint(0, 256, (2, 37), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("kind", ["M", "D", "L"])
@pytest.mark.parametrize("w", [1, 3, 8, 13, 36])
def test_windowed_recurrence_matches_restart_reference(kind, w):
    """Fast windowed forms == restarting the naive recurrence at t - w + 1 for every t."""
    model = _model(kind + "F")
    mixer = model.blocks[0].mixer
    with receptive_field(model, efficient=w):
        fast = model(X)
        mixer.use_naive = True
        try:
            ref = model(X)
        finally:
            mixer.use_naive = False
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["M", "D", "L"])
def test_windowed_recurrence_sees_only_window(kind):
    """Changing a token more than w - 1 positions back leaves the windowed mixer output unchanged."""
    model = _model(kind)
    store = {}
    hook = [("blocks.0.mixer.hook_out", lambda t, hook: store.__setitem__("o", t))]
    x2 = X.clone()
    x2[:, 10] = (x2[:, 10] + 1) % 256
    with receptive_field(model, efficient=5):
        model.run_with_hooks(X, fwd_hooks=hook)
        a = store["o"]
        model.run_with_hooks(x2, fwd_hooks=hook)
        b = store["o"]
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:15], b[:, 10:15])
    torch.testing.assert_close(a[:, 15:], b[:, 15:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("layout", ["SSFF", "MDLF", "SDSF"])
def test_window_at_least_T_changes_nothing(layout):
    model = _model(layout)
    ref = model(X)
    T = X.shape[1]
    for kw in ({"full": T}, {"full": T + 50}, {"efficient": T}, {"efficient": 1000},
               {"full": T, "efficient": T}):
        with receptive_field(model, **kw):
            out = model(X)
        # w >= T is handled exactly as no window (same kernels): bit-identical
        assert torch.equal(out, ref), kw


@pytest.mark.parametrize("layout", ["SDF", "MLF"])
def test_windowed_generation_matches_full_forward(layout):
    """Greedy decoding with a decode cache under receptive-field limits equals re-running the
    whole sequence (recurrent layers keep the last w - 1 inputs in the cache)."""
    model = _model(layout)
    with receptive_field(model, full=9, efficient=4):
        gen = model.generate(X[:, :20], max_new_tokens=6)
        full = model(torch.cat([X[:, :20], gen[:, :5]], 1))
    assert torch.equal(full[:, 19:].argmax(-1), gen)


def test_full_window_restricts_full_attention():
    model = _model("SF")
    _, cache = model.run_with_cache(X, names_filter=lambda n: n.endswith("hook_pattern"))
    with receptive_field(model, full=5) as w:
        _, c2 = model.run_with_cache(X, names_filter=lambda n: n.endswith("hook_pattern"))
    assert w == {0: 6, 1: 5}
    p = c2["blocks.1.attn.hook_pattern"]
    q, k = torch.meshgrid(torch.arange(37), torch.arange(37), indexing="ij")
    assert torch.all(p[:, :, (q - k >= 5) | (k > q)] == 0)
    assert torch.equal(c2["blocks.0.attn.hook_pattern"], cache["blocks.0.attn.hook_pattern"])
    assert model.blocks[1].attn.window is None  # restored


def test_layer_windows_rules():
    model = _model("SFD")
    assert layer_windows(model, efficient=100) == {0: 6, 1: None, 2: 100}  # S never widened
    assert layer_windows(model, efficient=3, full=50) == {0: 3, 1: 50, 2: 3}
    assert layer_windows(model, layers={1: 7}) == {0: 6, 1: 7, 2: None}
    with pytest.raises(ValueError, match="positive"):
        layer_windows(model, full=0)
    with pytest.raises(ValueError, match="out of range"):
        layer_windows(model, layers={5: 3})


def test_cache_window_mismatch_is_an_error():
    model = _model("DF")
    cache = model.new_cache()
    model(X[:, :10], cache=cache)
    with receptive_field(model, efficient=4):
        with pytest.raises(ValueError, match="receptive-field"):
            model(X[:, 10:11], cache=cache)
