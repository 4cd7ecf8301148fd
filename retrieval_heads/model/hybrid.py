"""`HybridLM`: a small hybrid language model whose every head is hookable.

Pre-norm blocks: ``x + mixer(RMSNorm(x))`` then ``x + SwiGLU(RMSNorm(x))``; the mixer is an
`Attention` (layout letters F, S) or a recurrent mixer (M, D, L, or any registered with
``mixers.register_mixer``; ``token_mixer_class`` maps a letter to its class). Subclasses TransformerLens's
``HookedRootModule``, so ``run_with_cache``, ``run_with_hooks`` and ``ActivationCache`` work.

Block hooks: ``blocks.{l}.hook_resid_pre``, ``hook_resid_mid``, ``hook_resid_post``,
``hook_mlp_out``, and ``hook_attn_out`` (attention layers) or ``hook_mixer_out`` (recurrent).

    >>> import retrieval_heads as rh, torch
    >>> model = rh.HybridLM(rh.ModelConfig(layout="SF", d_model=32, n_heads=2, window=4))
    >>> model(torch.zeros(1, 5, dtype=torch.long)).shape
    torch.Size([1, 5, 260])
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from ..config import ATTENTION_KINDS, LAYER_KINDS, ModelConfig
from .attention import Attention
from .mixers import MIXERS
from .tokenizer import ByteCodec

# Hugging Face folder conventions (``save_pretrained``): config.json's model_type and architecture,
# registered with transformers' Auto classes by ``retrieval_heads.hf.auto``
HF_MODEL_TYPE = "retrieval_heads_hybrid"
HF_ARCHITECTURE = "HybridLMForCausalLM"
HF_PREFIX = "model."  # the wrapper holds the HybridLM as ``.model``


def token_mixer_class(kind: str) -> type[nn.Module]:
    """The module class of a layout letter: ``Attention`` for F and S, else the mixer class
    registered under it (``mixers.register_mixer``). Both carry the declarations the detector
    reads: ``submodule`` ("attn" / "mixer"), ``qk_weights``, ``hooks``."""
    if kind in ATTENTION_KINDS:
        return Attention
    if kind not in MIXERS:
        raise ValueError(f"layer kind {kind!r}: no mixer class is registered for it "
                         f"(registered: {', '.join(ATTENTION_KINDS + tuple(MIXERS))}; "
                         f"layout letters: {', '.join(LAYER_KINDS)})")
    return MIXERS[kind]


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_gate = nn.Linear(cfg.d_model, cfg.d_mlp, bias=False)
        self.W_in = nn.Linear(cfg.d_model, cfg.d_mlp, bias=False)
        self.W_out = nn.Linear(cfg.d_mlp, cfg.d_model, bias=False)
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x):
        return self.W_out(self.hook_post(F.silu(self.W_gate(x)) * self.W_in(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.kind = cfg.layer_kind(layer)
        self.ln1 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ln2 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        if cfg.is_attention(layer):
            self.attn = Attention(cfg, layer)
            self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        else:
            self.mixer = token_mixer_class(self.kind)(cfg, layer)
            self.hook_mixer_out = HookPoint()  # [batch, pos, d_model]
        self.mlp = SwiGLU(cfg)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    @property
    def token_mixer(self) -> nn.Module:
        return self.attn if hasattr(self, "attn") else self.mixer

    def forward(self, x, positions, cache=None):
        x = self.hook_resid_pre(x)
        if hasattr(self, "attn"):
            x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln1(x), positions, cache)))
        else:
            x = self.hook_resid_mid(x + self.hook_mixer_out(self.mixer(self.ln1(x), positions, cache)))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln2(x))))


class DecodeCache:
    """Per-layer state for incremental decoding: K/V for attention, S for recurrences."""

    def __init__(self, n_layers: int):
        self.layers: list[dict] = [dict() for _ in range(n_layers)]
        self.length = 0  # tokens consumed so far

    def __len__(self):
        return self.length


def hf_config_dict(cfg: ModelConfig) -> dict:
    """config.json of ``save_pretrained``: HF's keys plus our ModelConfig under ``hybrid``."""
    return {"model_type": HF_MODEL_TYPE, "architectures": [HF_ARCHITECTURE], "hybrid": cfg.to_dict(),
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads, "max_position_embeddings": cfg.max_seq_len,
            "tie_word_embeddings": bool(cfg.tie_embeddings), "bos_token_id": ByteCodec.BOS,
            "eos_token_id": ByteCodec.EOS, "pad_token_id": ByteCodec.PAD}


def read_hf_config_dict(f) -> ModelConfig:
    """The ModelConfig of a ``save_pretrained`` config.json (ValueError naming the file otherwise)."""
    f = Path(f)
    try:
        d = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{f}: unreadable ({e})") from None
    if not isinstance(d, dict) or d.get("model_type") != HF_MODEL_TYPE or not isinstance(d.get("hybrid"), dict):
        raise ValueError(f"{f}: not a HybridLM save_pretrained config (model_type {HF_MODEL_TYPE!r} "
                         "with a 'hybrid' section)")
    return ModelConfig.from_dict(d["hybrid"])


class HybridLM(HookedRootModule):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if isinstance(cfg, dict):
            cfg = ModelConfig.from_dict(cfg)
        cfg = dataclasses.replace(cfg)  # our own copy: it carries TransformerLens's extra attributes
        # what TransformerLens's ActivationCache and transformer_lens.patching read from model.cfg
        cfg.device = "cpu"
        cfg.n_key_value_heads = cfg.n_kv_heads
        cfg.use_split_qkv_input = False
        cfg.use_attn_result = False
        cfg.default_prepend_bos = True
        cfg.d_vocab = cfg.vocab_size
        cfg.n_ctx = cfg.max_seq_len
        self.cfg = cfg
        self.tokenizer = ByteCodec()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.blocks = nn.ModuleList([Block(cfg, l) for l in range(cfg.n_layers)])
        self.ln_final = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.unembed.weight = self.embed.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # scaled init of residual output projections
            if name.endswith(("W_O.weight", "out_proj.weight", "W_out.weight")):
                nn.init.normal_(p, 0.0, cfg.init_std / math.sqrt(2 * cfg.n_layers))
        self.setup()

    def _init_weights(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, self.cfg.init_std)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self.cfg.device = str(self.embed.weight.device)  # .to() / .cuda() keep cfg.device current
        return out

    # --- TransformerLens habits --------------------------------------------------------
    def run_with_cache(self, *args, return_cache_object: bool = True, remove_batch_dim: bool = False, **kwargs):
        """As HookedTransformer's: (output, ``ActivationCache``) so that ``stack_head_results``,
        ``decompose_resid`` and ``cache["pattern", l]`` work; ``return_cache_object=False`` gives
        the plain dict."""
        from transformer_lens import ActivationCache

        out, cache = super().run_with_cache(*args, remove_batch_dim=remove_batch_dim, **kwargs)
        if return_cache_object:
            cache = ActivationCache(cache, self, has_batch_dim=not remove_batch_dim)
        return out, cache

    def to_tokens(self, text, prepend_bos: bool = True, truncate: bool = True) -> torch.Tensor:
        """Text (or a list of texts) -> (B, T) long token ids (BOS first unless ``prepend_bos=False``),
        padded on the right with PAD; ``truncate`` cuts to ``max_seq_len``."""
        texts = [text] if isinstance(text, str) else list(text)
        ids = [self.tokenizer.encode(t, add_special_tokens=prepend_bos) for t in texts]
        if truncate:
            ids = [x[:self.cfg.max_seq_len] for x in ids]
        T = max(map(len, ids))
        out = torch.full((len(ids), T), self.tokenizer.pad_token_id, dtype=torch.long)
        for i, x in enumerate(ids):
            out[i, :len(x)] = torch.tensor(x, dtype=torch.long)
        return out.to(self.device)

    def to_string(self, tokens):
        """Token ids (T,) -> text; (B, T) or a list of lists -> a list of texts."""
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.tolist()
        if tokens and isinstance(tokens[0], (list, tuple)):
            return [self.tokenizer.decode(t, stop_at_eos=False) for t in tokens]
        return self.tokenizer.decode(tokens, stop_at_eos=False)

    def to_str_tokens(self, text_or_tokens, prepend_bos: bool = True) -> list[str]:
        ids = self.to_tokens(text_or_tokens, prepend_bos)[0] if isinstance(text_or_tokens, str) else text_or_tokens
        ids = ids.flatten().tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return self.tokenizer.convert_ids_to_tokens(ids)

    # --- Hugging Face folder conventions ------------------------------------------------
    def save_pretrained(self, save_directory, **_) -> Path:
        """Write ``config.json`` (``model_type`` ``retrieval_heads_hybrid``) and ``model.safetensors``
        in Hugging Face's folder layout; ``transformers.AutoModelForCausalLM.from_pretrained(dir)``
        reads it back after ``import retrieval_heads`` (see ``retrieval_heads.hf.auto``)."""
        from safetensors.torch import save_file

        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        state = {}
        for k, v in self.state_dict().items():
            if self.cfg.tie_embeddings and k == "unembed.weight":
                continue  # tied: stored once, as embed.weight
            state[HF_PREFIX + k] = v.detach().to("cpu").contiguous()
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
        (path / "config.json").write_text(json.dumps(hf_config_dict(self.cfg), indent=2, sort_keys=True))
        return path

    @classmethod
    def from_pretrained(cls, path, device: str | torch.device = "cpu") -> HybridLM:
        """Read a ``save_pretrained`` folder (no transformers needed), in eval mode."""
        from safetensors.torch import load_file

        path = Path(path)
        cfg = read_hf_config_dict(path / "config.json")
        model = cls(cfg)
        state = load_file(str(path / "model.safetensors"), device="cpu")
        state = {k[len(HF_PREFIX):]: v for k, v in state.items() if k.startswith(HF_PREFIX)}
        if cfg.tie_embeddings:
            state.setdefault("unembed.weight", state.get("embed.weight"))
        expected = model.state_dict()
        bad = sorted(set(expected) ^ set(state))
        if bad:
            raise ValueError(f"{path / 'model.safetensors'}: tensors do not match config.json ({bad[:3]})")
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
        return model.to(device).eval()

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None,
                cache: DecodeCache | None = None, return_type: str = "logits"):
        """tokens (B, T) -> logits (B, T, vocab).

        ``positions`` (T,) overrides position ids (default: 0..T-1, continuing ``cache``).
        ``return_type="residual"`` returns the final normalised residual instead of logits.
        """
        if tokens.dim() == 1:
            tokens = tokens[None]
        B, T = tokens.shape
        start = cache.length if cache is not None else 0
        if positions is None:
            positions = torch.arange(start, start + T, device=tokens.device)
        if int(positions.max()) >= self.cfg.max_seq_len:
            raise ValueError(
                f"context of {int(positions.max()) + 1} tokens exceeds max_seq_len={self.cfg.max_seq_len}; "
                "build the model with a larger max_seq_len"
            )
        x = self.hook_embed(self.embed(tokens))  # (B, T, d_model)
        for l, block in enumerate(self.blocks):
            x = block(x, positions, None if cache is None else cache.layers[l])
        if cache is not None:
            cache.length += T
        x = self.ln_final(x)
        if return_type == "residual":
            return x
        return self.unembed(x)  # (B, T, vocab)

    def new_cache(self) -> DecodeCache:
        return DecodeCache(self.cfg.n_layers)

    @torch.no_grad()
    def generate(self, tokens: torch.Tensor, max_new_tokens: int, stop_token: int | None = None,
                 cache: DecodeCache | None = None) -> torch.Tensor:
        """Greedy decoding with a decode cache. tokens (B, T) -> new tokens (B, max_new_tokens).

        Prefill runs on the fast path; each decode step computes one attention row per head.
        """
        if tokens.dim() == 1:
            tokens = tokens[None]
        cache = cache if cache is not None else self.new_cache()
        logits = self(tokens, cache=cache)
        out = []
        nxt = logits[:, -1].argmax(-1)  # (B,)
        for i in range(max_new_tokens):
            out.append(nxt)
            if stop_token is not None and bool((torch.stack(out, 1) == stop_token).any(1).all()):
                break
            if i == max_new_tokens - 1:
                break
            nxt = self(nxt[:, None], cache=cache)[:, -1].argmax(-1)
        return torch.stack(out, dim=1)

    def set_force_eager(self, value: bool = True) -> None:
        """Make every attention layer take the eager path (needed when hooking with nnsight)."""
        for block in self.blocks:
            if hasattr(block, "attn"):
                block.attn.force_eager = value

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed.weight.numel()
        return n
