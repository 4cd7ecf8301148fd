"""Small helpers shared by several test files (imported as ``from helpers import ...``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_analysis(name: str):
    """``analyses/NAME.py`` loaded by path, as the smoke tests run the scripts."""
    spec = importlib.util.spec_from_file_location(f"analyses_{name}", ROOT / "analyses" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_model(layout: str, *, n_heads: int, window: int, d_model: int = 32, max_seq_len: int = 256, seed: int = 0):
    """A seeded, randomly initialised ``HybridLM`` in eval mode."""
    import torch

    import retrieval_heads as rh

    torch.manual_seed(seed)
    cfg = rh.ModelConfig(layout=layout, d_model=d_model, n_heads=n_heads, window=window, max_seq_len=max_seq_len)
    return rh.HybridLM(cfg).eval()
