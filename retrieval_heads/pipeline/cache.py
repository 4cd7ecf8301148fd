"""The scan's cache: one JSON entry per (checkpoint, settings) for the scores and per (checkpoint,
reference) for the Q/K distances, the remembered weight hashes, and the checks that keep a
damaged entry from ever being trusted (it is named, ignored and rebuilt by the scan)."""

from __future__ import annotations

import json
from pathlib import Path

from ..detect.metrics import attention_metrics, metric, weight_metrics
from ..storage.checkpoint import weights_hash
from ..storage.files import read_json_or_empty

SCORE_VERSION = 2  # bump when the scoring rules change: invalidates every cache entry
CAUSAL_VERSION = 1  # the causal scores' own entries (``causal-*.json``, scans with causal=True)


def _cache_file(cache_dir: Path, sha: str, settings_key: str, config_sha: str | None = None) -> Path:
    """The scores of one checkpoint: keyed by its weights, its config.json (a changed config
    may no longer load: it must be scored again, not served from the cache) and the settings."""
    config = f"-{config_sha[:12]}" if config_sha else ""
    return cache_dir / f"scores-{sha[:20]}{config}-{settings_key[:12]}.json"


def _causal_file(cache_dir: Path, sha: str, settings_key: str, config_sha: str | None = None) -> Path:
    """The causal scores of one checkpoint (``rh.scan(..., causal=True)``), beside its scores."""
    config = f"-{config_sha[:12]}" if config_sha else ""
    return cache_dir / f"causal-{sha[:20]}{config}-{settings_key[:12]}.json"


def _check_causal(d, sha: str, skey: str) -> None:
    """ValueError unless ``d`` is a causal cache entry of these weights and settings with a
    matrix for every causal metric."""
    from ..detect.metrics import causal_metrics

    if not isinstance(d, dict):
        raise ValueError(f"a JSON {type(d).__name__}, not an object")
    if d.get("version") != CAUSAL_VERSION or d.get("weights_sha256") != sha or d.get("settings_key") != skey:
        raise ValueError("version, weights_sha256 or settings_key do not match")
    layout, n_heads, layers, metrics = d.get("layout"), d.get("n_heads"), d.get("layers"), d.get("metrics")
    if not isinstance(layout, str) or not _is_int(n_heads) or not isinstance(layers, list) \
            or not all(_is_int(l) and 0 <= l < len(layout) for l in layers) or not isinstance(metrics, dict):
        raise ValueError("layout, n_heads, layers or metrics missing or of the wrong type")
    for m in causal_metrics():
        _check_matrix(metrics.get(m), len(layout), n_heads, layers, f"metrics.{m}")


def _qk_file(cache_dir: Path, sha: str, ref_sha: str, recurrent: bool) -> Path:
    return cache_dir / f"qk-{sha[:20]}-{ref_sha[:20]}-{'r' if recurrent else 'a'}.json"


class _HashCache:
    """sha256 of checkpoint weights, remembered per (file, size, mtime) in ``hashes``."""

    def __init__(self, d: dict):
        self.d = d

    def get(self, ckpt: Path) -> str:
        f = ckpt / "model.safetensors"
        st = f.stat()  # FileNotFoundError if missing
        key = str(f.resolve())
        sig = [st.st_size, st.st_mtime_ns]
        hit = self.d.get(key)
        if isinstance(hit, list) and len(hit) == 3 and hit[:2] == sig and isinstance(hit[2], str) \
                and len(hit[2]) == 64 and all(ch in "0123456789abcdef" for ch in hit[2]):
            return hit[2]  # a damaged entry (wrong type or shape) is recomputed, never trusted
        sha = weights_hash(ckpt)
        self.d[key] = sig + [sha]
        return sha


def _read_hashes(cache_dir: Path) -> dict:
    return read_json_or_empty(cache_dir / "hashes.json")


def _load_cache(path: Path):
    """The JSON of a cache entry; ValueError (with the reason) when it cannot be read as JSON."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from None
    except OSError as e:
        raise ValueError(f"unreadable: {e.strerror or e}") from None


def _is_num(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_matrix(mat, n_layers, n_heads, layers, what: str) -> None:
    if not isinstance(mat, list) or len(mat) != n_layers:
        raise ValueError(f"{what}: expected a list of {n_layers} layers")
    for l in layers:
        row = mat[l]
        if not isinstance(row, list) or len(row) != n_heads or not all(_is_num(v) for v in row):
            raise ValueError(f"{what}: layer {l} is not a list of {n_heads} numbers")


def _check_scores(d, sha: str, skey: str) -> tuple[int, int, list]:
    """ValueError unless ``d`` is a scores cache entry of these weights and settings, with every
    key :func:`_assemble` reads, of the right type and shape; returns (n_layers, n_heads, layers)."""
    if not isinstance(d, dict):
        raise ValueError(f"a JSON {type(d).__name__}, not an object")
    if d.get("version") != SCORE_VERSION or d.get("weights_sha256") != sha or d.get("settings_key") != skey:
        raise ValueError("version, weights_sha256 or settings_key do not match")
    layout, n_heads, layers = d.get("layout"), d.get("n_heads"), d.get("layers")
    if not (isinstance(layout, str) or (isinstance(layout, list) and all(isinstance(x, str) for x in layout))) \
            or not layout:
        raise ValueError("layout: not a layer-type string or list")
    if not _is_int(n_heads) or n_heads < 1:
        raise ValueError("n_heads: not a positive integer")
    if not isinstance(layers, list) or not all(_is_int(l) and 0 <= l < len(layout) for l in layers):
        raise ValueError("layers: not a list of layer indices")
    metrics = d.get("metrics")
    if not isinstance(metrics, dict):
        raise ValueError("metrics: not an object")
    for m in attention_metrics():
        _check_matrix(metrics.get(m), len(layout), n_heads, layers, f"metrics.{m}")
    counts = d.get("counts")
    if not isinstance(counts, dict) or not all(_is_int(v) for v in counts.values()) or \
            not {"n_samples", "n_invalid", "n_correct", "n_counted"} <= set(counts):
        raise ValueError("counts: not an object of integer counts")
    niah = d.get("niah")
    if not isinstance(niah, list) or not all(
            isinstance(r, dict) and _is_int(r.get("context_len")) and _is_num(r.get("depth"))
            and r.get("depth") is not None and _is_num(r.get("accuracy")) and _is_int(r.get("n")) for r in niah):
        raise ValueError("niah: not a list of {context_len, depth, accuracy, n} cells")
    return len(layout), n_heads, layers


def _check_qk(d, shape) -> None:
    """ValueError unless ``d`` is a Q/K-distance cache entry with every weights metric's matrix
    (of the scores entry's ``shape`` = (n_layers, n_heads, layers) where known)."""
    if not isinstance(d, dict):
        raise ValueError(f"a JSON {type(d).__name__}, not an object")
    for m in weight_metrics():
        key = metric(m).weights_key
        mat = d.get(key)
        if shape is not None:
            _check_matrix(mat, *shape, what=key)
        elif not isinstance(mat, list) or not mat or not all(
                isinstance(row, list) and len(row) == len(mat[0]) and all(_is_num(v) for v in row) for row in mat):
            raise ValueError(f"{key}: not a matrix of numbers")
