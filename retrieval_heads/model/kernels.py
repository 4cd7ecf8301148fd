"""Attention kernels: the eager reference and the fast paths.

All take ``q`` of shape (B, H, Tq, D) and ``k, v`` of shape (B, H, Tk, D) (key/value heads
already repeated for grouped-query attention) and return (B, H, Tq, D).

``window`` is the number of keys a query sees *including itself* (None = unlimited).
Query ``i`` (absolute position ``q_pos[i]``) sees key ``j`` iff
``0 <= q_pos[i] - k_pos[j] < window``.

- ``eager_attention``: materialises scores and pattern; the reference for every other path.
- ``sdpa_attention``: full causal attention through ``F.scaled_dot_product_attention``.
- ``blocked_swa``: sliding-window attention in blocks of ``window`` queries, each against
  its own and the previous block of keys, so cost grows as T·w rather than T².
- ``flex_swa`` (CUDA): FlexAttention with a block mask cached per (T, w).
"""

from __future__ import annotations

import functools
import logging
import math

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean (Tq, Tk) mask, True where the query may attend to the key."""
    diff = q_pos[:, None] - k_pos[None, :]  # (Tq, Tk)
    allowed = diff >= 0
    if window is not None:
        allowed = allowed & (diff < window)
    return allowed


def attention_scores(q, k, q_pos, k_pos, window):
    """Masked, scaled scores (B, H, Tq, Tk); masked entries are -inf (as in TransformerLens)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    mask = attention_mask(q_pos, k_pos, window)
    return scores.masked_fill(~mask, float("-inf"))


def eager_attention(q, k, v, q_pos, k_pos, window, hook_scores=None, hook_pattern=None):
    """Reference attention; runs ``hook_scores``/``hook_pattern`` (HookPoints) when given."""
    scores = attention_scores(q, k, q_pos, k_pos, window)  # (B, H, Tq, Tk)
    if hook_scores is not None:
        scores = hook_scores(scores)
    pattern = torch.softmax(scores, dim=-1)  # (B, H, Tq, Tk)
    pattern = torch.nan_to_num(pattern)  # rows with no visible key (never for causal) -> 0
    if hook_pattern is not None:
        pattern = hook_pattern(pattern)
    return pattern @ v  # (B, H, Tq, D)


def sdpa_attention(q, k, v):
    """Full causal self-attention (Tq == Tk, positions 0..T-1)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


@functools.lru_cache(maxsize=32)
def _blocked_swa_mask(nb: int, bs: int, window: int, device: torch.device) -> torch.Tensor:
    """Boolean (nb, bs, 2bs) mask of `blocked_swa`, built once per shape and reused.

    Query ``i`` of a block sits at frame index ``bs + i`` of its 2bs keys (previous block,
    then its own block) and sees frame key ``j`` iff ``0 <= bs + i - j < window``. Block 0's
    previous block is padding before position 0, so it is masked out.
    """
    qi = torch.arange(bs, device=device) + bs
    kj = torch.arange(2 * bs, device=device)
    inner = attention_mask(qi, kj, window)  # (bs, 2bs)
    first = inner & (kj >= bs)[None, :]  # (bs, 2bs)
    return torch.cat([first[None], inner[None].expand(nb - 1, bs, 2 * bs)], dim=0)  # (nb, bs, 2bs)


def blocked_swa(q, k, v, window: int):
    """Causal sliding-window self-attention in O(T·w) time and memory (Tq == Tk).

    Queries are split into blocks of ``bs = window`` positions; block ``i`` attends to key
    blocks ``i-1`` and ``i``, which hold every key within the window. Blocks are laid out
    as the head axis of a 4-D SDPA call, (B*H, nb, bs, D) against (B*H, nb, 2bs, D), so that
    one fused kernel (flash attention on CPU) runs all blocks with the cached (nb, bs, 2bs)
    mask broadcast over B*H. Exact: equals ``eager_attention``.
    """
    B, H, T, D = q.shape
    if window >= T:
        return sdpa_attention(q, k, v)
    bs = window
    nb = -(-T // bs)  # number of blocks
    pad_end = nb * bs - T
    if pad_end:  # padded keys lie in every real query's future, so they are masked anyway
        q = F.pad(q, (0, 0, 0, pad_end))
        k = F.pad(k, (0, 0, 0, pad_end))
        v = F.pad(v, (0, 0, 0, pad_end))
    qb = q.reshape(B * H, nb, bs, D)  # (B*H, nb, bs, D)
    # keys: previous block (zeros before the first) then the current block
    kp = F.pad(k, (0, 0, bs, 0)).reshape(B * H, nb + 1, bs, D)  # (B*H, nb+1, bs, D)
    vp = F.pad(v, (0, 0, bs, 0)).reshape(B * H, nb + 1, bs, D)
    kb = torch.cat([kp[:, :-1], kp[:, 1:]], dim=2)  # (B*H, nb, 2bs, D)
    vb = torch.cat([vp[:, :-1], vp[:, 1:]], dim=2)  # (B*H, nb, 2bs, D)
    mask = _blocked_swa_mask(nb, bs, window, q.device)[None]  # (1, nb, bs, 2bs)
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask)  # (B*H, nb, bs, D)
    return out.reshape(B, H, nb * bs, D)[:, :, :T]  # (B, H, T, D)


@functools.lru_cache(maxsize=32)
def _flex_block_mask(T: int, window: int | None, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    if window is None:
        def mask_mod(b, h, q_idx, kv_idx):
            return q_idx >= kv_idx
    else:
        def mask_mod(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (q_idx - kv_idx < window)
    return create_block_mask(mask_mod, None, None, T, T, device=device)


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    # one compiled kernel per (T, window, dtype): evaluation over many context lengths would
    # exceed dynamo's default recompile limit (8) and fall back to the slow unfused path
    import torch._dynamo.config as dcfg
    from torch.nn.attention.flex_attention import flex_attention

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dcfg, name):
            setattr(dcfg, name, max(getattr(dcfg, name), 64))
    return torch.compile(flex_attention, dynamic=False)


def flex_swa(q, k, v, window: int | None):
    """FlexAttention (CUDA): sliding-window or full causal with a cached block mask."""
    T = q.shape[-2]
    bm = _flex_block_mask(T, window, str(q.device))
    return _compiled_flex()(q, k, v, block_mask=bm)


@functools.lru_cache(maxsize=1)
def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


@functools.lru_cache(maxsize=1)
def flex_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except Exception:
        log.info("FlexAttention not importable; sliding-window attention uses the blocked path")
        return False
    return True


def flash_swa(q, k, v, window: int | None):
    """flash-attn (CUDA, fp16/bf16). A window of w keys is ``window_size=(w-1, 0)``."""
    from flash_attn import flash_attn_func

    ws = (-1, -1) if window is None else (window - 1, 0)
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                          causal=True, window_size=ws)  # (B, T, H, D)
    return out.transpose(1, 2)  # (B, H, T, D)


def fast_attention(q, k, v, window: int | None, backend: str = "auto"):
    """Self-attention over positions 0..T-1 on the fastest available backend."""
    T = q.shape[-2]
    if window is not None and window >= T:
        window = None
    if backend == "auto":
        if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and flash_attn_available():
            backend = "flash"
        elif q.is_cuda and window is not None and flex_available():
            backend = "flex"
        elif window is None:
            backend = "sdpa"
        else:
            backend = "blocked"
    if backend == "flash":
        return flash_swa(q, k, v, window)
    if backend == "flex":
        return flex_swa(q, k, v, window)
    if window is None:
        return sdpa_attention(q, k, v)
    if backend in ("blocked", "sdpa"):
        return blocked_swa(q, k, v, window)
    raise ValueError(f"attn_backend: unknown backend {backend!r}")
