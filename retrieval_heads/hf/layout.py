"""Read a Hugging Face config into our layout letters and per-layer positional settings.

One letter per layer, as everywhere in this package: ``F`` full attention, ``S`` local
attention (sliding window, or Llama 4's chunked attention), ``M`` Mamba-style SSM, ``D``
gated DeltaNet, ``L`` lightning / linear attention. Sources, in order:

- ``layer_types`` (Gemma 2/3, Olmo 3, Qwen3 with ``use_sliding_window``, SmolLM3, Llama 4,
  Qwen3-Next / Qwen3.5, MiniMax, ...): ``full_attention`` -> F, ``sliding_attention`` -> S,
  ``chunked_attention`` -> S (with ``chunk`` set), ``linear_attention`` -> D/L/M by model
  type (the name means gated DeltaNet in Qwen3-Next but Mamba-2 in Granite / Bamba);
- ``layers_block_type`` (Jamba, Falcon-H1, Zamba2, Bamba): ``attention`` -> F, ``mamba`` -> M,
  ``hybrid`` -> F with a parallel M mixer (Falcon-H1: attention and Mamba-2 side by side);
- pure SSM model types (mamba, mamba2, falcon_mamba) -> all M;
- otherwise every layer is attention: S when ``sliding_window`` is set (Mistral), else F.

An HF layer type we do not know is an error (pass ``layout=`` to say what it is); a layer's
kind is never guessed. Positions: ``rope`` unless the model has no rotary embedding
(Jamba), ``no_rope_layers[l] == 0`` (SmolLM3, Llama 4; 1 means RoPE) or the family skips
RoPE on its global layers (Cohere2 / Command R7B). ``window`` counts the keys a query sees,
itself included, which is HF's ``sliding_window`` convention.

    >>> from transformers import AutoConfig
    >>> cfg = AutoConfig.for_model("gemma3_text", num_hidden_layers=6, sliding_window=512)
    >>> spec = hf_layout(cfg)
    >>> spec.layout, spec.layers[0].window, spec.layers[5].rope_base
    ('SSSSSF', 512, 1000000.0)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..config import ATTENTION_KINDS, LAYER_KINDS, parse_layout

# HF type names for `linear_attention` layers differ in meaning between families
LINEAR_ATTENTION_KIND = {
    "qwen3_next": "D", "qwen3_5": "D", "qwen3_5_text": "D", "qwen3_5_moe": "D",
    "qwen3_5_moe_text": "D", "olmo_hybrid": "D",
    "minimax": "L",
    "granitemoehybrid": "M", "nemotron_h": "M", "bamba": "M", "zamba2": "M",
    "jamba": "M", "mamba": "M", "mamba2": "M", "falcon_mamba": "M",
}
TYPE_KIND = {
    "full_attention": "F", "attention": "F", "global_attention": "F",
    "sliding_attention": "S", "local_attention": "S", "chunked_attention": "S",
    "mamba": "M", "mamba2": "M", "ssm": "M",
    "hybrid": "F",  # attention with a parallel Mamba mixer (Falcon-H1, Zamba2)
}
SSM_ONLY = ("mamba", "mamba2", "falcon_mamba")
NOPE_GLOBAL = ("cohere2",)  # RoPE only on the sliding layers
ABSOLUTE_POS = ("gpt2", "gpt_neo", "gpt_bigcode", "opt")


@dataclass(frozen=True)
class LayerSpec:
    """One layer of an HF model in our terms."""

    kind: str  # a layout letter (config.LAYER_KINDS): F S M D L
    hf_type: str  # the HF name it came from ("sliding_attention", "mamba", ...)
    pos: str = "-"  # "rope" | "nope" | "abs" | "-" (no attention)
    window: int | None = None  # keys a sliding query sees, itself included
    chunk: int | None = None  # chunked local attention (Llama 4): keys in the same chunk
    rope_base: float | None = None
    rotary_fraction: float = 1.0  # partial rotary (Qwen3-Next 0.25)
    parallel: str | None = None  # a recurrent mixer beside the attention (Falcon-H1: "M")

    @property
    def is_attention(self) -> bool:
        return self.kind in ATTENTION_KINDS

    def describe(self) -> str:
        s = self.kind + (f"+{self.parallel}" if self.parallel else "")
        if self.window:
            s += f" window={self.window}"
        if self.chunk:
            s += f" chunk={self.chunk}"
        if self.is_attention:
            s += f" {self.pos}"
            if self.pos == "rope" and self.rope_base:
                s += f"(base={self.rope_base:g}"
                s += f", {self.rotary_fraction:.0%} of dims)" if self.rotary_fraction != 1.0 else ")"
        return s


@dataclass
class HFLayout:
    """Layout of an HF model: per-layer specs plus the attention geometry."""

    model_type: str
    architecture: str
    layers: list[LayerSpec]
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    notes: list[str] = field(default_factory=list)

    @property
    def layout(self) -> str:
        return "".join(l.kind for l in self.layers)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def windows(self) -> list[int | None]:
        return [l.window or l.chunk for l in self.layers]

    @property
    def pos(self) -> list[str]:
        return [l.pos for l in self.layers]

    def attention_layers(self) -> list[int]:
        return [i for i, l in enumerate(self.layers) if l.is_attention]

    def pos_by_kind(self) -> dict[str, str]:
        """``{"F": "nope", "S": "rope"}``; "mixed" where layers of one kind differ."""
        out: dict[str, set] = {}
        for l in self.layers:
            if l.is_attention:
                out.setdefault(l.kind, set()).add(l.pos)
        return {k: (v.pop() if len(v) == 1 else "mixed") for k, v in out.items()}

    def describe(self) -> str:
        """A few lines: the layout string, the geometry, then one line per run of equal layers."""
        groups = " ".join(self.layout[i:i + 4] for i in range(0, self.n_layers, 4))
        lines = [f"{self.architecture} ({self.model_type}): layout {groups}",
                 f"  {self.n_layers} layers, d_model={self.d_model}, heads={self.n_heads} "
                 f"(kv {self.n_kv_heads}), d_head={self.d_head}; pos {self.pos_by_kind()}"]
        i = 0
        while i < self.n_layers:
            j = i
            while j + 1 < self.n_layers and self.layers[j + 1] == self.layers[i]:
                j += 1
            which = f"layer {i}" if i == j else f"layers {i}-{j}"
            lines.append(f"  {which}: {self.layers[i].describe()}  [{self.layers[i].hf_type}]")
            i = j + 1
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layout"] = self.layout
        return d


def _get(cfg, *names, default=None):
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def _hf_types(cfg, model_type: str, n_layers: int) -> list[str]:
    lt = getattr(cfg, "layer_types", None)
    if lt is None:
        try:
            lt = getattr(cfg, "layers_block_type", None)
        except Exception:  # some configs compute it and may raise on odd settings
            lt = None
    if lt is not None:
        lt = list(lt)
        if len(lt) != n_layers:
            raise ValueError(f"{model_type}: config lists {len(lt)} layer types for "
                             f"num_hidden_layers={n_layers}")
        return [str(t) for t in lt]
    if model_type in SSM_ONLY:
        return ["mamba"] * n_layers
    sw = getattr(cfg, "sliding_window", None)
    if sw and getattr(cfg, "use_sliding_window", True) is not False:
        return ["sliding_attention"] * n_layers
    return ["full_attention"] * n_layers


def _rope_params(cfg, hf_type: str) -> tuple[float | None, float] | None:
    """(base, rotary fraction) of the rotary embedding used by a layer type, or None."""
    rp = getattr(cfg, "rope_parameters", None)
    if rp is None:
        theta = getattr(cfg, "rope_theta", None)
        return None if theta is None else (float(theta), float(getattr(cfg, "partial_rotary_factor", 1.0) or 1.0))
    if isinstance(rp, dict) and hf_type in rp and isinstance(rp[hf_type], dict):
        rp = rp[hf_type]
    elif isinstance(rp, dict) and rp and all(isinstance(v, dict) for v in rp.values()):
        rp = next(iter(rp.values()))
    theta = rp.get("rope_theta") if isinstance(rp, dict) else None
    frac = rp.get("partial_rotary_factor") if isinstance(rp, dict) else None
    frac = frac or getattr(cfg, "partial_rotary_factor", None) or 1.0
    return (None if theta is None else float(theta)), float(frac)


def hf_layout(config, *, layout: str | None = None) -> HFLayout:
    """Map an HF (text) config onto an ``HFLayout``. ``layout`` overrides the letters (same length)."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    model_type = str(getattr(cfg, "model_type", "") or getattr(config, "model_type", ""))
    arch = (getattr(config, "architectures", None) or [None])[0] or model_type
    n_layers = _get(cfg, "num_hidden_layers", "n_layer", "num_layers")
    if n_layers is None:
        raise ValueError(f"{model_type}: config has no num_hidden_layers")
    n_layers = int(n_layers)
    types = _hf_types(cfg, model_type, n_layers)
    notes: list[str] = []

    if layout is not None:
        letters = parse_layout(layout)
        if len(letters) != n_layers:
            raise ValueError(f"layout: {letters!r} has {len(letters)} letters but the model has "
                             f"{n_layers} layers")
    else:
        letters = ""
        for l, t in enumerate(types):
            if t == "linear_attention":
                if model_type not in LINEAR_ATTENTION_KIND:
                    raise ValueError(
                        f"{model_type}: layer {l} is 'linear_attention', which means different mixers in "
                        f"different families; pass layout=... (one of {''.join(LAYER_KINDS)}) to say which")
                letters += LINEAR_ATTENTION_KIND[model_type]
            elif t in TYPE_KIND:
                letters += TYPE_KIND[t]
            else:
                raise ValueError(f"{model_type}: layer {l} has unknown layer type {t!r}; pass layout=... "
                                 f"(letters {', '.join(f'{k}={v}' for k, v in LAYER_KINDS.items())})")

    no_rope = getattr(cfg, "no_rope_layers", None)
    sliding = getattr(cfg, "sliding_window", None)
    chunk = getattr(cfg, "attention_chunk_size", None)
    layers = []
    for l, (kind, t) in enumerate(zip(letters, types)):
        parallel = "M" if t == "hybrid" else None
        if kind not in ATTENTION_KINDS:
            layers.append(LayerSpec(kind=kind, hf_type=t))
            continue
        rope = _rope_params(cfg, t)
        if model_type in ABSOLUTE_POS:
            pos = "abs"
        elif rope is None:
            pos = "nope"
        elif no_rope is not None and not no_rope[l]:
            pos = "nope"  # HF's no_rope_layers: 1 = RoPE, 0 = NoPE
        elif model_type in NOPE_GLOBAL and kind == "F":
            pos = "nope"
        else:
            pos = "rope"
        base, frac = rope if (rope is not None and pos == "rope") else (None, 1.0)
        window = int(sliding) if (kind == "S" and t != "chunked_attention" and sliding) else None
        ch = int(chunk) if (t == "chunked_attention" and chunk) else None
        if kind == "S" and window is None and ch is None:
            raise ValueError(f"{model_type}: layer {l} is local attention but the config gives no "
                             "sliding_window or attention_chunk_size")
        layers.append(LayerSpec(kind=kind, hf_type=t, pos=pos, window=window, chunk=ch,
                                rope_base=base, rotary_fraction=frac, parallel=parallel))

    if any(l.chunk for l in layers):
        notes.append("S layers with chunk=N are chunked attention (keys in the same N-token chunk), "
                     "not a sliding window")
    if any(l.parallel for l in layers):
        notes.append("F+M: attention and a Mamba mixer run side by side in the same layer; only the "
                     "attention heads are scored")
    if getattr(cfg, "attn_temperature_tuning", False) and any(l.pos == "nope" for l in layers):
        notes.append("NoPE layers scale queries with position (Llama 4 attention temperature tuning)")
    if getattr(cfg, "attn_logit_softcapping", None):
        notes.append(f"attention logits soft-capped at {cfg.attn_logit_softcapping}")

    n_heads = int(_get(cfg, "num_attention_heads", "n_head", "num_heads", default=1) or 1)
    d_model = int(_get(cfg, "hidden_size", "d_model", "n_embd", default=0) or 0)
    d_head = int(_get(cfg, "head_dim", "attention_head_dim", default=0) or (d_model // n_heads if n_heads else 0))
    n_kv = int(_get(cfg, "num_key_value_heads", "num_kv_heads", default=n_heads) or n_heads)
    if not any(l.is_attention for l in layers):
        notes.append("no attention layers: nothing to score (all scores NaN)")
    return HFLayout(model_type=model_type, architecture=str(arch), layers=layers, n_heads=n_heads,
                    n_kv_heads=n_kv, d_head=d_head, d_model=d_model, notes=notes)
