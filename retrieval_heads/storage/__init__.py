"""Files on disk: checkpoints (save, load, list, verify) and atomic writes of tables and JSON.

Training writes checkpoints through this package and scanning, evaluation and interventions
read them through it, so there is one reader and one writer of the checkpoint layout
(``docs/ARCHITECTURE.md``, "Checkpoint layout").
"""

from .checkpoint import (CheckpointError, list_checkpoints, load_checkpoint, load_train_state, read_meta,
                         save_checkpoint, step_dir, weights_hash)
from .files import atomic_write, write_json, write_parquet, write_text

__all__ = ["CheckpointError", "list_checkpoints", "load_checkpoint", "load_train_state", "read_meta",
           "save_checkpoint", "step_dir", "weights_hash", "atomic_write", "write_json", "write_parquet",
           "write_text"]
