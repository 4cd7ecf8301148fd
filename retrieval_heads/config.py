"""Configuration dataclasses: the model (`ModelConfig`) and training (`TrainConfig`).

Both are plain dataclasses with JSON round-trip; unknown keys are rejected and every
invariant is checked in ``__post_init__`` with a ``ValueError`` that names the field.

    >>> cfg = ModelConfig(layout="SSSF", d_model=64, n_heads=4, window=16,
    ...                   pos={"F": "nope", "S": "rope"})
    >>> cfg.n_layers, cfg.d_head, cfg.layer_kind(3)
    (4, 16, 'F')
    >>> ModelConfig.from_json(cfg.to_json()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# One letter per layer kind (see docs/ARCHITECTURE.md, "Conventions"). The attention kinds F
# and S belong to this module (``pos``, ``rope_base`` and ``window`` are theirs). Every other
# letter is a recurrent mixer: its class in ``retrieval_heads/model/mixers/`` declares what it
# is (recurrence family, Q/K weights, hooks, beta) and ``register_mixer`` registers its letter
# here (``register_layer_kind``) when that module is imported. The built-in mixers' letters
# are listed below as well, so that a layout parses before torch and the model package are
# imported (``import retrieval_heads`` loads only this module); ``register_mixer`` checks that
# each has its class. This module imports nothing from the package: the registry is filled
# from above, never looked up from here.
LAYER_KINDS = {
    "F": "full attention",
    "S": "sliding-window attention",
    "M": "Mamba-2-style selective state space",
    "D": "gated DeltaNet",
    "L": "lightning / linear attention with decay",
}
ATTENTION_KINDS = ("F", "S")
BUILTIN_KINDS = tuple(LAYER_KINDS)  # cannot be unregistered


class _RecurrentKinds(Sequence):
    """The registered letters that are not attention kinds, as a live read-only tuple (a
    module that did ``from config import RECURRENT_KINDS`` sees later registrations)."""

    def _letters(self) -> tuple[str, ...]:
        return tuple(k for k in LAYER_KINDS if k not in ATTENTION_KINDS)

    def __getitem__(self, i):
        return self._letters()[i]

    def __len__(self) -> int:
        return len(self._letters())

    def __contains__(self, x) -> bool:
        return isinstance(x, str) and x in LAYER_KINDS and x not in ATTENTION_KINDS

    def __iter__(self):
        return iter(self._letters())

    def __eq__(self, other) -> bool:
        if isinstance(other, (tuple, list, _RecurrentKinds)):
            return self._letters() == tuple(other)
        return NotImplemented

    __hash__ = None

    def __add__(self, other):
        return self._letters() + tuple(other)

    def __radd__(self, other):
        return tuple(other) + self._letters()

    def __repr__(self) -> str:
        return repr(self._letters())


RECURRENT_KINDS = _RecurrentKinds()  # ("M", "D", "L") plus any registered mixer


def register_layer_kind(letter: str, description: str | None = None) -> None:
    """Make ``letter`` a valid layout letter for a recurrent mixer (called by
    ``retrieval_heads.model.mixers.register_mixer``). A letter that is already listed keeps its
    description (``description`` must then be None or the same); a new one needs one."""
    if not (isinstance(letter, str) and len(letter) == 1 and "A" <= letter <= "Z"):
        raise ValueError(f"layer kind: a layout letter is one ASCII capital A-Z, got {letter!r}")
    if letter in ATTENTION_KINDS:
        raise ValueError(f"layer kind: {letter!r} is an attention kind ({LAYER_KINDS[letter]}); "
                         "a mixer needs a letter of its own")
    if letter in LAYER_KINDS:
        if description is not None and description != LAYER_KINDS[letter]:
            raise ValueError(f"layer kind: {letter!r} is already {LAYER_KINDS[letter]!r}; "
                             f"pick another letter for {description!r}")
        return
    if not isinstance(description, str) or not description.strip():
        raise ValueError(f"layer kind {letter!r}: give a description (one line, e.g. 'gated DeltaNet')")
    LAYER_KINDS[letter] = description


def unregister_layer_kind(letter: str) -> None:
    """Remove a letter added by ``register_layer_kind`` (the built-in letters stay)."""
    if letter in BUILTIN_KINDS:
        raise ValueError(f"layer kind: {letter!r} is built in and cannot be unregistered")
    LAYER_KINDS.pop(letter, None)


POS_ENCODINGS = ("rope", "nope")
ATTN_BACKENDS = ("auto", "eager", "sdpa", "blocked", "flex", "flash")
# recurrent mixers (M, D, L): "auto" = flash-linear-attention's kernels for CUDA bf16/fp16
# inputs when fla is installed, else the torch chunked form; "torch" = always the torch
# chunked form; "fla" = fla for every CUDA input (an error if fla is missing). CPU inputs
# always take the torch form (see model/recurrence.py).
RECURRENT_BACKENDS = ("auto", "torch", "fla")


def _ascii_upper(s: str) -> str:
    """Upper-case ASCII letters only: ``str.upper`` maps e.g. 'ſ' to 'S' and 'ß' to 'SS',
    which would silently turn an unknown letter into a layer kind."""
    return "".join(c.upper() if c.isascii() else c for c in s)


def parse_layout(layout: str) -> str:
    """Return the layout with spaces removed, or raise ``ValueError`` on an unknown letter."""
    if not isinstance(layout, str):
        raise ValueError(f"layout: expected a string like 'SSSF', got {type(layout).__name__}")
    clean = _ascii_upper("".join(layout.split()))
    if not clean:
        raise ValueError("layout: empty; give one letter per layer, e.g. 'SSSF'")
    bad = sorted({c for c in clean if c not in LAYER_KINDS})
    if bad:
        valid = ", ".join(f"{k} ({v})" for k, v in LAYER_KINDS.items())
        raise ValueError(f"layout: unknown letter(s) {''.join(bad)!r} in {layout!r}; valid: {valid}")
    return clean


def parse_pos(spec: str | dict | None) -> dict[str, str]:
    """Parse ``"F=nope,S=rope"`` (or a dict) into ``{"F": "nope", "S": "rope"}``."""
    if spec is None:
        return {}
    if isinstance(spec, str):
        out = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            if "=" not in part:
                raise ValueError(f"pos: expected KIND=rope|nope items like 'F=nope,S=rope', got {part!r}")
            k, v = (s.strip() for s in part.split("=", 1))
            if _ascii_upper(k) in out:
                raise ValueError(f"pos: kind {k!r} given twice in {spec!r}")
            out[_ascii_upper(k)] = v
        spec = out
    if not isinstance(spec, dict):
        raise ValueError(f"pos: expected a dict or 'F=nope,S=rope', got {type(spec).__name__}")
    out = {}
    for k, v in spec.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError(f"pos: expected KIND: 'rope'|'nope' string pairs, got {k!r}: {v!r}")
        key = _ascii_upper(k)
        if key in out:
            raise ValueError(f"pos: kind {k!r} given twice")
        out[key] = v.lower() if v.isascii() else v
    return out


MAX_INT = 2**31 - 1  # sizes, lengths and step counts above this are refused (a typo, not a plan)


def _short(value: int) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text)} digits)"


def _check_int(name: str, value: Any, minimum: int = 1, maximum: int | None = MAX_INT) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {_short(value)}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: must be <= {maximum:,}, got {_short(value)}")


def _check_float(name: str, value: Any, positive: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name}: must be > 0, got {value}")


class _JSONMixin:
    """JSON round-trip for a dataclass; unknown keys raise ``ValueError``."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict):
        if not isinstance(d, dict):
            raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names, key=repr)  # keys may be of mixed types
        if unknown:
            raise ValueError(
                f"{cls.__name__}: unknown key(s) {unknown}; valid keys: {sorted(names)}"
            )
        return cls(**d)

    @classmethod
    def from_json(cls, s: str):
        if not isinstance(s, (str, bytes, bytearray)):
            raise ValueError(f"{cls.__name__}: expected a JSON string, got {type(s).__name__}")
        try:
            d = json.loads(s)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ValueError(f"{cls.__name__}: malformed JSON ({e})") from None
        return cls.from_dict(d)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass
class ModelConfig(_JSONMixin):
    """A hybrid language model. ``layout`` has one letter per layer (see ``LAYER_KINDS``).

    ``window`` is the number of keys a sliding-window query sees, *including itself*.
    ``pos`` maps attention kinds to ``rope``/``nope``; ``rope_base`` maps them to a base.
    """

    layout: str = "SSSF"
    n_layers: int | None = None  # derived from layout when None; must match it otherwise
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int | None = None  # grouped-query attention; None = n_heads
    d_mlp: int | None = None  # SwiGLU hidden size; None = 4 * d_model
    vocab_size: int = 260
    window: int = 64
    pos: dict = field(default_factory=lambda: {"F": "rope", "S": "rope"})
    rope_base: dict = field(default_factory=lambda: {"F": 10000.0, "S": 10000.0})
    max_seq_len: int = 4096
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    d_state: int = 16  # state size of the Mamba-2-style mixer (B_t, C_t dimension)
    chunk_size: int = 64  # chunk length of the chunked recurrent forms
    attn_backend: str = "auto"
    recurrent_backend: str = "auto"  # one of RECURRENT_BACKENDS
    init_std: float = 0.02

    def __post_init__(self):
        self.layout = parse_layout(self.layout)
        if self.n_layers is None:
            self.n_layers = len(self.layout)
        _check_int("n_layers", self.n_layers)
        if len(self.layout) != self.n_layers:
            raise ValueError(
                f"layout: {self.layout!r} has {len(self.layout)} letters but n_layers={self.n_layers}; "
                "give exactly one letter per layer"
            )
        for name in ("d_model", "n_heads", "vocab_size", "window", "max_seq_len", "d_state", "chunk_size"):
            _check_int(name, getattr(self, name))
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model: {self.d_model} is not divisible by n_heads={self.n_heads}"
            )
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        _check_int("n_kv_heads", self.n_kv_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_kv_heads: n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        _check_int("d_mlp", self.d_mlp)
        if "S" in self.layout and self.window > self.max_seq_len:
            raise ValueError(
                f"window: {self.window} is larger than max_seq_len={self.max_seq_len}; "
                "a sliding window cannot exceed the context"
            )
        pos = parse_pos(self.pos)
        for k, v in pos.items():
            if k not in ATTENTION_KINDS:
                raise ValueError(f"pos: {k!r} is not an attention kind; use one of {ATTENTION_KINDS}")
            if v not in POS_ENCODINGS:
                raise ValueError(f"pos: {k}={v!r}; use one of {POS_ENCODINGS}")
        self.pos = {k: pos.get(k, "rope") for k in ATTENTION_KINDS}
        if isinstance(self.rope_base, (int, float)) and not isinstance(self.rope_base, bool):
            self.rope_base = {k: float(self.rope_base) for k in ATTENTION_KINDS}
        if not isinstance(self.rope_base, dict):
            raise ValueError(f"rope_base: expected a number or a dict per kind, got {self.rope_base!r}")
        base = {}
        for k, v in self.rope_base.items():
            key = _ascii_upper(k) if isinstance(k, str) else k
            if key in base:
                raise ValueError(f"rope_base: kind {k!r} given twice")
            base[key] = v
        for k, v in base.items():
            if k not in ATTENTION_KINDS:
                raise ValueError(f"rope_base: {k!r} is not an attention kind; use one of {ATTENTION_KINDS}")
            _check_float(f"rope_base[{k}]", v)
        self.rope_base = {k: float(base.get(k, 10000.0)) for k in ATTENTION_KINDS}
        rope_kinds = sorted({c for c in self.layout if c in ATTENTION_KINDS and self.pos[c] == "rope"})
        if rope_kinds and self.d_head % 2:
            raise ValueError(
                f"d_model: d_head = d_model / n_heads = {self.d_model} / {self.n_heads} = {self.d_head} "
                f"must be even for RoPE (used by layer kind(s) {''.join(rope_kinds)}); "
                "change d_model or n_heads, or use pos='nope' for those kinds"
            )
        _check_float("norm_eps", self.norm_eps)
        _check_float("init_std", self.init_std)
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"tie_embeddings: expected true/false, got {self.tie_embeddings!r}")
        if self.attn_backend not in ATTN_BACKENDS:
            raise ValueError(f"attn_backend: {self.attn_backend!r}; use one of {ATTN_BACKENDS}")
        if self.recurrent_backend not in RECURRENT_BACKENDS:
            raise ValueError(f"recurrent_backend: {self.recurrent_backend!r}; use one of {RECURRENT_BACKENDS}")

    # --- derived quantities (TransformerLens's ActivationCache reads some of these) ---
    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def normalization_type(self) -> str:
        return "RMS"

    @property
    def attn_only(self) -> bool:
        return False

    def layer_kind(self, layer: int) -> str:
        return self.layout[layer]

    def is_attention(self, layer: int) -> bool:
        return self.layout[layer] in ATTENTION_KINDS

    @property
    def attention_layers(self) -> list[int]:
        return [i for i, c in enumerate(self.layout) if c in ATTENTION_KINDS]

    def layer_window(self, layer: int) -> int | None:
        """Keys a query of this layer sees (including itself); None = unlimited (causal)."""
        return self.window if self.layout[layer] == "S" else None

    def describe(self) -> str:
        kinds = ", ".join(f"{k}={self.pos[k]}" for k in ATTENTION_KINDS if k in self.layout)
        return (
            f"layout={self.layout} d_model={self.d_model} heads={self.n_heads}"
            f" window={self.window} pos[{kinds}]"
        )


# learning-rate schedules after the linear warmup (``retrieval_heads.train.loop.lr_at``)
LR_SCHEDULES = ("cosine", "wsd")


@dataclass
class TrainConfig(_JSONMixin):
    """Training hyper-parameters. See ``retrieval_heads.train`` for the loop.

    ``batch_size`` is the *global* batch of one optimizer step: it is split over
    ``world_size × grad_accum`` micro-batches (torchrun ranks × accumulation steps), so the
    data and the trajectory do not depend on how many processes train.
    """

    steps: int = 1000
    batch_size: int = 8  # global rows per optimizer step (all ranks and micro-steps together)
    grad_accum: int = 1
    context_len: int = 256
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # the schedule's last learning rate, as a fraction of lr (1.0 = constant)
    warmup_steps: int = 50
    lr_schedule: str = "cosine"  # after warmup: "cosine" to min_lr_ratio, or "wsd" (constant, then decay)
    decay_fraction: float = 0.3  # "wsd": the last fraction of the steps decays linearly to min_lr_ratio
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    niah_fraction: float = 0.5  # fraction of training sequences that are needle tasks
    niah_variant: str = "single_1"
    haystack: str = "essay"  # LM text: built-in haystack name or a path to a text file / folder
    niah_haystack: str | None = None  # haystack of the training needles; None = the variant's own
    niah_context_weight: float = 0.0  # loss weight of a needle row's prompt tokens (answer = 1)
    induction_fraction: float = 0.0  # fraction of rows holding a repeated random string
    induction_min_period: int = 8  # shortest repeated string of an induction row (bytes)
    induction_max_period: int = 48  # longest repeated string of an induction row (bytes)
    eval_every: int = 100
    eval_samples: int = 16
    save_every: int = 100
    save_log_spaced: bool = True  # also save at log-spaced early steps (1, 2, 4, 8, ...)
    device: str = "auto"
    dtype: str = "auto"  # auto = bf16 autocast on CUDA, float32 on CPU
    compile: bool = False

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "context_len", "eval_every",
                     "eval_samples", "save_every"):
            _check_int(name, getattr(self, name))
        _check_int("warmup_steps", self.warmup_steps, minimum=0)
        _check_int("seed", self.seed, minimum=0, maximum=None)
        if self.seed >= 2**63:  # torch.manual_seed takes < 2**64; keep room for derived seeds
            raise ValueError(f"seed: must be < 2**63, got {self.seed}")
        _check_float("lr", self.lr)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule: {self.lr_schedule!r}; use one of {', '.join(LR_SCHEDULES)}")
        for name in ("min_lr_ratio", "decay_fraction", "niah_fraction", "niah_context_weight", "induction_fraction"):
            v = getattr(self, name)
            _check_float(name, v, positive=False)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}: must lie in [0, 1], got {v}")
        for name in ("weight_decay", "grad_clip"):
            _check_float(name, getattr(self, name), positive=False)
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        _check_int("induction_min_period", self.induction_min_period)
        _check_int("induction_max_period", self.induction_max_period)
        if self.induction_max_period < self.induction_min_period:
            raise ValueError(f"induction_max_period: must be >= induction_min_period "
                             f"({self.induction_min_period}), got {self.induction_max_period}")
        if self.induction_fraction > 0 and self.induction_min_period >= self.context_len - 1:
            raise ValueError(f"induction_min_period: {self.induction_min_period} leaves no repeat to predict in "
                             f"context_len {self.context_len}; use at most {self.context_len // 2}")
        if self.niah_fraction + self.induction_fraction > 1.0:
            raise ValueError(f"niah_fraction + induction_fraction: must be <= 1, got "
                             f"{self.niah_fraction} + {self.induction_fraction}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype: {self.dtype!r}; use auto, float32 or bfloat16")
