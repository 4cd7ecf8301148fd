"""Models in: the kinds of model object the detector accepts, and the adapter each goes through.

    import retrieval_heads as rh
    rh.retrieval_scores(model, batch)      # model: HybridLM, HFModel, an HF AutoModelForCausalLM
                                           # instance, or a TransformerLens TransformerBridge

- ``HybridLM`` and ``HFModel`` (and any object with the row-source interface of
  ``retrieval_heads.detect.rows``) are used as they are;
- a ``transformers.PreTrainedModel`` is wrapped in an ``HFModel`` for the call (our hooks go in,
  and come out again afterwards: ``HFModel.detach``); its tokenizer is ``tokenizer=`` or none
  (copy scores then need one: the greedy answer is decoded to be checked);
- a TransformerLens ``TransformerBridge`` is scored through the HF model it wraps
  (``bridge.original_model``) and its tokenizer: the same rows as ``load_hf`` gives, in O(T)
  memory (the bridge's own attention hooks materialise T x T patterns).

Anything else is a ``TypeError`` of one line naming the accepted kinds.
"""

from __future__ import annotations

from contextlib import contextmanager

ACCEPTED = ("a retrieval_heads HybridLM, an HFModel (rh.hf.load_hf), a transformers PreTrainedModel "
            "(AutoModelForCausalLM instance) or a TransformerLens TransformerBridge")


def model_kind(obj) -> str:
    """``"rows"`` (HybridLM / HFModel / a row source), ``"hf"``, ``"bridge"`` or ``"unknown"``."""
    from ..model import HybridLM

    if isinstance(obj, HybridLM) or (hasattr(obj, "prefill_rows") and hasattr(obj, "decode_rows")):
        return "rows"
    mro = [f"{c.__module__}.{c.__name__}" for c in type(obj).__mro__]
    if any(n.endswith(".TransformerBridge") and n.startswith("transformer_lens") for n in mro):
        return "bridge"
    if any(n.startswith("transformers.") and n.endswith(".PreTrainedModel") for n in mro):
        return "hf"
    return "unknown"


def _unbridged(original):
    """The HF model a TransformerBridge was built from, with its own attention modules again: the
    bridge swaps each HF module for a component that re-implements its forward (so transformers'
    AttentionInterface, where our rows are taken, is never called). A fresh model of the same
    config takes the very same parameter tensors (no copy): key ``a._original_component.b`` -> ``a.b``."""
    import torch
    from transformers import AutoModelForCausalLM

    state = {k.replace("._original_component", ""): v for k, v in original.state_dict(keep_vars=True).items()}
    with torch.device(next(original.parameters()).device):
        fresh = AutoModelForCausalLM.from_config(original.config, attn_implementation="eager",
                                                 dtype=next(original.parameters()).dtype)
    missing, _ = fresh.load_state_dict(state, strict=False, assign=True)
    tied = set(getattr(fresh, "_tied_weights_keys", None) or ())
    missing = [k for k in missing if k not in tied]
    if missing:
        raise ValueError(f"TransformerBridge: cannot recover the HF model's weights ({missing[:3]} missing); "
                         "load the checkpoint with rh.hf.load_hf instead")
    if getattr(original.config, "tie_word_embeddings", False):
        fresh.tie_weights()
    return fresh.eval()


@contextmanager
def adapted(obj, tokenizer=None):
    """``obj`` as a model the detector reads (see the module docstring), for a ``with`` block."""
    kind = model_kind(obj)
    if kind == "rows":
        yield obj
        return
    if kind == "unknown":
        raise TypeError(f"model: got {type(obj).__module__}.{type(obj).__name__}; expected {ACCEPTED}")
    from .model import HFModel

    hf = _unbridged(obj.original_model) if kind == "bridge" else obj
    if tokenizer is None:
        tokenizer = getattr(obj, "tokenizer", None)
    wrapped = HFModel(hf, tokenizer)
    try:
        yield wrapped
    finally:
        wrapped.detach()


def score_heads(model, batch, *, tokenizer=None, **kw):
    """``retrieval_heads.detect.score_heads`` on any accepted kind of model."""
    from ..detect.scores import score_heads as _score

    with adapted(model, tokenizer) as m:
        return _score(m, batch, **kw)


def retrieval_scores(model, batch, method: str = "copy", *, tokenizer=None, **kw):
    """``retrieval_heads.detect.retrieval_scores`` on any accepted kind of model: [n_layers, n_heads]."""
    from ..detect.scores import retrieval_scores as _scores

    with adapted(model, tokenizer) as m:
        return _scores(m, batch, method, **kw)
