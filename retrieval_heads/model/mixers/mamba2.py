"""`M`: a Mamba-2-style selective state-space mixer (SSD form, one B/C group, no short conv).

    h_t = exp(dt_t A_h) h_{t-1} + (dt_t B_t) x_t^T,      y_t = h_t C_t + D_h x_t

i.e. scalar-decay linear attention with q = C_t, k = dt_t B_t, v = x_t (per head).
The depthwise causal convolution of Mamba is left out so that the mixer's effective
attention is exactly its token-to-token weights.

CUDA path: with flash-linear-attention installed, bf16/fp16 inputs run through fla's
``chunk_simple_gla`` (g = log a_t per head and step, q = C_t, k = dt_t B_t, scale 1), the
same SSD recurrence; otherwise the torch chunked form (``recurrence.decay_linear_attention``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import RecurrentMixer, register_mixer


@register_mixer
class Mamba2Mixer(RecurrentMixer):
    letter = "M"
    family = "decay"
    qk_weights = None  # B_t, C_t are shared by all heads: no per-head Q/K weights

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        H, P, N = cfg.n_heads, cfg.d_head, cfg.d_state
        self.H, self.P, self.N = H, P, N
        self.in_proj = nn.Linear(cfg.d_model, 2 * H * P + 2 * N + H, bias=False)  # z, x, B, C, dt
        self.A_log = nn.Parameter(torch.log(torch.linspace(1.0, 16.0, H)))
        dt = torch.exp(torch.linspace(math.log(1e-3), math.log(1e-1), H))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.D = nn.Parameter(torch.ones(H))
        self.norm = nn.RMSNorm(H * P, eps=cfg.norm_eps)
        self.out_proj = nn.Linear(H * P, cfg.d_model, bias=False)

    def forward(self, x, positions, cache=None):
        Bsz, T, _ = x.shape
        H, P, N = self.H, self.P, self.N
        z, xs, Bm, Cm, dt = self.in_proj(x).split([H * P, H * P, N, N, H], dim=-1)
        dt = F.softplus(dt + self.dt_bias)  # (B, T, H)
        log_a = -torch.exp(self.A_log) * dt  # (B, T, H)
        v = xs.view(Bsz, T, H, P)  # (B, T, H, P)
        q = Cm[:, :, None, :].expand(Bsz, T, H, N)  # (B, T, H, N)
        k = Bm[:, :, None, :] * dt[..., None]  # (B, T, H, N)
        y = self.run(q, k, v, log_a, None, cache) + self.D[:, None] * v  # (B, T, H, P)
        y = self.norm(y.reshape(Bsz, T, H * P) * F.silu(z))  # (B, T, H*P)
        return self.out_proj(y)
