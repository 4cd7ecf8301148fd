"""Training presets: one JSON file per preset in ``retrieval_heads/data/presets/``.

Each file holds ``{"description": str, "model": {ModelConfig fields}, "train": {TrainConfig
fields}}``; unknown keys are rejected by the dataclasses.

    >>> sorted(list_presets())[:2]
    ['gpu-base', 'gpu-small']
    >>> model_cfg, train_cfg = load_preset("tiny")
    >>> model_cfg.layout
    'SSSF'
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ..config import ModelConfig, TrainConfig


def _preset_dir():
    return resources.files("retrieval_heads") / "data" / "presets"


def list_presets() -> dict[str, str]:
    """Preset name -> one-line description."""
    out = {}
    d = _preset_dir()
    if not d.is_dir():
        return out
    for f in sorted(d.iterdir(), key=lambda p: p.name):
        if f.name.endswith(".json"):
            try:
                out[f.name[:-5]] = json.loads(f.read_text(encoding="utf-8")).get("description", "")
            except (json.JSONDecodeError, UnicodeDecodeError):
                out[f.name[:-5]] = "(unreadable preset file)"
    return out


def load_preset(name: str) -> tuple[ModelConfig, TrainConfig]:
    """(ModelConfig, TrainConfig) of a named preset, or of a preset file ``path/to/x.json``;
    ``ValueError`` lists the valid names."""
    valid = list_presets()
    if name.endswith(".json") and Path(name).is_file():
        f = Path(name)
    elif name not in valid:
        raise ValueError(f"preset: unknown {name!r}; valid presets: {', '.join(valid) or '(none found)'}"
                         " (or a path to a preset .json file)")
    else:
        f = _preset_dir() / f"{name}.json"
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"preset {name!r}: malformed JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"preset {name!r}: expected a JSON object with model and train sections")
    unknown = sorted(set(d) - {"description", "model", "train"})
    if unknown:
        raise ValueError(f"preset {name!r}: unknown key(s) {unknown}; valid: description, model, train")
    return ModelConfig.from_dict(d.get("model", {})), TrainConfig.from_dict(d.get("train", {}))
