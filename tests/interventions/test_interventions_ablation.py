"""Head ablation: per-head effect only, zero-all = skipping the layer's attention, mean, mask."""

import pytest
import torch

import retrieval_heads as rh
from helpers import tiny_model
from retrieval_heads.interventions import ablate_heads, mean_head_outputs, parse_heads


@pytest.fixture(scope="module")
def model():
    return tiny_model("SFDF", n_heads=4, window=6)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))


def _cache_z(model, tokens):
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"))
    return cache


@pytest.mark.parametrize("method", ["zero", "mean", "mask"])
@pytest.mark.parametrize("layer,head", [(1, 2), (3, 0)])
def test_other_heads_unchanged_up_to_layer(model, tokens, method, layer, head):
    clean = _cache_z(model, tokens)
    with ablate_heads(model, [(layer, head)], method=method, reference=tokens):
        abl = _cache_z(model, tokens)
    z0, z1 = clean[f"blocks.{layer}.attn.hook_z"], abl[f"blocks.{layer}.attn.hook_z"]
    others = [h for h in range(4) if h != head]
    # zero/mean keep the fast path: bit-identical; mask runs the layer eagerly: float rounding
    same = torch.equal if method != "mask" else (lambda a, b: torch.allclose(a, b, rtol=0, atol=1e-6))
    assert same(z0[:, :, others], z1[:, :, others])
    for l in model.cfg.attention_layers:
        if l < layer:
            assert same(clean[f"blocks.{l}.attn.hook_z"], abl[f"blocks.{l}.attn.hook_z"])
    if method in ("zero", "mask"):
        assert torch.all(z1[:, :, head] == 0)
    else:
        means = mean_head_outputs(model, tokens, layers=[layer])[layer][head]
        assert torch.allclose(z1[:, :, head], means.expand_as(z1[:, :, head]))
    # later layers do change
    later = [l for l in model.cfg.attention_layers if l > layer]
    for l in later:
        assert not torch.equal(clean[f"blocks.{l}.attn.hook_z"], abl[f"blocks.{l}.attn.hook_z"])


def test_zero_all_heads_equals_skipping_attention(model, tokens):
    skip = lambda x, hook: torch.zeros_like(x)
    for layer in model.cfg.attention_layers:
        ref = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.hook_attn_out", skip)])
        with ablate_heads(model, {layer: range(4)}):
            out = model(tokens)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_zero_ablation_stays_on_fast_path(model, tokens):
    calls = []
    orig = rh.model.kernels.eager_attention

    def spy(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    rh.model.kernels.eager_attention = spy
    try:
        with ablate_heads(model, [(1, 0), (3, 1)]):
            model(tokens)
        assert not calls
        with ablate_heads(model, [(1, 0)], method="mask"):
            model(tokens)
        assert calls  # masking needs the scores, hence the eager path
    finally:
        rh.model.kernels.eager_attention = orig


def test_mask_all_keys_equals_zero_and_partial_mask_renormalises(model, tokens):
    with ablate_heads(model, [(3, 1)], method="zero"):
        zero = model(tokens)
    with ablate_heads(model, [(3, 1)], method="mask"):
        mask = model(tokens)
    torch.testing.assert_close(mask, zero, rtol=0, atol=1e-5)
    # blocking keys 0..9: the head's pattern has no mass there and still sums to 1 elsewhere
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == "blocks.3.attn.hook_pattern")
    with ablate_heads(model, [(3, 1)], method="mask", keys=range(10)):
        _, c2 = model.run_with_cache(tokens, names_filter=lambda n: n == "blocks.3.attn.hook_pattern")
    p = c2["blocks.3.attn.hook_pattern"]
    assert torch.all(p[:, 1, 10:, :10] == 0)
    torch.testing.assert_close(p[:, 1, 10:].sum(-1), torch.ones(2, 14))
    torch.testing.assert_close(p[:, 0], cache["blocks.3.attn.hook_pattern"][:, 0])


def test_hooks_removed_and_survive_reset(model, tokens):
    ref = model(tokens)
    with ablate_heads(model, [(1, 1)]):
        a = model(tokens)
        model.reset_hooks()  # a user's reset inside the block keeps the ablation
        b = model(tokens)
        c = model.run_with_hooks(tokens, fwd_hooks=[])
    assert not torch.equal(a, ref)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(model(tokens), ref)
    assert not any(model.hook_dict[n].fwd_hooks for n in model.hook_dict)
    with pytest.raises(RuntimeError):
        with ablate_heads(model, [(1, 1)]):
            raise RuntimeError("boom")
    assert not any(model.hook_dict[n].fwd_hooks for n in model.hook_dict)


def test_ablation_applies_to_generate(model, tokens):
    with ablate_heads(model, [(3, 0), (3, 1), (3, 2), (3, 3), (1, 0)]):
        gen = model.generate(tokens[:, :16], max_new_tokens=4)
        full = model(torch.cat([tokens[:, :16], gen[:, :3]], 1))
    assert torch.equal(full[:, 15:].argmax(-1), gen)


def test_mean_over_reference_positions(model, tokens):
    m_all = mean_head_outputs(model, tokens)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"))
    torch.testing.assert_close(m_all[3], cache["blocks.3.attn.hook_z"].mean((0, 1)))
    m_last = mean_head_outputs(model, tokens, positions=[-1])
    torch.testing.assert_close(m_last[1], cache["blocks.1.attn.hook_z"][:, -1].mean(0))


def test_head_parsing_errors(model):
    assert parse_heads("3.1, 1.0", model) == parse_heads("L3H1,L1H0", model) == [(1, 0), (3, 1)]
    assert parse_heads({3: [0, 1]}, model) == [(3, 0), (3, 1)]
    for bad, msg in [("2.0", "recurrent"), ("9.0", "out of range"), ("1.7", "out of range"), ("x", "L3H1")]:
        with pytest.raises(ValueError, match=msg):
            parse_heads(bad, model)
    with pytest.raises(ValueError, match="reference"):
        with ablate_heads(model, "1.0", method="mean"):
            pass
    with pytest.raises(ValueError, match="method"):
        with ablate_heads(model, "1.0", method="uniform"):
            pass


def test_export():
    assert rh.ablate_heads is ablate_heads
