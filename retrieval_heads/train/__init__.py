"""Training: loop, checkpoints (save/load/list), presets, torchrun DDP.

    import retrieval_heads as rh
    model_cfg, train_cfg = rh.train.load_preset("tiny")
    result = rh.train.train(model_cfg, train_cfg, "runs/tiny")
    rh.list_checkpoints("runs/tiny")            # step order
    model = rh.load_checkpoint("runs/tiny/step_001000")
"""

from .checkpoint import (CheckpointError, list_checkpoints, load_checkpoint, load_train_state,
                         read_meta, save_checkpoint, step_dir, weights_hash)
from .loop import (check_configs, checkpoint_steps, eval_steps, evaluate, lr_at, read_metrics,
                   train)
from .presets import list_presets, load_preset

__all__ = ["CheckpointError", "list_checkpoints", "load_checkpoint", "load_train_state",
           "read_meta", "save_checkpoint", "step_dir", "weights_hash", "train", "evaluate",
           "lr_at", "checkpoint_steps", "eval_steps", "check_configs", "read_metrics",
           "list_presets", "load_preset"]
