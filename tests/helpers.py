"""Small helpers shared by several test files (imported as ``from helpers import ...``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import retrieval_heads as rh

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"

# a micro model and training schedule (seconds on one core), shared by the training tests
MC = rh.ModelConfig(layout="SF", d_model=16, n_heads=2, d_mlp=32, window=8, max_seq_len=512,
                    pos={"F": "nope", "S": "rope"})
TC = rh.TrainConfig(steps=6, batch_size=4, context_len=140, lr=3e-3, warmup_steps=2, eval_every=3,
                    eval_samples=2, save_every=3, niah_fraction=0.5, induction_fraction=0.25,
                    haystack="essay", device="cpu", seed=1)


def write_preset(path, mc=MC, tc=TC):
    path.write_text(json.dumps({"description": "test", "model": mc.to_dict(), "train": tc.to_dict()}))
    return str(path)


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
