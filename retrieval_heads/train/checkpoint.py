"""Moved to :mod:`retrieval_heads.storage.checkpoint` (training and scanning share it).

``retrieval_heads.train.checkpoint`` stays importable for existing code and is the very same
module object, so attributes set on it (monkeypatching in tests) reach the real one.
"""

import sys

from ..storage import checkpoint as _checkpoint

sys.modules[__name__] = _checkpoint
