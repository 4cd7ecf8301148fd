"""Attention rows at chosen query positions, in O(T) memory: the detector's only contact
with a model.

Everything in ``retrieval_heads.detect`` reads a model through a *row source*, an object
with this small interface (``HybridRows`` implements it for ``HybridLM``; an adapter for
Hugging Face models only has to provide the same members)::

    n_layers, n_heads          ints
    layer_types                str, one letter per layer (``config.LAYER_KINDS``: F, S, M, D, L
                               and any registered mixer; any other letter = not scorable)
    windows                    list[int | None]: keys a query of each layer sees (incl. itself)
    eos                        stop token id (or None)
    decode(ids) -> str         token ids -> text (for the correctness check)
    encode(text) -> list[int]  optional: text -> ids without special tokens (``detect.compat``'s
                               answer spellings and overlap spans need it)
    token_text(id) -> str      optional: one token's text, unstripped (else decode([id]))
    scorable_layers(recurrent) -> list[int]
    prefill_rows(tokens, query_pos, *, recurrent=False, fwd_hooks=()) -> dict[layer, rows]
        tokens (B, T); query_pos (B, nq) long; rows (B, H, nq, T), each row a probability
        distribution over keys (0 where masked).
    decode_rows(tokens, max_new_tokens, *, recurrent=False, fwd_hooks=(), reduce=None) -> DecodeRows
        greedy decoding: prefill tokens[:, :-1] on the fast path, then feed tokens[:, -1] and
        each generated token; step i's query sits at position T - 1 + i and its row has
        T + i keys. ``reduce(step, layer, rows)`` may shrink each (B, H, T+i) row block
        before it is stored (e.g. to its argmax).

Rows of attention layers are softmax probabilities; rows of recurrent layers (optional) are
the mixer's effective attention ``W[t, s]`` normalised as ``|W| / sum |W|`` so that the same
rules (argmax, span mass, entropy) apply. Nothing of size T x T is ever built: prefill runs
on the fast attention path while hooks capture ``hook_rot_q`` at the query rows and
``hook_rot_k``, and the rows are computed here with the layer's own mask
(``kernels.attention_scores``); decode steps take the one-row ``hook_pattern`` of the decode
path. ``retrieval_heads.detect.reference`` holds the O(T^2) references these are tested against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..config import ATTENTION_KINDS, RECURRENT_KINDS
from ..model import kernels
from ..model.mixers import EFFECTIVE_ATTENTION_HOOKS

# the layout letters scored as attention / through effective attention: config's tables
# (RECURRENT_KINDS is live: a mixer registered later is included)
RECURRENT_TYPES = RECURRENT_KINDS
ATTENTION_TYPES = ATTENTION_KINDS


@dataclass
class DecodeRows:
    """Greedy decoding with per-step attention rows.

    generated  (B, n) long: token produced at step i (from the query at position T-1+i)
    alive      (B, n) bool: step i counts for sample b (no stop token before step i)
    rows       list over steps of {layer: reduce(i, layer, (B, H, T+i)) or the rows themselves}
    """

    generated: torch.Tensor
    alive: torch.Tensor
    rows: list[dict] = field(default_factory=list)

    @property
    def n_steps(self) -> int:
        return self.generated.shape[1]


def normalise_effective(w: torch.Tensor) -> torch.Tensor:
    """Effective-attention rows (..., T) -> |w| / sum |w| (a zero row stays zero)."""
    a = w.abs()
    return a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)


def _rows_from_qk(attn, q: torch.Tensor, k: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
    """Softmax rows of an attention layer at ``query_pos`` from rotated q (B, T, H, D) and
    k (B, T, Hkv, D) over positions 0..T-1, masked exactly as the eager path masks them."""
    B, T, H, D = q.shape
    nq = query_pos.shape[1]
    qs = q.gather(1, query_pos[:, :, None, None].expand(B, nq, H, D).to(q.device))  # (B, nq, H, D)
    qh = qs.transpose(1, 2).float()  # (B, H, nq, D)
    kh = attn.repeat_kv(k.transpose(1, 2)).float()  # (B, H, T, D)
    k_pos = torch.arange(T, device=q.device)
    if bool((query_pos == query_pos[:1]).all()):
        scores = kernels.attention_scores(qh, kh, query_pos[0].to(q.device), k_pos, attn.window)
    else:  # different query positions per sample
        scores = torch.cat([kernels.attention_scores(qh[b:b + 1], kh[b:b + 1], query_pos[b].to(q.device),
                                                     k_pos, attn.window) for b in range(B)])
    return torch.nan_to_num(torch.softmax(scores, dim=-1))  # (B, H, nq, T)


class HybridRows:
    """The row source of a ``HybridLM`` (see the module docstring for the interface)."""

    def __init__(self, model):
        from ..tasks import TOKENIZER

        self.model = model
        cfg = model.cfg
        self.n_layers, self.n_heads = cfg.n_layers, cfg.n_heads
        self.layer_types = cfg.layout
        self.eos = TOKENIZER.EOS
        self._decode = TOKENIZER.decode

    @property
    def windows(self) -> list[int | None]:
        return [getattr(b.token_mixer, "window", None) for b in self.model.blocks]

    def decode(self, ids) -> str:
        return self._decode(ids)

    def encode(self, text: str) -> list[int]:
        """Text -> token ids, no special tokens (answer spellings, ``detect.compat``)."""
        from ..tasks import TOKENIZER

        return TOKENIZER.encode(text)

    def token_text(self, token: int) -> str:
        """The text of one token, unstripped (``\\n`` ends an answer under ``accept="rouge"``)."""
        return self._decode([token], stop_at_eos=False)

    def scorable_layers(self, recurrent: bool = False) -> list[int]:
        return [l for l, c in enumerate(self.layer_types)
                if c in ATTENTION_TYPES or (recurrent and c in RECURRENT_TYPES)]

    # --- recurrent capture -------------------------------------------------------------
    def _recurrent_hooks(self, store: dict) -> list:
        """Hooks that append what ``effective_attention`` reads (hook_q/k/decay, and hook_beta
        for a mixer that declares ``uses_beta``) of every recurrent layer to ``store``."""
        hooks = []
        for l in self.scorable_layers(True):
            if self.layer_types[l] not in RECURRENT_TYPES:
                continue
            mixer = self.model.blocks[l].mixer
            if mixer.window is not None:
                raise ValueError(f"layer {l}: effective attention is undefined under a receptive-field "
                                 "window; remove mixer.window before scoring recurrent layers")
            names = list(EFFECTIVE_ATTENTION_HOOKS) + (["beta"] if mixer.uses_beta else [])
            for n in names:
                def fn(x, hook, l=l, n=n):
                    store.setdefault(l, {}).setdefault(n, []).append(x.detach())
                hooks.append((f"blocks.{l}.mixer.hook_{n}", fn))
        return hooks

    def _recurrent_rows(self, store: dict, query_idx: list[int]) -> dict[int, torch.Tensor]:
        """Normalised effective-attention rows (B, H, nq, T) from captured tensors."""
        out = {}
        for l, parts in store.items():
            cat = {n: torch.cat(v, dim=1) for n, v in parts.items()}  # (B, T, H, ...)
            w = self.model.blocks[l].mixer.effective_attention(
                cat["q"], cat["k"], cat["decay"], cat.get("beta"), query_idx)  # (B, H, nq, T)
            out[l] = normalise_effective(w.float())
        return out

    # --- the interface -----------------------------------------------------------------
    @torch.no_grad()
    def prefill_rows(self, tokens: torch.Tensor, query_pos, *, recurrent: bool = False,
                     fwd_hooks=()) -> dict[int, torch.Tensor]:
        """One fast forward pass over ``tokens`` (B, T); rows (B, H, nq, T) at ``query_pos``
        ((B, nq), (nq,) or an int) for every scorable layer."""
        tokens = tokens.to(self.model.device)
        B, T = tokens.shape
        query_pos = torch.as_tensor(query_pos, dtype=torch.long)
        if query_pos.dim() == 0:
            query_pos = query_pos[None]
        if query_pos.dim() == 1:
            query_pos = query_pos[None].expand(B, -1)
        if bool(((query_pos < 0) | (query_pos >= T)).any()):
            raise ValueError(f"query_pos: positions must lie in [0, {T}), got {query_pos.tolist()}")
        rows: dict[int, torch.Tensor] = {}
        qcap: dict[int, torch.Tensor] = {}
        hooks = []
        for l in self.scorable_layers(False):
            attn = self.model.blocks[l].attn

            def save_q(q, hook, l=l):
                qcap[l] = q.detach()

            def make_rows(k, hook, l=l, attn=attn):
                rows[l] = _rows_from_qk(attn, qcap.pop(l), k.detach(), query_pos)

            hooks += [(f"blocks.{l}.attn.hook_rot_q", save_q), (f"blocks.{l}.attn.hook_rot_k", make_rows)]
        store: dict = {}
        if recurrent:
            hooks += self._recurrent_hooks(store)
        with self.model.hooks(fwd_hooks=list(fwd_hooks) + hooks):
            self.model(tokens, return_type="residual")
        if store:
            uniq = sorted(set(query_pos.flatten().tolist()))
            rec = self._recurrent_rows(store, uniq)
            where = torch.tensor([[uniq.index(p) for p in row] for row in query_pos.tolist()])  # (B, nq)
            for l, r in rec.items():  # r: (B, H, len(uniq), T)
                idx = where[:, None, :, None].expand(B, r.shape[1], where.shape[1], T)
                rows[l] = r.gather(2, idx.to(r.device))
        return dict(sorted(rows.items()))

    @torch.no_grad()
    def decode_rows(self, tokens: torch.Tensor, max_new_tokens: int, *, recurrent: bool = False,
                    fwd_hooks=(), reduce: Callable | None = None, stop_token: int | None = -1) -> DecodeRows:
        """Greedy-decode ``max_new_tokens`` after ``tokens`` (B, T) and keep each step's rows.

        ``stop_token`` (default: ``self.eos``; None = never stop) ends a sample's valid steps
        after it is produced; decoding stops once every sample has produced it."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be >= 1, got {max_new_tokens}")
        stop = self.eos if stop_token == -1 else stop_token
        model = self.model
        tokens = tokens.to(model.device)
        B, T = tokens.shape
        if T + max_new_tokens - 1 > model.cfg.max_seq_len:
            raise ValueError(f"context of {T} tokens + {max_new_tokens} decode steps exceeds "
                             f"max_seq_len={model.cfg.max_seq_len}")
        reduce = reduce or (lambda i, l, r: r)
        store: dict = {}
        rec_hooks = self._recurrent_hooks(store) if recurrent else []
        cache = model.new_cache()
        if T > 1:  # fast path: no pattern hook during prefill
            with model.hooks(fwd_hooks=list(fwd_hooks) + rec_hooks):
                model(tokens[:, :-1], cache=cache, return_type="residual")
        step_rows: dict[int, torch.Tensor] = {}
        pat_hooks = []
        for l in self.scorable_layers(False):
            def grab(p, hook, l=l):
                step_rows[l] = p.detach()[:, :, -1].float()  # (B, H, Tk)
            pat_hooks.append((f"blocks.{l}.attn.hook_pattern", grab))
        gen, rows = [], []
        cur = tokens[:, -1]
        done = torch.zeros(B, dtype=torch.bool, device=tokens.device)
        alive = []
        with model.hooks(fwd_hooks=list(fwd_hooks) + pat_hooks + rec_hooks):
            for i in range(max_new_tokens):
                step_rows.clear()
                logits = model(cur[:, None], cache=cache)  # (B, 1, vocab)
                nxt = logits[:, -1].argmax(-1)  # (B,)
                gen.append(nxt)
                alive.append(~done)
                rows.append({l: reduce(i, l, r) for l, r in step_rows.items()})
                if stop is not None:
                    done = done | (nxt == stop)
                    if bool(done.all()):
                        break
                cur = nxt
        if store:
            n = len(gen)
            rec = self._recurrent_rows(store, list(range(T - 1, T - 1 + n)))  # (B, H, n, T+n-1)
            for l, r in rec.items():
                for i in range(n):
                    rows[i][l] = reduce(i, l, r[:, :, i, :T + i])
            rows = [dict(sorted(r.items())) for r in rows]
        return DecodeRows(generated=torch.stack(gen, 1), alive=torch.stack(alive, 1), rows=rows)


def as_row_source(model):
    """``model`` itself if it already offers the row-source interface, else ``HybridRows``."""
    if hasattr(model, "prefill_rows") and hasattr(model, "decode_rows"):
        return model
    if not (hasattr(getattr(model, "cfg", None), "layout") and hasattr(model, "blocks")):
        raise TypeError(f"model: got {type(model).__module__}.{type(model).__name__}; the detector reads a "
                        "HybridLM or a row source such as HFModel (rh.hf.load_hf); for an HF "
                        "AutoModelForCausalLM instance or a TransformerBridge use rh.retrieval_scores")
    return HybridRows(model)


def prefill_rows(model, tokens, query_pos, **kw) -> dict[int, torch.Tensor]:
    """Rows (B, H, nq, T) per scorable layer at ``query_pos`` from one fast forward pass."""
    return as_row_source(model).prefill_rows(tokens, query_pos, **kw)


def greedy_decode_rows(model, tokens, max_new_tokens: int, **kw) -> DecodeRows:
    """Greedy decoding that returns each step's rows (see ``HybridRows.decode_rows``)."""
    return as_row_source(model).decode_rows(tokens, max_new_tokens, **kw)
