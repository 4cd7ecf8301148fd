"""`HFModel`: a Hugging Face causal LM behind TransformerLens hook names, with O(T) attention rows.

It wraps the HF model in place (its weights and kernels are untouched) and is the detector's
*row source* for HF checkpoints (the interface of ``retrieval_heads.detect.rows``):
``prefill_rows`` runs one forward on the model's own fast attention (SDPA / flash) while our
``AttentionInterface`` function (``hf/attention.py``) computes softmax rows only at the query
positions, from the very q and k the model used (after RoPE, q/k norms, Llama 4's query
temperature) and with HF's own mask; ``decode_rows`` greedy-decodes with the HF cache and
takes the one new row per step. Nothing of size T x T is built unless a hook on
``hook_pattern`` / ``hook_attn_scores`` asks for it (then that layer runs our eager path).

Hook points (TransformerLens names, ``[batch, pos, ...]`` shapes)::

    hook_embed                                  token embeddings (after Gemma's scaling)
    blocks.{l}.hook_resid_pre / hook_resid_post the layer's input / output residual
    blocks.{l}.hook_attn_out                    attention output (before any post-norm)
    blocks.{l}.hook_mixer_out                   recurrent mixer output (M, D, L; Falcon-H1's Mamba)
    blocks.{l}.hook_mlp_out                     MLP / MoE output
    blocks.{l}.attn.hook_rot_q, hook_rot_k      q, k as attention uses them [b, pos, head(kv), d_head]
    blocks.{l}.attn.hook_v                      v [b, pos, kv_head, d_head]
    blocks.{l}.attn.hook_attn_scores            pre-softmax scores [b, head, q, k] (eager path)
    blocks.{l}.attn.hook_pattern                attention probabilities [b, head, q, k] (eager path)
    blocks.{l}.attn.hook_z                      per-head output before o_proj [b, pos, head, d_head]

Only attention layers have ``attn``, so ``names_filter=lambda n: n.endswith("hook_pattern")``
selects exactly the scorable heads. Zeroing a head's slice of ``hook_z`` removes it.

    >>> from retrieval_heads.hf.testing import tiny_model, tiny_tokenizer
    >>> tok = tiny_tokenizer(); m = HFModel(tiny_model("gemma3_text", vocab_size=len(tok)), tok)
    >>> m.layer_types, m(torch.tensor([[1, 5, 6]])).shape
    ('SSSF', torch.Size([1, 3, 384]))
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn as nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from ..config import ATTENTION_KINDS, RECURRENT_KINDS
from ..detect.rows import DecodeRows
from . import attention as A
from .layout import HFLayout, hf_layout

ATTN_NAMES = ("self_attn", "attention", "attn", "self_attention")
MIXER_NAMES = ("linear_attn", "mamba", "mixer", "ssm", "linear_attention")
MLP_NAMES = ("mlp", "feed_forward", "block_sparse_moe", "moe")


class AttnHooks(nn.Module):
    """Hook points of one attention layer (called from inside HF's attention)."""

    def __init__(self):
        super().__init__()
        self.hook_rot_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_rot_k = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_v = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, q_pos, k_pos]
        self.hook_pattern = HookPoint()  # [batch, head, q_pos, k_pos]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        self.force_eager = False

    def looking(self) -> bool:
        return self.force_eager or bool(self.hook_pattern._forward_hooks or self.hook_attn_scores._forward_hooks)


class BlockHooks(nn.Module):
    def __init__(self, kind: str, parallel: str | None, has_mlp: bool):
        super().__init__()
        self.kind = kind
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]
        if kind in ATTENTION_KINDS:
            self.attn = AttnHooks()
            self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        if kind not in ATTENTION_KINDS or parallel:
            self.hook_mixer_out = HookPoint()  # [batch, pos, d_model]
        if has_mlp:
            self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]


@dataclass
class HFConfig:
    """The parts of ``ModelConfig`` that the detector, ablation and patching read."""

    layout: str
    n_layers: int
    n_heads: int
    d_head: int
    d_model: int
    n_kv_heads: int
    windows: list
    pos: list
    model_type: str = ""
    architecture: str = ""
    vocab_size: int | None = None
    max_seq_len: int | None = None

    @property
    def attention_layers(self) -> list[int]:
        return [l for l, c in enumerate(self.layout) if c in ATTENTION_KINDS]

    def layer_kind(self, layer: int) -> str:
        return self.layout[layer]

    def is_attention(self, layer: int) -> bool:
        return self.layout[layer] in ATTENTION_KINDS

    def describe(self) -> str:
        return f"{self.architecture}: layout={self.layout} d_model={self.d_model} heads={self.n_heads}"


class _Owner:
    """Stored on each HF attention module as ``_rh``: who owns it and which layer it is."""

    def __init__(self, owner, layer: int):
        self.owner, self.layer = owner, layer


@dataclass
class _Capture:
    layers: set
    query_pos: torch.Tensor | None  # (B, nq) absolute; None = the last query of the forward
    rows: dict = field(default_factory=dict)


def _find_layers(hf) -> nn.ModuleList:
    n = hf.config.get_text_config().num_hidden_layers if hasattr(hf.config, "get_text_config") \
        else hf.config.num_hidden_layers
    base = getattr(hf, "base_model", hf)
    for root in (base, hf):
        for name in ("layers", "h", "blocks"):
            mods = getattr(root, name, None)
            if isinstance(mods, nn.ModuleList) and len(mods) == n:
                return mods
    for _, mod in hf.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n:
            return mod
    raise ValueError(f"{type(hf).__name__}: cannot find its list of {n} decoder layers")


def _child(layer: nn.Module, names) -> nn.Module | None:
    for n in names:
        m = getattr(layer, n, None)
        if isinstance(m, nn.Module):
            return m
    return None


def _pre_hook(hp, module, args, kwargs):
    if args and isinstance(args[0], torch.Tensor):
        return (hp(args[0]),) + tuple(args[1:]), kwargs
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        kwargs = dict(kwargs, hidden_states=hp(kwargs["hidden_states"]))
    return args, kwargs


def _post_hook(hp, module, args, output):
    if isinstance(output, torch.Tensor):
        return hp(output)
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return type(output)((hp(output[0]), *output[1:]))
    return output


class HFModel(HookedRootModule):
    """An HF causal LM (+ tokenizer) with our hook names, layout and the detector's row interface."""

    def __init__(self, hf_model, tokenizer=None, *, layout: str | None = None, path=None,
                 step: int | None = None, tokens_seen: int | None = None):
        super().__init__()
        self.hf = hf_model.eval()
        self.tokenizer = tokenizer
        self.path, self.step, self.tokens_seen = path, step, tokens_seen
        self.spec: HFLayout = hf_layout(hf_model.config, layout=layout)
        spec = self.spec
        text_cfg = hf_model.config.get_text_config()
        self.cfg = HFConfig(layout=spec.layout, n_layers=spec.n_layers, n_heads=spec.n_heads, d_head=spec.d_head,
                            d_model=spec.d_model, n_kv_heads=spec.n_kv_heads, windows=spec.windows, pos=spec.pos,
                            model_type=spec.model_type, architecture=spec.architecture,
                            vocab_size=getattr(text_cfg, "vocab_size", None),
                            max_seq_len=getattr(text_cfg, "max_position_embeddings", None))
        self._layers = _find_layers(hf_model)
        mlps = [_child(layer, MLP_NAMES) for layer in self._layers]
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.blocks = nn.ModuleList([BlockHooks(s.kind, s.parallel, m is not None)
                                     for s, m in zip(spec.layers, mlps)])
        self._capture: _Capture | None = None
        self._pos_start = 0
        self._handles = []
        self._install(mlps)
        params = inspect.signature(hf_model.forward).parameters
        self._logits_to_keep = "logits_to_keep" in params
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.x
        self._warned_recurrent = False
        self.setup()

    # --- wiring ------------------------------------------------------------------------
    def _install(self, mlps):
        cfg = self.hf.config
        base = cfg._attn_implementation or "eager"
        base = base[len(A.PREFIX):] if base.startswith(A.PREFIX) else base
        softcap = getattr(cfg.get_text_config(), "attn_logit_softcapping", None)
        if base == "sdpa" and softcap:
            base = "eager"  # HF's sdpa refuses soft-capped logits (Gemma 2)
        self._base = base
        cfg._attn_implementation = A.register(base)
        names = {id(m): n for n, m in self.hf.named_modules()}
        self.attn_paths: dict[int, str] = {}  # layer -> qualified name of its HF attention module
        emb = self.hf.get_input_embeddings()
        self._handles.append(emb.register_forward_hook(partial(_post_hook, self.hook_embed)))
        for l, (layer, spec, mlp) in enumerate(zip(self._layers, self.spec.layers, mlps)):
            bh = self.blocks[l]
            self._handles.append(layer.register_forward_pre_hook(partial(_pre_hook, bh.hook_resid_pre),
                                                                 with_kwargs=True))
            self._handles.append(layer.register_forward_hook(partial(_post_hook, bh.hook_resid_post)))
            if spec.is_attention:
                attn = _child(layer, ATTN_NAMES)
                if attn is None:
                    raise ValueError(f"layer {l} ({type(layer).__name__}) is {spec.kind} but has none of the "
                                     f"attention modules {ATTN_NAMES}")
                attn.__dict__["_rh"] = _Owner(self, l)
                self.attn_paths[l] = names[id(attn)]
                self._handles.append(attn.register_forward_hook(partial(_post_hook, bh.hook_attn_out)))
            if hasattr(bh, "hook_mixer_out"):
                mixer = _child(layer, MIXER_NAMES)
                if mixer is not None:
                    self._handles.append(mixer.register_forward_hook(partial(_post_hook, bh.hook_mixer_out)))
            if mlp is not None:
                self._handles.append(mlp.register_forward_hook(partial(_post_hook, bh.hook_mlp_out)))

    def detach(self):
        """Remove our hooks from the HF model and restore its attention implementation."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for layer in self._layers:
            for m in layer.modules():
                m.__dict__.pop("_rh", None)
        self.hf.config._attn_implementation = self._base
        return self.hf

    def setup(self):
        """HookedRootModule.setup over our hook points only (the HF modules are left alone)."""
        self.mod_dict, self.hook_dict = {}, {}
        for name, module in self.named_modules():
            if name == "" or name == "hf" or name.startswith("hf."):
                continue
            module.name = name
            self.mod_dict[name] = module
            if isinstance(module, HookPoint):
                self.hook_dict[name] = module

    def set_force_eager(self, value: bool = True) -> None:
        """Make every attention layer take the eager path (for nnsight access to hook_pattern)."""
        for b in self.blocks:
            if hasattr(b, "attn"):
                b.attn.force_eager = value

    # --- attention (called by hf/attention.py from inside the HF attention module) -----
    def _attend(self, l, module, q, k, v, mask, base, kwargs):
        hooks = self.blocks[l].attn
        q = hooks.hook_rot_q(q.transpose(1, 2)).transpose(1, 2)  # hooks see (B, T, H, D)
        k = hooks.hook_rot_k(k.transpose(1, 2)).transpose(1, 2)
        v = hooks.hook_v(v.transpose(1, 2)).transpose(1, 2)
        B, H, Tq, D = q.shape
        Tk = k.shape[2]
        start = self._pos_start
        k_pos = torch.arange(start + Tq - Tk, start + Tq, device=q.device)  # keys end at the last query
        chunk = self.spec.layers[l].chunk
        cap = self._capture
        if cap is not None and l in cap.layers:
            local = (torch.full((B, 1), Tq - 1, dtype=torch.long, device=q.device) if cap.query_pos is None
                     else cap.query_pos.to(q.device) - start)  # (B, nq)
            r = A.attention_rows(module, q, k, mask, local, local + start, k_pos, kwargs, chunk)
            full = r.new_zeros(B, H, local.shape[1], start + Tq)  # (B, H, nq, T): keys by absolute position
            full[..., k_pos[0]:] = r
            cap.rows[l] = full
        if hooks.looking():
            local = torch.arange(Tq, device=q.device).expand(B, Tq)
            s = A.masked_scores(module, q, k, A.mask_rows_of(mask, None, B, Tk), local + start, k_pos,
                                kwargs, chunk)  # (B, H, Tq, Tk)
            s = hooks.hook_attn_scores(s)
            p = hooks.hook_pattern(A.softmax_rows(module, s, kwargs))
            z = torch.matmul(p.to(v.dtype), A.repeat_kv(v, H)).transpose(1, 2).contiguous()  # (B, Tq, H, D)
            w = p
        else:
            z, w = A.base_attention(base, module)(module, q, k, v, mask, **kwargs)
        return hooks.hook_z(z), w

    # --- running -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    def forward(self, tokens: torch.Tensor, return_type: str | None = "logits", **hf_kwargs):
        """tokens (B, T) -> logits (B, T, vocab); ``"residual"``: final normed hidden state;
        ``"loss"``: next-token loss; None: run for the hooks only. Extra kwargs go to HF."""
        if tokens.dim() == 1:
            tokens = tokens[None]
        tokens = tokens.to(self.device)
        if hf_kwargs.get("past_key_values") is None and hf_kwargs.get("cache") is None:
            self._pos_start = 0
        if return_type in ("residual", None):
            out = self.hf.base_model(input_ids=tokens, **hf_kwargs).last_hidden_state
            return out if return_type else None
        if return_type == "loss":
            return self.hf(input_ids=tokens, labels=tokens, **hf_kwargs).loss
        if return_type == "logits":
            return self.hf(input_ids=tokens, **hf_kwargs).logits
        raise ValueError(f"return_type: expected 'logits', 'residual', 'loss' or None, got {return_type!r}")

    # --- the detector's row-source interface (see retrieval_heads.detect.rows) -----------
    @property
    def n_layers(self) -> int:
        return self.spec.n_layers

    @property
    def n_heads(self) -> int:
        return self.spec.n_heads

    @property
    def layer_types(self) -> str:
        return self.spec.layout

    @property
    def windows(self) -> list[int | None]:
        return self.spec.windows

    @property
    def stop_ids(self) -> set[int]:
        ids = []
        gc = getattr(self.hf, "generation_config", None)
        for src in (getattr(self.tokenizer, "eos_token_id", None), getattr(gc, "eos_token_id", None),
                    getattr(self.hf.config, "eos_token_id", None)):
            if src is None:
                continue
            ids += list(src) if isinstance(src, (list, tuple)) else [src]
        return {int(i) for i in ids}

    @property
    def eos(self) -> int | None:
        e = getattr(self.tokenizer, "eos_token_id", None)
        if e is None and self.stop_ids:
            e = min(self.stop_ids)
        return e

    def decode(self, ids) -> str:
        """Token ids -> text, cut at the first stop id, without surrounding whitespace."""
        ids = [int(i) for i in ids]
        stops = self.stop_ids
        cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
        if self.tokenizer is None:
            raise ValueError("decode: this HFModel has no tokenizer")
        return self.tokenizer.decode(ids[:cut], skip_special_tokens=True).strip()

    def encode(self, text: str) -> list[int]:
        """Text -> token ids without special tokens (``detect.compat``'s spellings and spans)."""
        if self.tokenizer is None:
            raise ValueError("encode: this HFModel has no tokenizer")
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def token_text(self, token: int) -> str:
        """One token's text, unstripped (a newline ends an answer under ``accept="rouge"``)."""
        if self.tokenizer is None:
            raise ValueError("token_text: this HFModel has no tokenizer")
        return self.tokenizer.decode([int(token)], skip_special_tokens=True)

    def scorable_layers(self, recurrent: bool = False) -> list[int]:
        if recurrent and not self._warned_recurrent and any(c in RECURRENT_KINDS for c in self.layer_types):
            warnings.warn("HF models: effective attention of recurrent layers is not implemented; "
                          "their scores stay NaN", stacklevel=2)
            self._warned_recurrent = True
        return self.spec.attention_layers()

    def _normalise_query_pos(self, query_pos, B: int, T: int) -> torch.Tensor:
        qp = torch.as_tensor(query_pos, dtype=torch.long)
        if qp.dim() == 0:
            qp = qp[None]
        if qp.dim() == 1:
            qp = qp[None].expand(B, -1)
        if qp.shape[0] != B or bool(((qp < 0) | (qp >= T)).any()):
            raise ValueError(f"query_pos: expected positions in [0, {T}) for {B} samples, got {qp.tolist()}")
        return qp

    def _check_rows(self, rows: dict, layers: set):
        missing = sorted(layers - set(rows))
        if missing:
            raise ValueError(f"layers {missing}: attention did not go through transformers' AttentionInterface "
                             f"(custom modeling code?), so their rows cannot be computed")

    @torch.no_grad()
    def prefill_rows(self, tokens: torch.Tensor, query_pos, *, recurrent: bool = False,
                     fwd_hooks=()) -> dict[int, torch.Tensor]:
        """One forward on the model's fast kernels; rows (B, H, nq, T) at ``query_pos`` for
        every attention layer (recurrent layers have none: their scores stay NaN)."""
        if tokens.dim() == 1:
            tokens = tokens[None]
        tokens = tokens.to(self.device)
        B, T = tokens.shape
        layers = set(self.scorable_layers(recurrent))
        cap = _Capture(layers=layers, query_pos=self._normalise_query_pos(query_pos, B, T))
        self._capture, self._pos_start = cap, 0
        try:
            with self.hooks(fwd_hooks=list(fwd_hooks)):
                self.hf.base_model(input_ids=tokens, use_cache=False)
        finally:
            self._capture = None
        self._check_rows(cap.rows, layers)
        return dict(sorted(cap.rows.items()))

    def _step(self, ids: torch.Tensor, cache, start: int):
        self._pos_start = start
        kw = {"use_cache": True, self._cache_kw: cache}
        if self._logits_to_keep:
            kw["logits_to_keep"] = 1
        out = self.hf(input_ids=ids, **kw)
        new = getattr(out, "past_key_values", None)
        return out.logits[:, -1], (new if new is not None else getattr(out, "cache", None))

    @torch.no_grad()
    def decode_rows(self, tokens: torch.Tensor, max_new_tokens: int, *, recurrent: bool = False,
                    fwd_hooks=(), reduce: Callable | None = None, stop_token: int | None = -1):
        """Greedy decoding with the HF cache: prefill ``tokens[:, :-1]``, then feed ``tokens[:, -1]``
        and each generated token; step i's rows (B, H, T + i) come from the query at T - 1 + i.
        ``stop_token`` -1 = the model's stop ids (EOS, generation config), None = never stop."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be >= 1, got {max_new_tokens}")
        stops = self.stop_ids if stop_token == -1 else ({int(stop_token)} if stop_token is not None else set())
        if tokens.dim() == 1:
            tokens = tokens[None]
        tokens = tokens.to(self.device)
        B, T = tokens.shape
        reduce = reduce or (lambda i, l, r: r)
        layers = set(self.scorable_layers(recurrent))
        stop_t = torch.tensor(sorted(stops), dtype=torch.long, device=tokens.device)
        gen, alive, rows = [], [], []
        done = torch.zeros(B, dtype=torch.bool, device=tokens.device)
        try:
            with self.hooks(fwd_hooks=list(fwd_hooks)):
                cache = None
                if T > 1:
                    _, cache = self._step(tokens[:, :-1], None, 0)
                cur = tokens[:, -1]
                for i in range(max_new_tokens):
                    self._capture = _Capture(layers=layers, query_pos=None)
                    logits, cache = self._step(cur[:, None], cache, T - 1 + i)
                    cap, self._capture = self._capture, None
                    self._check_rows(cap.rows, layers)
                    nxt = logits.argmax(-1)  # (B,)
                    gen.append(nxt)
                    alive.append(~done)
                    rows.append({l: reduce(i, l, r[:, :, 0]) for l, r in sorted(cap.rows.items())})
                    if len(stop_t):
                        done = done | torch.isin(nxt, stop_t)
                        if bool(done.all()):
                            break
                    cur = nxt
        finally:
            self._capture = None
        return DecodeRows(generated=torch.stack(gen, 1), alive=torch.stack(alive, 1), rows=rows)

    @torch.no_grad()
    def generate(self, tokens: torch.Tensor, max_new_tokens: int, stop_token: int | None = -1) -> torch.Tensor:
        """Greedy decoding (B, T) -> (B, n) new tokens, without rows."""
        out = self.decode_rows(tokens, max_new_tokens, reduce=lambda i, l, r: None, stop_token=stop_token)
        return out.generated

    def describe(self) -> str:
        head = f"{self.path}" + (f" (step {self.step})" if self.step is not None else "")
        return (head + "\n" if self.path else "") + self.spec.describe() + \
            f"\n  attention kernel: {self._base} (rows via our AttentionInterface hook)"
