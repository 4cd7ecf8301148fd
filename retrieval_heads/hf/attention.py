"""Our seat inside a Hugging Face model's attention: one function registered with
``transformers``' ``AttentionInterface``.

Every modern HF attention module computes q, k, v (after RoPE, q/k norms, Llama 4's query
temperature), then calls ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation](module, q, k,
v, attention_mask, scaling=..., sliding_window=..., softcap=..., ...)``. ``HFModel`` points
``_attn_implementation`` at ``rh_<base>`` (``rh_sdpa``, ``rh_eager``, ``rh_flash_attention_2``),
registered here; it forwards to the base kernel, so the model runs at full speed, and hands
q, k, v and the mask to the owning ``HFModel`` (``module._rh``), which fires the hook points
and computes attention rows at a few query positions in O(T) memory.

``attention_rows`` is the row math, shared with the "look" path that materialises the whole
pattern (``eager_attention``): scores ``q.k * scaling``, optional tanh soft-cap, the mask (HF's
own 4D mask when given, else causal + ``sliding_window`` / chunk from the layer), optional
attention sinks, softmax in float32.
"""

from __future__ import annotations

import importlib
import sys

import torch

PREFIX = "rh_"
_REGISTERED: set[str] = set()


def base_attention(name: str, module):
    """The kernel behind implementation ``name`` for ``module`` (eager: the model's own)."""
    if name == "eager":
        mod = sys.modules.get(type(module).__module__) or importlib.import_module(type(module).__module__)
        fn = getattr(mod, "eager_attention_forward", None)
        if fn is None:
            from transformers.models.llama.modeling_llama import eager_attention_forward as fn
        return fn
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[name]


def register(base: str) -> str:
    """Register ``rh_<base>`` (attention function and mask function) and return its name."""
    name = PREFIX + base
    if name in _REGISTERED:
        return name
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    def forward(module, query, key, value, attention_mask, **kwargs):
        state = module.__dict__.get("_rh")
        if state is None:  # a module no HFModel owns: behave exactly like the base kernel
            return base_attention(base, module)(module, query, key, value, attention_mask, **kwargs)
        return state.owner._attend(state.layer, module, query, key, value, attention_mask, base, kwargs)

    AttentionInterface.register(name, forward)
    if base in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[base])
    _REGISTERED.add(name)
    return name


def repeat_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, Hkv, T, D) -> (B, n_heads, T, D) for grouped-query attention."""
    B, Hkv, T, D = x.shape
    if Hkv == n_heads:
        return x
    return x[:, :, None].expand(B, Hkv, n_heads // Hkv, T, D).reshape(B, n_heads, T, D)


def allowed_keys(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None, chunk: int | None) -> torch.Tensor:
    """Boolean mask (..., nq, Tk) of keys each query may see: causal, within ``window`` keys
    (itself included) and in the same ``chunk``. q_pos (..., nq), k_pos (Tk,) absolute."""
    q = q_pos[..., :, None]
    k = k_pos
    ok = k <= q
    if window:
        ok = ok & (q - k < window)
    if chunk:
        ok = ok & (torch.div(q, chunk, rounding_mode="floor") == torch.div(k, chunk, rounding_mode="floor"))
    return ok


def masked_scores(module, q: torch.Tensor, k: torch.Tensor, mask_rows: torch.Tensor | None,
                  q_pos: torch.Tensor, k_pos: torch.Tensor, kwargs: dict, chunk: int | None) -> torch.Tensor:
    """Pre-softmax scores (B, H, nq, Tk), float32, with -inf where a key is masked.

    q (B, H, nq, D) at absolute positions q_pos (B, nq); k (B, Hkv, Tk, D) at k_pos (Tk,);
    mask_rows: HF's mask restricted to these query rows, (B, 1|H, nq, Tk) bool or additive."""
    B, H, nq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    scaling = kwargs.get("scaling")
    if scaling is None:
        scaling = getattr(module, "scaling", D ** -0.5)
    # grouped-query attention without repeating k: head h reads kv head h // (H // Hkv)
    qg = q.float().reshape(B, Hkv, (H // Hkv) * nq, D)  # (B, Hkv, g*nq, D)
    s = torch.matmul(qg, k.float().transpose(-1, -2)).view(B, H, nq, Tk) * scaling  # (B, H, nq, Tk)
    cap = kwargs.get("softcap")
    if cap:
        s = torch.tanh(s / cap) * cap
    if mask_rows is not None:
        if mask_rows.dtype == torch.bool:
            s = s.masked_fill(~mask_rows, float("-inf"))
        else:
            s = s + mask_rows.float()
            s = s.masked_fill(mask_rows <= torch.finfo(mask_rows.dtype).min / 2, float("-inf"))
    else:
        window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
        ok = allowed_keys(q_pos.to(s.device), k_pos.to(s.device), window, chunk)  # (B, nq, Tk)
        s = s.masked_fill(~ok[:, None], float("-inf"))
    return s


def softmax_rows(module, s: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """Softmax over keys in float32; attention sinks (``s_aux`` / ``module.sinks``) take their share."""
    sinks = kwargs.get("s_aux", getattr(module, "sinks", None))
    if sinks is not None and isinstance(sinks, torch.Tensor):
        col = sinks.float().reshape(1, -1, 1, 1).expand(s.shape[0], -1, s.shape[2], 1)
        p = torch.softmax(torch.cat([s, col], dim=-1), dim=-1)[..., :-1]
    else:
        p = torch.softmax(s, dim=-1)
    return torch.nan_to_num(p, nan=0.0)  # a fully masked row stays zero


def mask_rows_of(attention_mask, rows: torch.Tensor | None, B: int, Tk: int) -> torch.Tensor | None:
    """HF's 4D mask (B|1, 1|H, Tq, >=Tk) at local query rows (B, nq) -> (B, 1|H, nq, Tk);
    all rows when ``rows`` is None; None when HF passed no 4D mask (causal fast path, flash)."""
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 4:
        return None
    m = attention_mask[..., :Tk].expand(B, -1, -1, -1)
    if rows is None:
        return m
    idx = rows.to(m.device)[:, None, :, None].expand(B, m.shape[1], rows.shape[1], Tk)
    return m.gather(2, idx)


def attention_rows(module, q: torch.Tensor, k: torch.Tensor, attention_mask, local_rows: torch.Tensor,
                   q_pos: torch.Tensor, k_pos: torch.Tensor, kwargs: dict, chunk: int | None) -> torch.Tensor:
    """Softmax rows (B, H, nq, Tk) for the queries at ``local_rows`` (B, nq) of q (B, H, Tq, D)."""
    B, H, Tq, D = q.shape
    qs = q.gather(2, local_rows.to(q.device)[:, None, :, None].expand(B, H, local_rows.shape[1], D))
    s = masked_scores(module, qs, k, mask_rows_of(attention_mask, local_rows, B, k.shape[2]), q_pos, k_pos,
                      kwargs, chunk)
    return softmax_rows(module, s, kwargs)
