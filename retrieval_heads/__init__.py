"""retrieval-heads: a mechanistic-interpretability toolkit for hybrid language models.

    import retrieval_heads as rh
    cfg   = rh.ModelConfig(layout="SSSF", d_model=128, n_heads=4, window=64,
                           pos={"F": "nope", "S": "rope"})
    model = rh.HybridLM(cfg)
    batch = rh.tasks.niah_batch(n=8, context_len=1024, seed=0)
    S     = rh.retrieval_scores(model, batch, method="copy")   # [n_layers, n_heads]
    df    = rh.scan("runs/x")

Names are imported lazily so that ``import retrieval_heads`` stays quick: it imports no torch
until a model, a task or a score is first used.
"""

from __future__ import annotations

import importlib

from ._version import __version__
from .config import ModelConfig, TrainConfig, parse_layout, parse_pos

# public name -> module that defines it (imported on first use)
_LAZY = {
    "HybridLM": "retrieval_heads.model",
    "labels": "retrieval_heads.labels",
    "tasks": "retrieval_heads.tasks",
    "train": "retrieval_heads.train",
    "detect": "retrieval_heads.detect",
    "interventions": "retrieval_heads.interventions",
    "eval": "retrieval_heads.eval",
    "plots": "retrieval_heads.plots",
    "hf": "retrieval_heads.hf",
    "storage": "retrieval_heads.storage",
    "pipeline": "retrieval_heads.pipeline",
    "load_checkpoint": "retrieval_heads.storage",
    "save_checkpoint": "retrieval_heads.storage",
    "list_checkpoints": "retrieval_heads.storage",
    "retrieval_scores": "retrieval_heads.detect",
    "scan": "retrieval_heads.pipeline",
    "ablate_heads": "retrieval_heads.interventions",
}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if module.__name__.endswith("." + name) else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'retrieval_heads' has no attribute {name!r}")


__all__ = ["ModelConfig", "TrainConfig", "parse_layout", "parse_pos", "__version__", *_LAZY]
