"""Training: loop, checkpoints (save/load/list), presets, torchrun DDP.

    import retrieval_heads as rh
    model_cfg, train_cfg = rh.train.load_preset("tiny")
    result = rh.train.train(model_cfg, train_cfg, "runs/tiny")
    rh.list_checkpoints("runs/tiny")            # step order
    model = rh.load_checkpoint("runs/tiny/step_001000")
"""

from __future__ import annotations

import importlib

# public name -> submodule that defines it. Imported on first use, so that reading the presets
# (`retrieval-heads train --help`) does not import torch.
_NAMES = {
    # checkpoint I/O lives in retrieval_heads.storage; these names stay here for existing code
    "CheckpointError": "checkpoint", "list_checkpoints": "checkpoint", "load_checkpoint": "checkpoint",
    "load_train_state": "checkpoint", "read_meta": "checkpoint", "save_checkpoint": "checkpoint",
    "step_dir": "checkpoint", "weights_hash": "checkpoint",
    "check_configs": "loop", "checkpoint_steps": "loop", "eval_steps": "loop", "evaluate": "loop",
    "lr_at": "loop", "read_metrics": "loop", "train": "loop",
    "list_presets": "presets", "load_preset": "presets",
}
_SUBMODULES = {"checkpoint", "loop", "presets"}


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = sorted(_NAMES)
