"""Causal self-attention for full (`F`) and sliding-window (`S`) layers, RoPE or NoPE.

Hooks (TransformerLens names and shapes)::

    hook_q, hook_rot_q        [batch, pos, head, d_head]
    hook_k, hook_v, hook_rot_k [batch, pos, kv_head, d_head]
    hook_attn_scores          [batch, head, query_pos, key_pos]   (-inf where masked)
    hook_pattern              [batch, head, query_pos, key_pos]
    hook_z                    [batch, pos, head, d_head]

Fast unless you look: the eager path (which materialises scores and pattern) is taken only
when a hook is attached to ``hook_attn_scores`` or ``hook_pattern``, when ``force_eager`` is
set (e.g. for nnsight, which does not use torch hooks), or when the backend is ``eager``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformer_lens.hook_points import HookPoint

from ..config import ModelConfig
from . import kernels


def rope_angles(positions: torch.Tensor, d_head: int, base: float):
    """cos, sin of shape (T, d_head/2) for integer positions (T,)."""
    inv_freq = base ** (-torch.arange(0, d_head, 2, device=positions.device, dtype=torch.float32) / d_head)
    ang = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # (T, d_head/2)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on x (B, T, H, D) with cos/sin (T, D/2)."""
    d2 = x.shape[-1] // 2
    x1, x2 = x[..., :d2], x[..., d2:]  # (B, T, H, D/2) each
    c, s = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)  # (1, T, 1, D/2)
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)  # (B, T, H, D)


class Attention(nn.Module):
    # declarations read like a mixer's (see ``mixers/base.py``): the F and S layers
    qk_weights = ("W_Q.weight", "W_K.weight")  # rows [n_heads (n_kv_heads) * d_head, d_model]
    hooks = ("q", "k", "v", "rot_q", "rot_k", "attn_scores", "pattern", "z", "result")
    submodule = "attn"  # blocks.{l}.attn

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self.kind = cfg.layer_kind(layer)
        self.n_heads, self.n_kv_heads, self.d_head = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        self.W_Q = nn.Linear(cfg.d_model, cfg.n_heads * cfg.d_head, bias=False)
        self.W_K = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.d_head, bias=False)
        self.W_V = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.d_head, bias=False)
        self.W_O = nn.Linear(cfg.n_heads * cfg.d_head, cfg.d_model, bias=False)
        self.use_rope = cfg.pos[self.kind] == "rope"
        self.rope_base = cfg.rope_base[self.kind]
        # keys a query sees including itself; None = unlimited. Interventions may change it.
        self.window: int | None = cfg.layer_window(layer)
        self.backend = cfg.attn_backend
        self.force_eager = False
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_v = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_rot_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_rot_k = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, query_pos, key_pos]
        self.hook_pattern = HookPoint()  # [batch, head, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        # per-head outputs z_h W_O^h, computed only while hooked (run_with_cache caches them, so
        # TransformerLens's ActivationCache.stack_head_results / decompose_resid find them)
        self.hook_result = HookPoint()  # [batch, pos, head, d_model]

    def wants_pattern(self) -> bool:
        return (self.force_eager or self.backend == "eager"
                or self.hook_pattern.has_hooks(dir="fwd") or self.hook_attn_scores.has_hooks(dir="fwd")
                or self.hook_pattern.has_hooks(dir="bwd") or self.hook_attn_scores.has_hooks(dir="bwd"))

    def repeat_kv(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Hkv, T, D) -> (B, H, T, D) for grouped-query attention."""
        rep = self.n_heads // self.n_kv_heads
        return x if rep == 1 else x.repeat_interleave(rep, dim=1)

    def project_qk(self, x: torch.Tensor, positions: torch.Tensor):
        """Rotated queries and keys, (B, T, H, D) and (B, T, Hkv, D), without running hooks."""
        B, T, _ = x.shape
        q = self.W_Q(x).view(B, T, self.n_heads, self.d_head)
        k = self.W_K(x).view(B, T, self.n_kv_heads, self.d_head)
        if self.use_rope:
            cos, sin = rope_angles(positions, self.d_head, self.rope_base)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k

    @staticmethod
    def _append_to_cache(cache: dict, k, v, positions):
        """Append keys/values to a decode cache whose buffers grow by doubling, so a decode
        step costs O(1) amortised copies instead of re-concatenating the whole cache."""
        n, T = cache.get("n", 0), k.shape[1]
        if "k_buf" not in cache or n + T > cache["k_buf"].shape[1]:
            cap = max(2 * (n + T), 64)
            kb = k.new_empty(k.shape[0], cap, *k.shape[2:])  # (B, cap, Hkv, D)
            vb = v.new_empty(v.shape[0], cap, *v.shape[2:])
            pb = positions.new_empty(cap)
            if n:
                kb[:, :n], vb[:, :n], pb[:n] = cache["k_buf"][:, :n], cache["v_buf"][:, :n], cache["pos_buf"][:n]
            cache["k_buf"], cache["v_buf"], cache["pos_buf"] = kb, vb, pb
        cache["k_buf"][:, n:n + T] = k
        cache["v_buf"][:, n:n + T] = v
        cache["pos_buf"][n:n + T] = positions
        cache["n"] = n + T
        return cache["k_buf"][:, :n + T], cache["v_buf"][:, :n + T], cache["pos_buf"][:n + T]

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        B, T, _ = x.shape  # x: (B, T, d_model), positions: (T,)
        q = self.hook_q(self.W_Q(x).view(B, T, self.n_heads, self.d_head))  # (B, T, H, D)
        k = self.hook_k(self.W_K(x).view(B, T, self.n_kv_heads, self.d_head))  # (B, T, Hkv, D)
        v = self.hook_v(self.W_V(x).view(B, T, self.n_kv_heads, self.d_head))  # (B, T, Hkv, D)
        if self.use_rope:
            cos, sin = rope_angles(positions, self.d_head, self.rope_base)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q = self.hook_rot_q(q)
        k = self.hook_rot_k(k)
        q_pos = positions
        if cache is not None:
            k, v, k_pos = self._append_to_cache(cache, k, v, positions)  # (B, Tk, Hkv, D)
        else:
            k_pos = positions
        qh = q.transpose(1, 2)  # (B, H, T, D)
        kh = self.repeat_kv(k.transpose(1, 2))  # (B, H, Tk, D)
        vh = self.repeat_kv(v.transpose(1, 2))  # (B, H, Tk, D)
        # the fast kernels assume self-attention over consecutive positions
        fast_ok = kh.shape[2] == T and (T == 1 or bool((positions.diff() == 1).all()))
        if self.wants_pattern() or not fast_ok:
            z = kernels.eager_attention(qh, kh, vh, q_pos, k_pos, self.window,
                                        self.hook_attn_scores, self.hook_pattern)
        else:
            z = kernels.fast_attention(qh, kh, vh, self.window, self.backend)
        z = self.hook_z(z.transpose(1, 2))  # (B, T, H, D)
        if self.hook_result._forward_hooks:
            w = self.W_O.weight.view(-1, self.n_heads, self.d_head)  # (d_model, H, D)
            return self.hook_result(torch.einsum("bthd,mhd->bthm", z, w)).sum(2)  # (B, T, d_model)
        return self.W_O(z.reshape(B, T, self.n_heads * self.d_head))  # (B, T, d_model)

    @property
    def W_O_heads(self) -> torch.Tensor:
        """W_O as TransformerLens lays it out: [n_heads, d_head, d_model]."""
        return self.W_O.weight.T.reshape(self.n_heads, self.d_head, -1)
