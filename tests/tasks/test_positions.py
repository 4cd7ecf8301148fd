"""Positional encodings per layer kind are real (float32, CPU).

- NoPE: attention scores depend on content only. They do not change when every position
  id is shifted, when positions are reassigned arbitrarily, or when only the keys'
  positions move relative to the queries; permuting the tokens together with their
  positions permutes the scores (and the mask) the same way.
- RoPE: scores are invariant to a common shift of query and key positions and change
  under a relative shift (keys moved against queries).
- ``pos={"F": "nope", "S": "rope"}`` and ``rope_base`` per kind reach the right layers.

Scores come from ``hook_attn_scores`` (forward) or ``Attention.project_qk``.
"""

from __future__ import annotations

import math

import pytest
import torch

import retrieval_heads as rh
from retrieval_heads.model.attention import Attention

TOL = dict(atol=1e-5, rtol=1e-4)
T = 16


def _attn(kind="F", pos="nope", window=6, rope_base=10000.0, seed=0):
    torch.manual_seed(seed)
    cfg = rh.ModelConfig(layout=kind, d_model=32, n_heads=4, window=window, max_seq_len=4096,
                         pos={kind: pos}, rope_base={kind: rope_base})
    attn = Attention(cfg, 0)
    with torch.no_grad():  # well-conditioned, non-trivial projections
        for lin in (attn.W_Q, attn.W_K, attn.W_V):
            lin.weight.normal_(0.0, 1.0 / math.sqrt(32))
    return attn


def _x(seed=0, B=2):
    return torch.randn(B, T, 32, generator=torch.Generator().manual_seed(seed))


def _scores_hooked(attn, x, positions):
    """Run Attention.forward and capture hook_attn_scores [batch, head, q, k]."""
    got = {}
    attn.hook_attn_scores.add_hook(lambda s, hook: got.setdefault("s", s.detach().clone()))
    try:
        attn(x, positions)
    finally:
        attn.hook_attn_scores.remove_hooks()
    return got["s"]


def _scores_qk(attn, x, q_pos, k_pos):
    """Unmasked scores with separate query and key positions (relative shifts)."""
    q, _ = attn.project_qk(x, q_pos)  # (B, T, H, D)
    _, k = attn.project_qk(x, k_pos)  # (B, T, Hkv, D)
    return torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])


POS_KINDS = [pytest.param("F", id="F"), pytest.param("S", id="S")]


@pytest.mark.parametrize("kind", POS_KINDS)
@pytest.mark.parametrize("pos", ["nope", "rope"])
@pytest.mark.parametrize("shift", [pytest.param(1, id="shift1"), pytest.param(37, id="shift37"),
                                   pytest.param(1000, id="shift1000")])
def test_common_shift_leaves_scores_unchanged(kind, pos, shift):
    attn = _attn(kind, pos)
    x = _x()
    base = _scores_hooked(attn, x, torch.arange(T))
    moved = _scores_hooked(attn, x, torch.arange(T) + shift)
    # RoPE with large positions loses a few float32 bits in the angles
    tol = TOL if pos == "nope" or shift < 100 else dict(atol=5e-4, rtol=1e-3)
    torch.testing.assert_close(moved, base, **tol)


@pytest.mark.parametrize("kind", POS_KINDS)
@pytest.mark.parametrize("delta", [pytest.param(1, id="delta1"), pytest.param(5, id="delta5")])
def test_relative_shift_changes_rope_not_nope(kind, delta):
    x = _x()
    pos = torch.arange(T)
    nope, rope = _attn(kind, "nope"), _attn(kind, "rope")
    torch.testing.assert_close(_scores_qk(nope, x, pos, pos + delta), _scores_qk(nope, x, pos, pos), **TOL)
    diff = (_scores_qk(rope, x, pos, pos + delta) - _scores_qk(rope, x, pos, pos)).abs().max()
    assert diff > 1e-2, f"RoPE scores barely moved under a relative shift ({diff:.2e})"
    # and a common shift of both leaves RoPE scores alone
    torch.testing.assert_close(_scores_qk(rope, x, pos + delta, pos + delta),
                               _scores_qk(rope, x, pos, pos), **TOL)


def test_nope_ignores_arbitrary_position_ids():
    attn = _attn("F", "nope")
    x = _x()
    perm = torch.randperm(T, generator=torch.Generator().manual_seed(3))
    q0, k0 = attn.project_qk(x, torch.arange(T))
    q1, k1 = attn.project_qk(x, perm * 7 + 11)
    torch.testing.assert_close(q1, q0, atol=0, rtol=0)
    torch.testing.assert_close(k1, k0, atol=0, rtol=0)
    rope = _attn("F", "rope")
    assert not torch.allclose(rope.project_qk(x, perm)[1], rope.project_qk(x, torch.arange(T))[1])


@pytest.mark.parametrize("kind", POS_KINDS)
@pytest.mark.parametrize("pos", ["nope", "rope"])
def test_permuting_tokens_with_their_positions_permutes_scores(kind, pos):
    """Keys (and queries) permuted together with their position ids: every score, and the
    mask, moves with them. For NoPE this holds because scores are content-only; for RoPE
    because the angle travels with the token. Non-consecutive positions use the eager path."""
    attn = _attn(kind, pos)
    x = _x()
    positions = torch.arange(T)
    perm = torch.randperm(T, generator=torch.Generator().manual_seed(1))
    base = _scores_hooked(attn, x, positions)
    permuted = _scores_hooked(attn, x[:, perm], positions[perm])
    torch.testing.assert_close(permuted, base[:, :, perm][:, :, :, perm], **TOL)
    # the layer output moves with the tokens too (no position leaks in except through ids)
    torch.testing.assert_close(attn(x[:, perm], positions[perm]), attn(x, positions)[:, perm], **TOL)


def test_nope_key_content_at_any_position_scores_the_same():
    """NoPE: the score of a query with a given key content does not depend on where the key is."""
    attn = _attn("F", "nope")
    x = _x(B=1)
    needle = x[:, 3:4].clone()
    scores = []
    for where in (0, 5, 12):
        y = x.clone()
        y[:, where] = needle[:, 0]
        s = _scores_hooked(attn, y, torch.arange(T))  # (1, H, T, T)
        scores.append(s[0, :, T - 1, where])
    torch.testing.assert_close(scores[1], scores[0], **TOL)
    torch.testing.assert_close(scores[2], scores[0], **TOL)


def test_pos_and_rope_base_are_per_layer_kind():
    cfg = rh.ModelConfig(layout="SSFF", d_model=32, n_heads=4, window=4,
                         pos={"F": "nope", "S": "rope"}, rope_base={"S": 500.0})
    model = rh.HybridLM(cfg)
    kinds = [(b.attn.use_rope, b.attn.rope_base) for b in model.blocks]
    assert kinds == [(True, 500.0), (True, 500.0), (False, 10000.0), (False, 10000.0)]
    # a different base gives different RoPE scores
    x, pos = _x(), torch.arange(T)
    a, b = _attn("S", "rope", rope_base=10000.0), _attn("S", "rope", rope_base=100.0)
    assert not torch.allclose(_scores_qk(a, x, pos, pos), _scores_qk(b, x, pos, pos), atol=1e-3)
