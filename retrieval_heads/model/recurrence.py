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

``decay_linear_attention`` and ``gated_delta_rule`` pick the implementation (the mixers
call these): on CUDA, flash-linear-attention's chunked Triton kernels (``fla_*`` below)
when ``fla`` is installed, else the torch chunked forms. CPU tensors always take the torch
forms, and ``fla`` is never imported for them. ``backend`` is ``ModelConfig.recurrent_backend``:

- ``"auto"``: fla for CUDA inputs in bf16/fp16 (or under CUDA autocast), the torch form
  otherwise; float32 stays on the torch form, which is exact fp32 (fla's fp32 matmuls run
  in TF32), like ``kernels.fast_attention`` keeps flash-attn for half precision. When fla
  would be used but is not installed, one log line says so, once per process.
- ``"torch"``: always the torch chunked form.
- ``"fla"``: fla for every CUDA input, float32 included; an error if fla is missing.

Decode steps (T = 1) and heads narrower than 16 or wider than 256 channels always take
the torch form. So does anything that needs gradients where fla's gated chunk backward
refuses to run: Hopper GPUs (H100, H200) with Triton >= 3.4 and < 3.7.1 (fla issue #640;
fla 0.5 raises there) -- training then uses the torch form (one log line), while
inference and decoding still use fla. The fla paths use the same decay parametrisation (log a_t, natural log),
pass ``scale=1`` (queries arrive already scaled) and translate layouts: fla takes
(B, T, H, D) inputs and keeps the state as (B, H, Dk, Dv), the transpose of ours.
"""

from __future__ import annotations

import functools
import logging
import re

import torch

log = logging.getLogger(__name__)


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


# ---- backend choice and the optional CUDA kernels (flash-linear-attention) --------------

FLA_MISSING_MESSAGE = ("flash-linear-attention (fla) is not installed; the recurrent mixers (M, D, L) "
                       "use the torch chunked form on CUDA (pip install fla-core for the fused kernels)")
FLA_BACKWARD_MESSAGE = ("flash-linear-attention's gated backward does not run on Hopper GPUs with "
                        "Triton >= 3.4, < 3.7.1 (fla issue #640); the recurrent mixers use the torch "
                        "chunked form wherever gradients are needed (fla for inference only)")
_fla_missing_logged = False
_fla_backward_logged = False


@functools.lru_cache(maxsize=1)
def fla_available() -> bool:
    """True when fla's chunked kernels import. Only asked for CUDA inputs."""
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule  # noqa: F401
        from fla.ops.simple_gla import chunk_simple_gla  # noqa: F401
    except Exception:
        return False
    return True


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v.split("+")[0])[:3])


@functools.lru_cache(maxsize=8)
def fla_backward_ok(device_index: int = 0) -> bool:
    """False where fla's gated chunk backward raises (``chunk_bwd_dqkwg`` with a gate on Hopper
    with Triton in [3.4.0, 3.7.1), fla #640): there only fla's forward is used."""
    try:
        import triton

        triton_v = _version(triton.__version__)
    except Exception:
        return False
    hopper = (torch.cuda.get_device_capability(device_index)[0] == 9
              or "NVIDIA H" in torch.cuda.get_device_name(device_index))
    return not (hopper and (3, 4, 0) <= triton_v < (3, 7, 1))


def _on_cuda(x: torch.Tensor) -> bool:
    return x.is_cuda


def _half_precision(x: torch.Tensor) -> bool:
    return x.dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled("cuda")


def _log_fla_missing_once() -> None:
    global _fla_missing_logged
    if not _fla_missing_logged:
        _fla_missing_logged = True
        log.warning(FLA_MISSING_MESSAGE)


def _log_fla_backward_once() -> None:
    global _fla_backward_logged
    if not _fla_backward_logged:
        _fla_backward_logged = True
        log.warning(FLA_BACKWARD_MESSAGE)


def _needs_grad(*xs) -> bool:
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in xs)


def use_fla(q: torch.Tensor, v: torch.Tensor, backend: str = "auto", needs_grad: bool = False) -> bool:
    """Whether ``backend`` runs these inputs (q (B, H, T, Dk), v (B, H, T, Dv)) through fla;
    ``needs_grad``: a backward pass will follow."""
    if backend == "torch":
        return False
    if backend not in ("auto", "fla"):
        raise ValueError(f"recurrent_backend: unknown backend {backend!r}")
    if not _on_cuda(q):  # fla is never used, nor imported, for CPU tensors
        return False
    T, Dk, Dv = q.shape[2], q.shape[-1], v.shape[-1]
    if T < 2 or not (16 <= Dk <= 256 and 16 <= Dv <= 256):
        return False
    if backend == "auto" and not _half_precision(v):
        return False
    if fla_available():
        if needs_grad and not fla_backward_ok(q.device.index or 0):
            if backend == "fla":
                raise RuntimeError("recurrent_backend='fla': " + FLA_BACKWARD_MESSAGE.split(";")[0]
                                   + "; use recurrent_backend='auto' to train on the torch form")
            _log_fla_backward_once()
            return False
        return True
    if backend == "fla":
        raise RuntimeError("recurrent_backend='fla' but flash-linear-attention is not installed "
                           "(pip install fla-core), or use recurrent_backend='auto'")
    _log_fla_missing_once()
    return False


def _fla_dtype(*xs: torch.Tensor) -> torch.dtype:
    """One compute dtype for fla's kernels: autocast's, else the promoted input dtype."""
    if torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    dt = xs[0].dtype
    for x in xs[1:]:
        dt = torch.promote_types(dt, x.dtype)
    return dt


def _to_fla(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.transpose(1, 2).to(dtype)  # (B, H, T, ...) -> (B, T, H, ...)


def _state_to_fla(state):
    return None if state is None else state.transpose(-1, -2).float()  # (B, H, Dv, Dk) -> (B, H, Dk, Dv)


def fla_decay_linear_attention(q, k, v, log_a, state=None):
    """``chunk_decay_linear_attention`` through fla's ``chunk_simple_gla`` (CUDA only).
    Same shapes and results (up to kernel rounding); the state comes back in q's dtype."""
    from fla.ops.simple_gla import chunk_simple_gla

    dt = _fla_dtype(q, k, v)
    o, S = chunk_simple_gla(_to_fla(q, dt), _to_fla(k, dt), _to_fla(v, dt),
                            g=log_a.transpose(1, 2).float(),  # (B, T, H) natural-log decay
                            scale=1.0, initial_state=_state_to_fla(state), output_final_state=True)
    return o.transpose(1, 2), S.transpose(-1, -2).to(q.dtype)  # (B, H, T, Dv), (B, H, Dv, Dk)


def fla_gated_delta_rule(q, k, v, beta, log_a, state=None):
    """``chunk_gated_delta_rule`` through fla's kernel of the same name (CUDA only)."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk_gdr

    dt = _fla_dtype(q, k, v)
    o, S = fla_chunk_gdr(_to_fla(q, dt), _to_fla(k, dt), _to_fla(v, dt),
                         g=log_a.transpose(1, 2).float(),  # (B, T, H)
                         beta=beta.transpose(1, 2).to(dt),  # (B, T, H)
                         scale=1.0, initial_state=_state_to_fla(state), output_final_state=True)
    return o.transpose(1, 2), S.transpose(-1, -2).to(q.dtype)


def decay_linear_attention(q, k, v, log_a, state=None, chunk: int = 64, backend: str = "auto"):
    """Scalar-decay linear attention on the backend chosen by ``use_fla``."""
    if use_fla(q, v, backend, _needs_grad(q, k, v, log_a, state)):
        return fla_decay_linear_attention(q, k, v, log_a, state)
    return chunk_decay_linear_attention(q, k, v, log_a, state, chunk=chunk)


def gated_delta_rule(q, k, v, beta, log_a, state=None, chunk: int = 64, backend: str = "auto"):
    """Gated delta rule on the backend chosen by ``use_fla``."""
    if use_fla(q, v, backend, _needs_grad(q, k, v, beta, log_a, state)):
        return fla_gated_delta_rule(q, k, v, beta, log_a, state)
    return chunk_gated_delta_rule(q, k, v, beta, log_a, state, chunk=chunk)
