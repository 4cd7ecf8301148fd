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
import importlib.abc
import importlib.util
import logging
import sys

from ._version import __version__
from .config import ModelConfig, TrainConfig, parse_layout, parse_pos

# the library's one logger ("retrieval_heads"; modules log to children of it): quiet unless the
# application configures logging (the CLI does: --verbose / --quiet)
logging.getLogger(__name__).addHandler(logging.NullHandler())

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
    "retrieval_scores": "retrieval_heads.hf.adapt",  # any model kind: HybridLM, HFModel, HF, TransformerBridge
    "score_heads": "retrieval_heads.hf.adapt",
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


# --- transformers' Auto classes ---------------------------------------------------------------
# HybridLM.save_pretrained folders (model_type "retrieval_heads_hybrid") load with
# transformers.AutoModelForCausalLM.from_pretrained once retrieval_heads is imported. The
# registration (retrieval_heads.hf.auto, which needs torch and transformers) runs right after
# transformers imports its Auto modelling module, never at ``import retrieval_heads``.
_AUTO_MODULE = "transformers.models.auto.modeling_auto"


def _register_with_transformers() -> None:
    try:
        importlib.import_module("retrieval_heads.hf.auto")
    except Exception as e:  # never break the user's import of transformers
        import warnings
        warnings.warn(f"retrieval_heads: could not register HybridLM with transformers' Auto classes ({e})",
                      stacklevel=2)


class _AutoRegistration(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _AUTO_MODULE:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # one shot; the other finders locate the module
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            sys.modules[name] = module
            _register_with_transformers()

        spec.loader.exec_module = exec_module
        return spec


if _AUTO_MODULE in sys.modules:
    _register_with_transformers()
elif not any(isinstance(f, _AutoRegistration) for f in sys.meta_path):
    sys.meta_path.insert(0, _AutoRegistration())


__all__ = ["ModelConfig", "TrainConfig", "parse_layout", "parse_pos", "__version__", *_LAZY]
