"""Linear recurrences behind the recurrent mixers, each as a naive loop and a chunked form.

Shapes: ``q, k`` (B, H, T, Dk); ``v`` (B, H, T, Dv); ``log_a`` (B, H, T) with log_a <= 0
(the per-step decay a_t = exp(log_a_t)); ``beta`` (B, H, T); state ``S`` (B, H, Dv, Dk).

Scalar-decay linear attention (Mamba-2 SSD, lightning attention)::

    S_t = a_t S_{t-1} + v_t k_t^T          o_t = S_t q_t

Gated delta rule (gated DeltaNet)::

    S_t = a_t S_{t-1} + beta_t (v_t - a_t S_{t-1} k_t) k_t^T      o_t = S_t q_t

The ``naive_*`` loops are the references (one step at a time, as in fla's ``naive.py``);
the ``chunk_*`` forms process ``chunk`` steps at once with C x C intra-chunk matrices,
so nothing of size T x T is ever built. Every function returns ``(o, final_state)``.
"""

from __future__ import annotations

import torch


def _zero_state(q, v, state):
    if state is not None:
        return state
    B, H, _, Dk = q.shape
    return q.new_zeros(B, H, v.shape[-1], Dk)


def naive_decay_linear_attention(q, k, v, log_a, state=None):
    S = _zero_state(q, v, state)  # (B, H, Dv, Dk)
    outs = []
    for t in range(q.shape[2]):
        S = log_a[:, :, t, None, None].exp() * S + v[:, :, t, :, None] * k[:, :, t, None, :]
        outs.append((S @ q[:, :, t, :, None]).squeeze(-1))  # (B, H, Dv)
    return torch.stack(outs, dim=2), S  # (B, H, T, Dv)


def _causal_decay(g: torch.Tensor) -> torch.Tensor:
    """exp(g_t - g_s) for s <= t, else 0; g (B, H, C) -> (B, H, C, C)."""
    C = g.shape[-1]
    diff = g[..., :, None] - g[..., None, :]  # (B, H, C, C)
    causal = torch.ones(C, C, dtype=torch.bool, device=g.device).tril()
    return diff.masked_fill(~causal, float("-inf")).exp()


def chunk_decay_linear_attention(q, k, v, log_a, state=None, chunk: int = 64):
    S = _zero_state(q, v, state)  # (B, H, Dv, Dk)
    outs = []
    for c0 in range(0, q.shape[2], chunk):
        qc, kc, vc = q[:, :, c0:c0 + chunk], k[:, :, c0:c0 + chunk], v[:, :, c0:c0 + chunk]
        g = log_a[:, :, c0:c0 + chunk].cumsum(-1)  # (B, H, C)
        A = (qc @ kc.transpose(-1, -2)) * _causal_decay(g)  # (B, H, C, C)
        o = A @ vc + g.exp()[..., None] * (qc @ S.transpose(-1, -2))  # (B, H, C, Dv)
        w = (g[..., -1:] - g).exp()[..., None]  # (B, H, C, 1) decay from s to chunk end
        S = g[..., -1, None, None].exp() * S + (vc * w).transpose(-1, -2) @ kc  # (B, H, Dv, Dk)
        outs.append(o)
    return torch.cat(outs, dim=2), S


def naive_gated_delta_rule(q, k, v, beta, log_a, state=None):
    S = _zero_state(q, v, state)  # (B, H, Dv, Dk)
    outs = []
    for t in range(q.shape[2]):
        S = log_a[:, :, t, None, None].exp() * S
        kt = k[:, :, t]  # (B, H, Dk)
        u = beta[:, :, t, None] * (v[:, :, t] - (S @ kt[..., None]).squeeze(-1))  # (B, H, Dv)
        S = S + u[..., None] * kt[..., None, :]
        outs.append((S @ q[:, :, t, :, None]).squeeze(-1))
    return torch.stack(outs, dim=2), S


def chunk_gated_delta_rule(q, k, v, beta, log_a, state=None, chunk: int = 64):
    """Chunked gated delta rule (WY form). Within a chunk, with g the cumulative log-decay,
    the pseudo-values U solve (I + A) U = beta * (V - exp(g) K S^T), where
    A[t, j] = beta_t exp(g_t - g_j) k_t.k_j for j < t; then
    o_t = exp(g_t) S q_t + sum_{j<=t} exp(g_t - g_j) (q_t.k_j) u_j."""
    S = _zero_state(q, v, state)  # (B, H, Dv, Dk)
    outs = []
    for c0 in range(0, q.shape[2], chunk):
        qc, kc, vc = q[:, :, c0:c0 + chunk], k[:, :, c0:c0 + chunk], v[:, :, c0:c0 + chunk]
        bc = beta[:, :, c0:c0 + chunk, None]  # (B, H, C, 1)
        g = log_a[:, :, c0:c0 + chunk].cumsum(-1)  # (B, H, C)
        C = qc.shape[2]
        decay = _causal_decay(g)  # (B, H, C, C), includes the diagonal
        strict = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)
        A = bc * (kc @ kc.transpose(-1, -2)) * decay * strict  # (B, H, C, C)
        eye = torch.eye(C, dtype=q.dtype, device=q.device)
        rhs = bc * (vc - g.exp()[..., None] * (kc @ S.transpose(-1, -2)))  # (B, H, C, Dv)
        U = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
        o = g.exp()[..., None] * (qc @ S.transpose(-1, -2)) + ((qc @ kc.transpose(-1, -2)) * decay) @ U
        w = (g[..., -1:] - g).exp()[..., None]  # (B, H, C, 1)
        S = g[..., -1, None, None].exp() * S + (U * w).transpose(-1, -2) @ kc
        outs.append(o)
    return torch.cat(outs, dim=2), S
