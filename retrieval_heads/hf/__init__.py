"""Hugging Face checkpoints of real hybrids (Gemma 2/3, Olmo 3, Qwen3, Mistral, SmolLM3,
Llama 4, Qwen3-Next / Qwen3.5, Jamba, Falcon-H1, Mamba-2, ...) under the same detector.

    import retrieval_heads as rh
    from retrieval_heads import hf
    model = hf.load_hf("path/to/checkpoint")            # HFModel: our hook names + row interface
    print(model.describe())                              # layout letters, windows, rope/nope per layer
    batch = hf.hf_needle_batch(model.tokenizer, n=8, context_len=4096)   # exact token spans
    S = rh.retrieval_scores(model, batch, method="copy")  # [n_layers, n_heads], NaN off attention
    df = rh.scan("path/to/series")                        # checkpoint-*/step* in training order

Modules: ``layout`` (HF config -> F/S/M/D/L + positions), ``loader`` (offline loading,
checkpoint series), ``model`` (``HFModel``), ``attention`` (our AttentionInterface seat and
the row math), ``needles`` (tokenizer-based needle prompts), ``testing`` (tiny random
models and tokenizers built offline). Scans of HF checkpoints live with the other scans in
:mod:`retrieval_heads.pipeline` (``rh.scan`` dispatches).
"""

from .layout import HFLayout, LayerSpec, hf_layout
from .loader import (
    HFCheckpoint,
    is_hf_checkpoint,
    is_hf_path,
    list_hf_checkpoints,
    load_bridge,
    load_hf,
    load_hf_model,
    load_tokenizer,
)
from .needles import HFNeedleBatch, SpanError, hf_needle_batch, hf_needle_pairs, make_hf_sample

__all__ = [
    "HFLayout", "LayerSpec", "hf_layout", "HFCheckpoint", "is_hf_checkpoint", "is_hf_path",
    "list_hf_checkpoints", "load_bridge", "load_hf", "load_hf_model", "load_tokenizer", "HFNeedleBatch",
    "SpanError", "hf_needle_batch", "hf_needle_pairs", "make_hf_sample", "HFModel",
]


def __getattr__(name):  # torch-heavy pieces on first use
    if name == "HFModel":
        from .model import HFModel
        return HFModel
    raise AttributeError(f"module 'retrieval_heads.hf' has no attribute {name!r}")
