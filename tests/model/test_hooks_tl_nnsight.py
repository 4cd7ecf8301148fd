"""TransformerLens and nnsight both work on `HybridLM` (float32, CPU).

- ``run_with_cache`` / ``run_with_hooks`` / ``ActivationCache(cache, model)["pattern", l]``.
- Hook names follow TransformerLens; ``names_filter=lambda n: n.endswith("hook_pattern")``
  selects exactly the attention layers (F, S), never a recurrent one.
- Zeroing one head in ``blocks.{l}.attn.hook_z`` with a TL hook and with nnsight
  (``NNsight(model).trace``) gives identical logits (exact equality: same arithmetic).
- Looking at the pattern does not change the output (eager path == fast path).
"""

from __future__ import annotations

import pytest
import torch
from nnsight import NNsight
from transformer_lens import ActivationCache, HookedRootModule

import retrieval_heads as rh
from retrieval_heads.config import ATTENTION_KINDS, RECURRENT_KINDS
from retrieval_heads.model import token_mixer_class

LAYOUT = "SF" + "".join(RECURRENT_KINDS) + "S"  # "SFMDLS": every registered mixer
ATTN_LAYERS = [l for l, c in enumerate(LAYOUT) if c in ATTENTION_KINDS]  # [0, 1, 5]
T = 18


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = rh.ModelConfig(layout=LAYOUT, d_model=32, n_heads=4, window=5, vocab_size=64,
                         max_seq_len=64, chunk_size=8)
    return rh.HybridLM(cfg).eval()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 64, (2, T), generator=torch.Generator().manual_seed(0))


def test_is_a_hooked_root_module_with_tl_hook_names(model):
    assert isinstance(model, HookedRootModule)
    names = set(model.hook_dict)
    assert "hook_embed" in names
    for l, kind in enumerate(LAYOUT):
        for h in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_mlp_out"):
            assert f"blocks.{l}.{h}" in names
        declared = token_mixer_class(kind).hooks
        if kind in ATTENTION_KINDS:
            assert f"blocks.{l}.hook_attn_out" in names
            assert set(declared) >= {"q", "k", "v", "rot_q", "rot_k", "attn_scores", "pattern", "z"}
            for h in declared:
                assert f"blocks.{l}.attn.hook_{h}" in names
        else:
            assert f"blocks.{l}.hook_mixer_out" in names
            assert not any(n.startswith(f"blocks.{l}.attn.") for n in names)
            assert set(declared) >= {"q", "k", "v", "decay", "out"}
            for h in declared:
                assert f"blocks.{l}.mixer.hook_{h}" in names


def test_recurrent_mixers_fire_exactly_their_declared_hooks(model, tokens):
    _, cache = model.run_with_cache(tokens)
    for l, kind in enumerate(LAYOUT):
        if kind in RECURRENT_KINDS:
            fired = {n.split(".hook_", 1)[1] for n in cache if n.startswith(f"blocks.{l}.mixer.")}
            assert fired == set(token_mixer_class(kind).hooks), kind


def test_names_filter_on_pattern_selects_exactly_attention_layers(model, tokens):
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    assert sorted(cache) == sorted(f"blocks.{l}.attn.hook_pattern" for l in ATTN_LAYERS)
    assert model.cfg.attention_layers == ATTN_LAYERS


def test_run_with_cache_and_activation_cache(model, tokens):
    logits, cache_dict = model.run_with_cache(tokens)
    torch.testing.assert_close(logits, model(tokens), atol=2e-5, rtol=1e-4)  # looking is free
    cache = ActivationCache(cache_dict, model)
    for l in ATTN_LAYERS:
        pat = cache["pattern", l]
        assert pat.shape == (2, 4, T, T)
        assert torch.equal(pat, cache_dict[f"blocks.{l}.attn.hook_pattern"])
        assert cache["z", l].shape == (2, T, 4, 8)
        assert cache["q", l].shape == (2, T, 4, 8)
    assert cache["resid_post", len(LAYOUT) - 1].shape == (2, T, 32)
    assert cache["hook_embed"].shape == (2, T, 32)
    # z for a layer is what its output projection reads
    l = 1
    attn = model.blocks[l].attn
    out = attn.W_O(cache["z", l].reshape(2, T, 32))
    torch.testing.assert_close(out, cache[f"blocks.{l}.hook_attn_out"], atol=1e-6, rtol=1e-5)


def test_run_with_hooks_edits_take_effect_and_are_removed(model, tokens):
    clean = model(tokens)
    zeroed = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_attn_out", lambda x, hook: x * 0)])
    assert not torch.allclose(zeroed, clean)
    torch.testing.assert_close(model(tokens), clean, atol=0, rtol=0)  # hooks gone afterwards
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())


def test_pattern_edit_through_hook_changes_output(model, tokens):
    """Editing hook_pattern takes effect (the eager path uses the hooked pattern)."""
    def uniform_causal(p, hook):
        mask = (p > 0).float()
        return mask / mask.sum(-1, keepdim=True)

    clean = model(tokens)
    edited = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_pattern", uniform_causal)])
    assert not torch.allclose(edited, clean, atol=1e-4)


@pytest.mark.parametrize("layer,head", [pytest.param(0, 2, id="S-layer0-head2"),
                                        pytest.param(1, 0, id="F-layer1-head0"),
                                        pytest.param(5, 3, id="S-layer5-head3")])
def test_tl_hook_ablation_equals_nnsight_ablation(model, tokens, layer, head):
    def zero_head(z, hook):  # z: [batch, pos, head, d_head]
        z = z.clone()
        z[:, :, head] = 0.0
        return z

    tl_logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero_head)])

    nn_model = NNsight(model)
    with nn_model.trace(tokens):
        nn_model.blocks[layer].attn.hook_z.output[:, :, head] = 0
        nn_logits = nn_model.output.save()

    clean = model(tokens)
    assert not torch.allclose(tl_logits, clean), "ablation had no effect; test would be vacuous"
    assert torch.equal(nn_logits, tl_logits)


def test_nnsight_reads_pattern_with_force_eager(model, tokens):
    """nnsight does not use torch hooks, so the fast path would skip hook_pattern:
    ``set_force_eager(True)`` makes it run; then nnsight sees the TL pattern."""
    _, cache = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_pattern")
    nn_model = NNsight(model)
    model.set_force_eager(True)
    try:
        with nn_model.trace(tokens):
            pat = nn_model.blocks[1].attn.hook_pattern.output.save()
    finally:
        model.set_force_eager(False)
    # layer 0 ran eager here but fast under run_with_cache: equal up to float32 rounding
    torch.testing.assert_close(pat, cache["blocks.1.attn.hook_pattern"], atol=1e-6, rtol=1e-5)
    assert not any(b.attn.force_eager for b in model.blocks if hasattr(b, "attn"))


def test_nnsight_reads_recurrent_mixer_hooks(model, tokens):
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.startswith("blocks.3.mixer."))
    nn_model = NNsight(model)
    with nn_model.trace(tokens):
        out = nn_model.blocks[3].mixer.hook_out.output.save()
    assert torch.equal(out, cache["blocks.3.mixer.hook_out"])
    assert "blocks.3.mixer.hook_beta" in cache  # D mixer has a write strength
