"""`L`: lightning / linear attention with a fixed per-head decay (MiniMax-01 style).

    o_t = sum_{s<=t} lambda_h^(t-s) (q_t . k_s) v_s,   lambda_h = exp(-2^(-8(h+1)/H))

SiLU feature maps on q, k, v; per-head RMSNorm and a sigmoid output gate.

CUDA path: with flash-linear-attention installed, bf16/fp16 inputs run through fla's
``chunk_simple_gla`` with g = log lambda_h broadcast over time -- not fla's
``chunk_lightning_attn``, whose decay depends on the layer index; otherwise the torch
chunked form (``recurrence.decay_linear_attention``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import RecurrentMixer, register_mixer


@register_mixer
class LightningMixer(RecurrentMixer):
    letter = "L"
    family = "decay"
    qk_weights = ("W_Q.weight", "W_K.weight")

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        H, D = self.add_qkv(cfg)
        self.W_gate = nn.Linear(cfg.d_model, H * D, bias=False)
        slopes = 2.0 ** (-8.0 * torch.arange(1, H + 1) / H)  # ALiBi-style slopes
        self.register_buffer("log_decay", -slopes, persistent=False)  # (H,)
        self.norm = nn.RMSNorm(D, eps=cfg.norm_eps)
        self.out_proj = nn.Linear(H * D, cfg.d_model, bias=False)

    def forward(self, x, positions, cache=None):
        B, T, _ = x.shape
        H, D = self.H, self.Dh
        q = F.silu(self.W_Q(x)).view(B, T, H, D) * D ** -0.5  # (B, T, H, D)
        k = F.silu(self.W_K(x)).view(B, T, H, D)
        v = F.silu(self.W_V(x)).view(B, T, H, D)
        log_a = self.log_decay.to(x.dtype).expand(B, T, H)  # (B, T, H)
        o = self.run(q, k, v, log_a, None, cache)  # (B, T, H, D)
        o = self.norm(o) * torch.sigmoid(self.W_gate(x).view(B, T, H, D))
        return self.out_proj(o.reshape(B, T, H * D))
