"""Shared machinery of the recurrent mixers (`M`, `D`, `L`).

Every mixer turns its input into queries, keys, values, a per-step log-decay and (for the
delta rule) a write strength, runs a linear recurrence from ``..recurrence``, then gates,
normalises and projects the result. Hooks (all ``blocks.{l}.mixer.hook_*``)::

    hook_q, hook_k   [batch, pos, head, d_key]
    hook_v           [batch, pos, head, d_value]
    hook_decay       [batch, pos, head]        log a_t (<= 0)
    hook_beta        [batch, pos, head]        delta-rule write strength (D only)
    hook_out         [batch, pos, head, d_value]  recurrence output (like attention's hook_z)

Because the output is linear in the values with coefficients that do not depend on them,
``o_t = sum_s W[t, s] v_s`` per head: ``W`` is the mixer's *effective attention*.
``effective_attention`` computes rows of ``W`` for chosen query positions without ever
building the T x T matrix (one backward pass through the chunked recurrence).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformer_lens.hook_points import HookPoint

from .. import recurrence


class RecurrentMixer(nn.Module):
    uses_beta = False

    def __init__(self, cfg, layer: int):
        super().__init__()
        self.cfg, self.layer, self.kind = cfg, layer, cfg.layer_kind(layer)
        self.chunk_size = cfg.chunk_size
        self.use_naive = False  # True = step-by-step reference loop (tests)
        # receptive-field limit at inference (interventions): None = unlimited
        self.window: int | None = None
        self.hook_q = HookPoint()  # [batch, pos, head, d_key]
        self.hook_k = HookPoint()  # [batch, pos, head, d_key]
        self.hook_v = HookPoint()  # [batch, pos, head, d_value]
        self.hook_decay = HookPoint()  # [batch, pos, head]
        self.hook_beta = HookPoint()  # [batch, pos, head]
        self.hook_out = HookPoint()  # [batch, pos, head, d_value]

    def recur(self, q, k, v, log_a, beta=None, state=None):
        """q, k, v (B, H, T, D); log_a, beta (B, H, T) -> o (B, H, T, Dv), final state."""
        if self.uses_beta:
            fn = recurrence.naive_gated_delta_rule if self.use_naive else recurrence.chunk_gated_delta_rule
            args = (q, k, v, beta, log_a, state)
        else:
            fn = recurrence.naive_decay_linear_attention if self.use_naive else recurrence.chunk_decay_linear_attention
            args = (q, k, v, log_a, state)
        if self.use_naive:
            return fn(*args)
        return fn(*args, chunk=self.chunk_size)

    def run(self, q, k, v, log_a, beta, cache: dict | None) -> torch.Tensor:
        """Hook the inputs, run the recurrence (continuing ``cache``), hook and return (B, T, H, Dv)."""
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        log_a = self.hook_decay(log_a)
        if beta is not None:
            beta = self.hook_beta(beta)
        T = lambda x: None if x is None else x.transpose(1, 2)  # (B, T, H, ...) -> (B, H, T, ...)
        if self.window is not None:
            o = self._windowed(T(q), T(k), T(v), T(log_a), T(beta))
            state = None
        else:
            o, state = self.recur(T(q), T(k), T(v), T(log_a), T(beta),
                                  None if cache is None else cache.get("state"))
        if cache is not None:
            if self.window is not None:
                raise ValueError("a receptive-field window on a recurrent layer works on full "
                                 "sequences only, not with a decode cache")
            cache["state"] = state
        return self.hook_out(o.transpose(1, 2))  # (B, T, H, Dv)

    def _windowed(self, q, k, v, log_a, beta):
        """Recurrence whose state is reset so that position t sees only the last `window`
        tokens: computed as the recurrence restarted at t - window + 1 for each t.
        O(T * window) work; used by receptive-field interventions only."""
        B, H, T, _ = q.shape
        w = self.window
        outs = []
        for t in range(T):
            s = max(0, t - w + 1)
            args = [x[:, :, s:t + 1] for x in (q, k, v)]
            if self.uses_beta:
                o, _ = self.recur(*args, log_a[:, :, s:t + 1], beta[:, :, s:t + 1])
            else:
                o, _ = self.recur(*args, log_a[:, :, s:t + 1])
            outs.append(o[:, :, -1])
        return torch.stack(outs, dim=2)  # (B, H, T, Dv)

    @torch.no_grad()
    def effective_attention(self, q, k, log_a, beta, query_idx, max_rows: int = 64) -> torch.Tensor:
        """Rows of the effective attention ``W`` at ``query_idx`` (list of positions).

        Takes the hooked tensors (``hook_q``, ``hook_k``: [B, T, H, Dk]; ``hook_decay``,
        ``hook_beta``: [B, T, H]) and returns (B, H, len(query_idx), T). Zero above the diagonal.
        Trick: with zero values of width n, d o[t_i, channel i] / d v[s, channel i] = W[t_i, s],
        so one backward pass yields n rows.
        """
        T = lambda x: None if x is None else x.transpose(1, 2).detach()
        q, k, log_a, beta = T(q), T(k), T(log_a), T(beta)
        B, H, L, _ = q.shape
        idx = torch.as_tensor(list(query_idx), dtype=torch.long)
        rows = []
        with torch.enable_grad():
            for i0 in range(0, len(idx), max_rows):
                part = idx[i0:i0 + max_rows]
                n = len(part)
                v0 = q.new_zeros(B, H, L, n, requires_grad=True)  # (B, H, T, n)
                o, _ = self.recur(q, k, v0, log_a, beta)  # (B, H, T, n)
                sel = o[:, :, part, torch.arange(n)]  # (B, H, n)
                (g,) = torch.autograd.grad(sel.sum(), v0)  # (B, H, T, n)
                rows.append(g.transpose(-1, -2))  # (B, H, n, T)
        return torch.cat(rows, dim=2)
