"""`D`: a gated DeltaNet mixer (Yang et al. 2024; Qwen3-Next's linear-attention layers).

    S_t = a_t S_{t-1} + beta_t (v_t - a_t S_{t-1} k_t) k_t^T,    o_t = S_t q_t

with L2-normalised SiLU queries/keys, beta_t = sigmoid(W_b x_t), a_t = exp(-exp(A_log) dt_t).
The short convolutions of the reference implementation are left out.

CUDA path: with flash-linear-attention installed, bf16/fp16 inputs run through fla's
``chunk_gated_delta_rule`` (g = log a_t, beta as above, scale 1 since q is pre-scaled);
otherwise the torch chunked WY form (``recurrence.gated_delta_rule``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import RecurrentMixer, register_mixer


@register_mixer
class GatedDeltaNetMixer(RecurrentMixer):
    letter = "D"
    family = "delta"
    uses_beta = True
    qk_weights = ("W_Q.weight", "W_K.weight")

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        H, D = self.add_qkv(cfg)
        self.W_beta = nn.Linear(cfg.d_model, H, bias=False)
        self.W_a = nn.Linear(cfg.d_model, H, bias=False)
        self.W_gate = nn.Linear(cfg.d_model, H * D, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.linspace(1.0, 16.0, H)))
        dt = torch.exp(torch.linspace(math.log(1e-3), math.log(1e-1), H))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.norm = nn.RMSNorm(D, eps=cfg.norm_eps)
        self.out_proj = nn.Linear(H * D, cfg.d_model, bias=False)

    def forward(self, x, positions, cache=None):
        B, T, _ = x.shape
        H, D = self.H, self.Dh
        q = F.normalize(F.silu(self.W_Q(x)).view(B, T, H, D), dim=-1) * D ** -0.5  # (B, T, H, D)
        k = F.normalize(F.silu(self.W_K(x)).view(B, T, H, D), dim=-1)  # (B, T, H, D)
        v = F.silu(self.W_V(x)).view(B, T, H, D)  # (B, T, H, D)
        beta = torch.sigmoid(self.W_beta(x))  # (B, T, H)
        log_a = -torch.exp(self.A_log) * F.softplus(self.W_a(x) + self.dt_bias)  # (B, T, H)
        o = self.run(q, k, v, log_a, beta, cache)  # (B, T, H, D)
        o = self.norm(o) * F.silu(self.W_gate(x).view(B, T, H, D))
        return self.out_proj(o.reshape(B, T, H * D))
