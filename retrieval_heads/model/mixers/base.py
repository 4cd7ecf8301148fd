"""Shared machinery of the recurrent mixers (`M`, `D`, `L`, ...) and their registry.

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

A mixer class *declares* what it is, and ``@register_mixer`` files it under its letter in
``MIXERS`` and in ``config.LAYER_KINDS``; the rest of the package reads these declarations::

    letter       the layout letter (one ASCII capital, not F or S)
    description  one line for config.LAYER_KINDS (None = the built-in letter's own)
    family       the recurrence it runs, a key of ``FAMILIES``: "decay" (scalar-decay linear
                 attention: M, L) or "delta" (gated delta rule: D)
    uses_beta    whether it passes a write strength beta (None = the family's rule)
    qk_weights   parameter names of its per-head query and key weights under
                 ``blocks.{l}.mixer.`` (rows [n_heads * d_key, d_model]) for the Q/K distance
                 (``detect.weights``), or None when it has none (M: B, C shared by all heads)
    hooks        the hook points it fires (``blocks.{l}.mixer.hook_{name}``); None = q, k, v,
                 decay, (beta,) out
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformer_lens.hook_points import HookPoint

from ...config import ATTENTION_KINDS, BUILTIN_KINDS, register_layer_kind, unregister_layer_kind
from .. import recurrence


# --- recurrence families -----------------------------------------------------------------
# The functions look ``recurrence.*`` up at call time (tests monkeypatch them).
def _decay_chunked(q, k, v, log_a, beta, state, *, chunk, backend):
    return recurrence.decay_linear_attention(q, k, v, log_a, state, chunk=chunk, backend=backend)


def _decay_naive(q, k, v, log_a, beta, state):
    return recurrence.naive_decay_linear_attention(q, k, v, log_a, state)


def _decay_windowed(mixer, q, k, v, log_a, beta, w, start):
    return mixer._windowed_decay(q, k, v, log_a, w, start)


def _delta_chunked(q, k, v, log_a, beta, state, *, chunk, backend):
    return recurrence.gated_delta_rule(q, k, v, beta, log_a, state, chunk=chunk, backend=backend)


def _delta_naive(q, k, v, log_a, beta, state):
    return recurrence.naive_gated_delta_rule(q, k, v, beta, log_a, state)


def _delta_windowed(mixer, q, k, v, log_a, beta, w, start):
    return mixer._windowed_delta(q, k, v, log_a, beta, w, start)


@dataclass(frozen=True)
class RecurrenceFamily:
    """One kind of linear recurrence. Shapes: q, k, v (B, H, T, D); log_a, beta (B, H, T).

    chunked(q, k, v, log_a, beta, state, *, chunk, backend) -> (o, state)   the fast form
    naive(q, k, v, log_a, beta, state) -> (o, state)       the step-by-step reference
    windowed(mixer, q, k, v, log_a, beta, w, start) -> o   receptive field of w tokens
    """

    name: str
    uses_beta: bool
    chunked: Callable
    naive: Callable
    windowed: Callable


FAMILIES: dict[str, RecurrenceFamily] = {
    "decay": RecurrenceFamily("decay", False, _decay_chunked, _decay_naive, _decay_windowed),
    "delta": RecurrenceFamily("delta", True, _delta_chunked, _delta_naive, _delta_windowed),
}


class RecurrentMixer(nn.Module):
    # declarations (see the module docstring); @register_mixer checks and completes them
    letter: str = ""
    description: str | None = None
    family: str = "decay"
    uses_beta: bool | None = None
    qk_weights: tuple[str, str] | None = None
    hooks: tuple[str, ...] | None = None
    submodule = "mixer"  # Block attribute holding it: blocks.{l}.mixer

    def __init__(self, cfg, layer: int):
        super().__init__()
        self.cfg, self.layer, self.kind = cfg, layer, cfg.layer_kind(layer)
        self.chunk_size = cfg.chunk_size
        self.use_naive = False  # True = step-by-step reference loop (tests)
        self.backend = getattr(cfg, "recurrent_backend", "auto")  # auto / torch / fla (recurrence.py)
        # receptive-field limit at inference (interventions): None = unlimited
        self.window: int | None = None
        self.hook_q = HookPoint()  # [batch, pos, head, d_key]
        self.hook_k = HookPoint()  # [batch, pos, head, d_key]
        self.hook_v = HookPoint()  # [batch, pos, head, d_value]
        self.hook_decay = HookPoint()  # [batch, pos, head]
        self.hook_beta = HookPoint()  # [batch, pos, head]
        self.hook_out = HookPoint()  # [batch, pos, head, d_value]
        for name in type(self).hooks or ():  # extra hook points a mixer declares
            if not hasattr(self, f"hook_{name}"):
                setattr(self, f"hook_{name}", HookPoint())


    def add_qkv(self, cfg) -> tuple[int, int]:
        """Per-head query, key and value projections ``W_Q``, ``W_K``, ``W_V`` (d_model ->
        heads x d_head, no bias), created in that order; returns ``(heads, d_head)``."""
        H, D = cfg.n_heads, cfg.d_head
        self.H, self.Dh = H, D
        self.W_Q = nn.Linear(cfg.d_model, H * D, bias=False)
        self.W_K = nn.Linear(cfg.d_model, H * D, bias=False)
        self.W_V = nn.Linear(cfg.d_model, H * D, bias=False)
        return H, D
    def recur(self, q, k, v, log_a, beta=None, state=None):
        """q, k, v (B, H, T, D); log_a, beta (B, H, T) -> o (B, H, T, Dv), final state.
        ``use_naive``: the step-by-step reference; else the chunked form on ``self.backend``
        (``cfg.recurrent_backend``: fla's kernels on CUDA when installed, else torch); the
        functions are those of the mixer's ``family``."""
        fam = FAMILIES[self.family]
        if self.use_naive:
            return fam.naive(q, k, v, log_a, beta, state)
        return fam.chunked(q, k, v, log_a, beta, state, chunk=self.chunk_size, backend=self.backend)

    def run(self, q, k, v, log_a, beta, cache: dict | None) -> torch.Tensor:
        """Hook the inputs, run the recurrence (continuing ``cache``), hook and return (B, T, H, Dv)."""
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        log_a = self.hook_decay(log_a)
        if beta is not None:
            beta = self.hook_beta(beta)
        T = lambda x: None if x is None else x.transpose(1, 2)  # (B, T, H, ...) -> (B, H, T, ...)
        if self.window is not None:
            o = self._windowed(T(q), T(k), T(v), T(log_a), T(beta), cache)
        else:
            if cache is not None and "window_tail" in cache:
                raise ValueError("this decode cache was filled with a receptive-field window on "
                                 f"layer {self.layer}; keep the same window for the whole generation")
            o, state = self.recur(T(q), T(k), T(v), T(log_a), T(beta),
                                  None if cache is None else cache.get("state"))
            if cache is not None:
                cache["state"] = state
        return self.hook_out(o.transpose(1, 2))  # (B, T, H, Dv)

    # ---- receptive-field window (interventions) ------------------------------------------
    def _windowed(self, q, k, v, log_a, beta=None, cache: dict | None = None):
        """Recurrence with a receptive field of ``self.window`` tokens: the output at t equals
        the recurrence restarted from a zero state at ``t - window + 1`` (it sees exactly the
        last ``window`` tokens, itself included). Shapes as in ``recur``; returns (B, H, T, Dv).

        Work is O(T * window), never T x T: scalar-decay mixers (M, L) use the closed form
        ``o_t = sum_{t-w<s<=t} exp(g_t - g_s) (q_t . k_s) v_s`` in blocks of queries; the delta
        rule (D) splits time into blocks of ``window`` (``_windowed_delta_blocks``), or, for a
        few queries (decoding), runs one restarted recurrence of length ``window`` per query.
        With a decode cache, the last ``window - 1`` inputs are kept (``cache["window_tail"]``)
        so that decoding continues exactly; ``use_naive`` selects the per-position reference loop.
        """
        w = int(self.window)
        if w < 1:
            raise ValueError(f"window: a receptive field must be >= 1 token, got {w}")
        xs = [q, k, v, log_a, beta]
        n_new = q.shape[2]
        if cache is not None:
            if "state" in cache and "window_tail" not in cache:
                raise ValueError("this decode cache was filled without a receptive-field window on "
                                 f"layer {self.layer}; set the window before prefilling")
            tail = cache.get("window_tail")
            if tail is not None:
                xs = [None if x is None else torch.cat([t_, x], dim=2) for t_, x in zip(tail, xs)]
            cache["window_tail"] = [None if x is None else x[:, :, -(w - 1):] if w > 1 else x[:, :, :0]
                                    for x in xs]
        q, k, v, log_a, beta = xs
        start = q.shape[2] - n_new  # outputs are needed for positions start..N-1 only
        if start == 0 and w >= q.shape[2]:  # the window covers everything: plain recurrence
            return self.recur(q, k, v, log_a, beta)[0]
        if self.use_naive:
            return self._windowed_reference(q, k, v, log_a, beta, w, start)
        return FAMILIES[self.family].windowed(self, q, k, v, log_a, beta, w, start)

    def _windowed_reference(self, q, k, v, log_a, beta, w, start=0):
        """Reference: restart the recurrence at max(0, t - w + 1) for every t (slow)."""
        outs = []
        for t in range(start, q.shape[2]):
            s = max(0, t - w + 1)
            args = [x[:, :, s:t + 1] for x in (q, k, v)]
            o, _ = self.recur(*args, log_a[:, :, s:t + 1], None if beta is None else beta[:, :, s:t + 1])
            outs.append(o[:, :, -1])
        return torch.stack(outs, dim=2)  # (B, H, T, Dv)

    @staticmethod
    def _windowed_decay(q, k, v, log_a, w, start=0, block: int = 128):
        """Banded closed form of scalar-decay linear attention restricted to w keys."""
        N = q.shape[2]
        outs = []
        bs = max(block, 1)
        for a in range(start, N, bs):
            b = min(a + bs, N)
            s0 = max(0, a - w + 1)  # first key any query of this block sees
            g = log_a[:, :, s0:b].cumsum(-1)  # (B, H, nk) local cumulative log-decay
            gq = g[:, :, a - s0:]  # (B, H, nq)
            diff = gq[..., :, None] - g[..., None, :]  # (B, H, nq, nk) = sum of log_a over (s, t]
            qi = torch.arange(a, b, device=q.device)[:, None]
            kj = torch.arange(s0, b, device=q.device)[None, :]
            band = (qi >= kj) & (qi - kj < w)  # (nq, nk)
            decay = diff.masked_fill(~band, float("-inf")).exp()
            A = (q[:, :, a:b] @ k[:, :, s0:b].transpose(-1, -2)) * decay  # (B, H, nq, nk)
            outs.append(A @ v[:, :, s0:b])  # (B, H, nq, Dv)
        return torch.cat(outs, dim=2)

    def _windowed_delta(self, q, k, v, log_a, beta, w, start=0):
        n_out = q.shape[2] - start
        if n_out * 4 <= w:  # a few queries (decoding): one short recurrence each
            return self._windowed_delta_gather(q, k, v, log_a, beta, w, start)
        return self._windowed_delta_blocks(q, k, v, log_a, beta, w)[:, :, start:]

    def _windowed_delta_gather(self, q, k, v, log_a, beta, w, start=0, max_elems: int = 1 << 22):
        """One gated-delta recurrence of length w per query, batched over groups of queries.
        Inputs are left-padded with zeros (k = v = beta = 0, log_a = 0 keep a zero state)."""
        B, H, N, Dk = q.shape
        Dv = v.shape[-1]
        pad4 = lambda x: F.pad(x, (0, 0, w - 1, 0))  # (B, H, N + w - 1, D)
        pad3 = lambda x: F.pad(x, (w - 1, 0))  # (B, H, N + w - 1)
        qp, kp, vp, ap, bp = pad4(q), pad4(k), pad4(v), pad3(log_a), pad3(beta)
        G = max(1, max_elems // max(1, B * H * w * max(Dk, Dv)))  # queries per group
        outs = []
        for a in range(start, N, G):
            b = min(a + G, N)
            # the window of query t covers padded indices t .. t + w - 1
            idx = torch.arange(a, b, device=q.device)[:, None] + torch.arange(w, device=q.device)  # (g, w)
            fold = lambda x, idx=idx, g=b - a: x[:, :, idx].reshape(B, H * g, w, *x.shape[3:])  # (B, H*g, w, ...)
            qw, kw, vw, aw, bw = (fold(x) for x in (qp, kp, vp, ap, bp))
            o, _ = recurrence.chunk_gated_delta_rule(qw, kw, vw, bw, aw, None, chunk=min(self.chunk_size, w))
            outs.append(o[:, :, -1].reshape(B, H, b - a, Dv))  # (B, H, g, Dv)
        return torch.cat(outs, dim=2)

    def _windowed_delta_blocks(self, q, k, v, log_a, beta, w):
        """All positions in O(T * w): split time into blocks of w. For t in block c the window
        [t-w+1, t] is the tail of block c-1 plus the head of block c, and since
        S_t = S_{t-1} M_t + beta_t v_t k_t^T with M_t = a_t (I - beta_t k_t k_t^T) (symmetric),

            o_t = [recurrence of block c restarted at its start] q_t
                  + sum_{j in block c-1, j > t-w} beta_j (k~_j . q~_t) v_j,
            q~_t = M_c0 ... M_t q_t,   k~_j = M_end ... M_{j+1} k_j   (end = last of block c-1).

        The products are applied as rank-1 updates, all blocks at once (w steps each)."""
        B, H, N, Dk = q.shape
        Dv = v.shape[-1]
        nb = -(-N // w)
        pad = nb * w - N  # zero-pad the end to whole blocks; outputs there are dropped
        blk4 = lambda x: F.pad(x, (0, 0, 0, pad)).view(B, H, nb, w, x.shape[-1])  # (B, H, nb, w, D)
        blk3 = lambda x: F.pad(x, (0, pad)).view(B, H, nb, w)  # (B, H, nb, w)
        qb, kb, vb, ab, bb = blk4(q), blk4(k), blk4(v), blk3(log_a).exp(), blk3(beta)
        # intra-block term: the recurrence restarted at each block start
        fold = lambda x: x.reshape(B, H * nb, w, *x.shape[4:])  # (B, H*nb, w, ...)
        o, _ = recurrence.chunk_gated_delta_rule(fold(qb), fold(kb), fold(vb), fold(bb), fold(blk3(log_a)),
                                                 None, chunk=min(self.chunk_size, w))
        o = o.view(B, H, nb, w, Dv)
        if nb == 1:
            return o.reshape(B, H, nb * w, Dv)[:, :, :N]
        local = torch.arange(w, device=q.device)

        def apply_m(x, i, rows):  # x (B, H, nb, w, Dk); M_i on the rows selected by `rows` (w,)
            ki = kb[:, :, :, i, None, :]  # (B, H, nb, 1, Dk)
            mx = ab[:, :, :, i, None, None] * (x - bb[:, :, :, i, None, None] * ki * (x * ki).sum(-1, keepdim=True))
            return torch.where(rows[:, None], mx, x)

        qt = qb
        for i in range(w - 1, -1, -1):  # q~_t: apply M_t first, then M_{t-1}, ..., M_{c0}
            qt = apply_m(qt, i, local >= i)
        kt = kb
        for i in range(1, w):  # k~_j: apply M_{j+1}, ..., M_end
            kt = apply_m(kt, i, local < i)
        # cross term: queries of block c against keys of block c-1 with j > t (local indices)
        scores = qt[:, :, 1:] @ (kt[:, :, :-1] * bb[:, :, :-1, :, None]).transpose(-1, -2)  # (B, H, nb-1, w, w)
        visible = local[None, :] > local[:, None]  # (t, j): j > t
        cross = scores.masked_fill(~visible, 0.0) @ vb[:, :, :-1]  # (B, H, nb-1, w, Dv)
        o = torch.cat([o[:, :, :1], o[:, :, 1:] + cross], dim=2)
        return o.reshape(B, H, nb * w, Dv)[:, :, :N]

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


# --- the registry ------------------------------------------------------------------------
MIXERS: dict[str, type[RecurrentMixer]] = {}  # layout letter -> mixer class
EFFECTIVE_ATTENTION_HOOKS = ("q", "k", "decay")  # what effective_attention reads (+ beta)


def register_mixer(cls: type[RecurrentMixer]) -> type[RecurrentMixer]:
    """Class decorator: check a mixer's declarations, fill in the defaults (``uses_beta``
    from its family, ``hooks``) and register it under its letter in ``MIXERS`` and
    ``config.LAYER_KINDS``. Raises ``ValueError`` on a bad or taken letter, an unknown family,
    a ``uses_beta`` that contradicts the family, or malformed ``qk_weights`` / ``hooks``. The
    same class defined again (a reloaded module) replaces the old one."""
    if not (isinstance(cls, type) and issubclass(cls, RecurrentMixer)):
        raise ValueError(f"register_mixer: {cls!r} is not a RecurrentMixer subclass")
    letter = cls.__dict__.get("letter")
    name = cls.__name__
    if not (isinstance(letter, str) and len(letter) == 1 and "A" <= letter <= "Z") or letter in ATTENTION_KINDS:
        raise ValueError(f"{name}.letter: one ASCII capital other than {', '.join(ATTENTION_KINDS)}, "
                         f"declared on the class itself; got {letter!r}")
    old = MIXERS.get(letter, cls)
    if old is not cls and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"{name}.letter: {letter!r} is already registered to {MIXERS[letter].__name__}")
    if cls.family not in FAMILIES:
        raise ValueError(f"{name}.family: {cls.family!r}; use one of {tuple(FAMILIES)}")
    fam = FAMILIES[cls.family]
    declared = cls.__dict__.get("uses_beta")
    if declared is None:
        cls.uses_beta = fam.uses_beta
    elif declared is not fam.uses_beta:
        raise ValueError(f"{name}.uses_beta: {cls.uses_beta} contradicts family {fam.name!r} "
                         f"(uses_beta={fam.uses_beta})")
    qk = cls.qk_weights
    if qk is not None and not (isinstance(qk, tuple) and len(qk) == 2 and all(isinstance(n, str) for n in qk)):
        raise ValueError(f"{name}.qk_weights: a (query, key) pair of parameter names or None, got {qk!r}")
    if cls.__dict__.get("hooks") is None:
        cls.hooks = ("q", "k", "v", "decay") + (("beta",) if cls.uses_beta else ()) + ("out",)
    need = EFFECTIVE_ATTENTION_HOOKS + (("beta",) if cls.uses_beta else ())
    if not (isinstance(cls.hooks, tuple) and all(isinstance(h, str) for h in cls.hooks)) \
            or not set(need) <= set(cls.hooks):
        raise ValueError(f"{name}.hooks: a tuple of hook names including {need}, got {cls.hooks!r}")
    register_layer_kind(letter, cls.description)
    MIXERS[letter] = cls
    return cls


def unregister_mixer(letter: str) -> None:
    """Remove a mixer registered with ``register_mixer`` (the built-in letters stay)."""
    if letter in BUILTIN_KINDS:
        raise ValueError(f"unregister_mixer: {letter!r} is built in")
    MIXERS.pop(letter, None)
    unregister_layer_kind(letter)
