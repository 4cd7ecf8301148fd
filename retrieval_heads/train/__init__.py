"""Training: loop, checkpoints (save/load/list), presets, torchrun DDP."""

from .checkpoint import (CheckpointError, list_checkpoints, load_checkpoint, load_train_state,
                         read_meta, save_checkpoint, step_dir, weights_hash)

__all__ = ["CheckpointError", "list_checkpoints", "load_checkpoint", "load_train_state",
           "read_meta", "save_checkpoint", "step_dir", "weights_hash"]
