"""Checkpoints: ``RUN/step_{step:06d}/model.safetensors`` + ``config.json``.

``config.json`` holds ``{"format": 1, "model": ModelConfig, "train": TrainConfig | null,
"step", "tokens_seen", "data_seed", "extra"}``. Optimizer and RNG state, when saved, sit
beside them in ``train_state.pt`` and are read with ``torch.load(weights_only=True)``.
Nothing is ever unpickled: weights come only from safetensors, and a folder that offers
weights in a pickle format (``.bin``, ``.pt``, ``.pth``, ``.ckpt``, ``.pkl``) is refused.

Writes are atomic: everything goes into a hidden temporary folder in the run directory,
which is renamed to ``step_XXXXXX`` only when complete, so a killed process never leaves
a half-written checkpoint where ``list_checkpoints`` would see it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model

from ..config import ModelConfig, TrainConfig
from .files import read_json, regular_file

HF_MODEL_TYPE = "retrieval_heads_hybrid"  # == model.hybrid.HF_MODEL_TYPE (not imported: it pulls in the model)

FORMAT = 1
_UMASK = os.umask(0)
os.umask(_UMASK)
STEP_RE = re.compile(r"^step_(\d+)$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be used; the message names the file and the problem."""


def step_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"step_{step:06d}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str | Path, step: int, model, *, train_cfg: TrainConfig | None = None,
                    tokens_seen: int = 0, data_seed: int | None = None, train_state: dict | None = None,
                    extra: dict | None = None) -> Path:
    """Write ``RUN/step_{step:06d}`` atomically and return its path.

    ``train_state`` (optimizer state dict, RNG state, ...) must hold only tensors and plain
    Python values, so that it loads with ``weights_only=True``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = step_dir(run_dir, step)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_step_{step:06d}_", dir=run_dir))
    try:
        module = getattr(model, "module", model)  # unwrap DDP
        save_model(module, str(tmp / "model.safetensors"))
        meta = {
            "format": FORMAT,
            "model": module.cfg.to_dict(),
            "train": None if train_cfg is None else train_cfg.to_dict(),
            "step": int(step),
            "tokens_seen": int(tokens_seen),
            "data_seed": data_seed,
            "extra": extra or {},
        }
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        if train_state is not None:
            try:
                torch.save(train_state, tmp / "train_state.pt")
            except (RuntimeError, OSError) as e:  # a full disk: "[enforce fail at inline_container.cc] ..."
                why = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
                raise OSError(f"{final / 'train_state.pt'}: could not be written ({type(e).__name__}: {why}); "
                              "no partial checkpoint was left") from None
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            os.chmod(f, 0o666 & ~_UMASK)  # mkdtemp's folder is 0700: give the user's usual permissions
        os.chmod(tmp, 0o777 & ~_UMASK)
        if final.exists():  # re-saving a step (e.g. after a resume): swap atomically
            old = Path(tempfile.mkdtemp(prefix=f".old_step_{step:06d}_", dir=run_dir))
            os.rename(final, old / "ckpt")
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_meta(path: str | Path) -> dict:
    """Parse and check ``config.json`` of a checkpoint folder."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint folder (expected a directory)")
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        if not any(path.iterdir()):
            raise CheckpointError(f"{path}: empty folder; a checkpoint needs config.json and model.safetensors")
        raise CheckpointError(f"{cfg_file}: missing; a checkpoint needs config.json and model.safetensors")
    meta = read_json(cfg_file, error=CheckpointError)
    if isinstance(meta, dict) and "model_type" in meta and "model" not in meta:
        if meta["model_type"] == HF_MODEL_TYPE:
            raise CheckpointError(f"{cfg_file}: a HybridLM.save_pretrained folder, not a run checkpoint; "
                                  "load it with rh.load_checkpoint(path) or rh.HybridLM.from_pretrained(path)")
        raise CheckpointError(f"{cfg_file}: a Hugging Face checkpoint (model_type {meta['model_type']!r}); "
                              "load it with rh.hf.load_hf(path)")
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"{cfg_file}: no 'model' section; not a retrieval-heads checkpoint")
    known = {"format", "model", "train", "step", "tokens_seen", "data_seed", "extra"}
    unknown = sorted(set(meta) - known)
    if unknown:
        raise CheckpointError(f"{cfg_file}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    try:
        meta["model"] = ModelConfig.from_dict(meta["model"])
        meta["train"] = None if meta.get("train") is None else TrainConfig.from_dict(meta["train"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{cfg_file}: {e}") from None
    fmt = meta.get("format", FORMAT)
    if isinstance(fmt, bool) or not isinstance(fmt, int) or not 1 <= fmt <= FORMAT:
        raise CheckpointError(f"{cfg_file}: format {fmt!r}; this version of retrieval-heads reads format "
                              f"{FORMAT} (a newer library wrote it? upgrade retrieval-heads)")
    meta.setdefault("step", 0)
    meta.setdefault("tokens_seen", 0)
    for k, top in (("step", 2**31 - 1), ("tokens_seen", 2**63 - 1)):  # what the tables' int64 columns hold
        v = meta[k]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= top:
            shown = repr(v) if len(repr(v)) <= 24 else f"{repr(v)[:12]}... ({len(repr(v))} characters)"
            raise CheckpointError(f"{cfg_file}: {k}: expected an integer in [0, {top}], got {shown}")
    if meta.get("data_seed") is not None and (isinstance(meta["data_seed"], bool)
                                              or not isinstance(meta["data_seed"], int)):
        raise CheckpointError(f"{cfg_file}: data_seed: expected an integer or null, got {meta['data_seed']!r}")
    if not isinstance(meta.get("extra") or {}, dict):
        raise CheckpointError(f"{cfg_file}: extra: expected a JSON object, got {meta['extra']!r}")
    return meta


def _refuse_pickles(path: Path) -> None:
    for f in path.iterdir():
        if f.suffix.lower() in PICKLE_SUFFIXES and f.name != "train_state.pt":
            raise CheckpointError(
                f"{f}: pickle-format weight file refused (it could run code when loaded); "
                "retrieval-heads reads weights only from model.safetensors"
            )


def _is_save_pretrained(path: Path) -> bool:
    """A ``HybridLM.save_pretrained`` folder (config.json with our HF model_type)."""
    try:
        d = read_json(path / "config.json", error=CheckpointError)
    except (CheckpointError, OSError):
        return False
    return isinstance(d, dict) and d.get("model_type") == HF_MODEL_TYPE and "model" not in d


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", *, check_finite: bool = True):
    """Load ``HybridLM`` from a checkpoint folder (or a ``HybridLM.save_pretrained`` folder), in eval mode.
    A Hugging Face checkpoint of another model is refused with a pointer to ``rh.hf.load_hf``.

    The model gets ``model.checkpoint`` = ``{"path", "step", "tokens_seen", "train", ...}``.
    Raises ``CheckpointError`` (a ``ValueError``) naming the file and the problem.
    """
    from ..model import HybridLM

    path = Path(path)
    if _is_save_pretrained(path):
        _refuse_pickles(path)
        try:
            model = HybridLM.from_pretrained(path, device=device)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: {e}") from None
        model.checkpoint = {"path": str(path), "step": 0, "tokens_seen": 0, "train": None, "data_seed": None,
                            "extra": {}}
        return model
    meta = read_meta(path)
    _refuse_pickles(path)
    weights = path / "model.safetensors"
    if not weights.exists():
        raise CheckpointError(f"{weights}: missing; a checkpoint needs config.json and model.safetensors")
    try:
        state = load_file(str(regular_file(weights)), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: unreadable safetensors file ({e})") from None
    model = HybridLM(meta["model"])
    expected = model.state_dict()
    if meta["model"].tie_embeddings:
        # safetensors' save_model stores a tied tensor once, under one of its names
        for a, b in (("unembed.weight", "embed.weight"), ("embed.weight", "unembed.weight")):
            if a not in state and b in state:
                state[a] = state[b]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: tensors do not match config.json (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, t in state.items():
        e = expected[name]
        if tuple(t.shape) != tuple(e.shape):
            raise CheckpointError(f"{weights}: tensor {name} has shape {tuple(t.shape)}, "
                                  f"config.json implies {tuple(e.shape)}")
        if not t.is_floating_point():
            raise CheckpointError(f"{weights}: tensor {name} has dtype {t.dtype}, expected a floating-point dtype")
        if check_finite and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{weights}: tensor {name} contains NaN or Inf")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    model.to(device).eval()
    model.checkpoint = {"path": str(path), "step": int(meta["step"]), "tokens_seen": int(meta["tokens_seen"]),
                        "train": meta["train"], "data_seed": meta.get("data_seed"), "extra": meta.get("extra", {})}
    return model


TRAIN_STATE_KEYS = ("optimizer", "step", "tokens_seen", "rng")  # what ``train`` saves (and needs back)


def load_train_state(path: str | Path) -> dict | None:
    """Optimizer/RNG state saved beside a checkpoint, read with ``weights_only=True``; its
    structure is checked (a dict with the keys ``train`` saves, an optimizer state dict, a torch
    RNG state, non-negative integer step / tokens_seen). Raises ``CheckpointError``."""
    f = Path(path) / "train_state.pt"
    if not f.exists():
        return None
    try:
        saved = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # an unpickling error means a payload that is not plain data
        why = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise CheckpointError(f"{f}: refused, it is not plain tensors and numbers "
                              f"({type(e).__name__}: {why})") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{f}: expected a dict with keys {list(TRAIN_STATE_KEYS)}, "
                              f"got a {type(saved).__name__}; not a retrieval-heads train state")
    missing = [k for k in TRAIN_STATE_KEYS if k not in saved]
    if missing:
        raise CheckpointError(f"{f}: missing key(s) {missing} (has {sorted(map(str, saved))[:8]}); "
                              "not a complete retrieval-heads train state")
    for k in ("step", "tokens_seen"):
        v = saved[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise CheckpointError(f"{f}: {k}: expected a non-negative integer, got {_short(v)}")
    opt = saved["optimizer"]
    if (not isinstance(opt, dict) or not isinstance(opt.get("state"), dict)
            or not isinstance(opt.get("param_groups"), list)
            or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in opt["param_groups"])):
        raise CheckpointError(f"{f}: optimizer: expected an optimizer state dict "
                              f"(with 'state' and 'param_groups'), got {_short(opt)}")
    rng = saved["rng"]
    if (not isinstance(rng, dict) or not isinstance(rng.get("torch"), torch.Tensor)
            or rng["torch"].dtype != torch.uint8):
        raise CheckpointError(f"{f}: rng: expected {{'torch': a uint8 tensor, ...}}, got {_short(rng)}")
    running = saved.get("running")
    if running is not None and (not isinstance(running, (list, tuple)) or len(running) != 4
                                or not all(is_finite_number(x) and not isinstance(x, bool) for x in running)):
        raise CheckpointError(f"{f}: running: expected 4 finite numbers, got {_short(running)}")
    return saved


def check_optimizer_state(f: str | Path, saved_opt: dict, optimizer) -> None:
    """Refuse (``CheckpointError`` naming ``f``) an optimizer state dict whose groups or
    per-parameter tensors do not fit ``optimizer``'s parameters (else the first step fails)."""
    groups = optimizer.param_groups
    saved_groups = saved_opt["param_groups"]
    if len(saved_groups) != len(groups) or any(len(a["params"]) != len(b["params"])
                                               for a, b in zip(saved_groups, groups)):
        raise CheckpointError(f"{f}: optimizer: parameter groups of sizes {[len(g['params']) for g in saved_groups]}, "
                              f"the model has {[len(g['params']) for g in groups]}")
    shapes = {}
    for a, b in zip(saved_groups, groups):
        for pid, p in zip(a["params"], b["params"]):
            shapes[pid] = tuple(p.shape)
    for pid, st in saved_opt["state"].items():
        if pid not in shapes:
            raise CheckpointError(f"{f}: optimizer: state for parameter {_short(pid)}, which no group lists")
        if not isinstance(st, dict):
            raise CheckpointError(f"{f}: optimizer: state of parameter {pid}: expected a dict, got {_short(st)}")
        for name, v in st.items():
            if name == "step":
                if not (isinstance(v, torch.Tensor) and v.numel() == 1) and not is_finite_number(v):
                    raise CheckpointError(f"{f}: optimizer: parameter {pid}: step: expected a number, got {_short(v)}")
                continue
            if not isinstance(v, torch.Tensor):
                raise CheckpointError(f"{f}: optimizer: parameter {pid}: {name}: expected a tensor, got {_short(v)}")
            if tuple(v.shape) != shapes[pid]:
                raise CheckpointError(f"{f}: optimizer: parameter {pid}: {name} has shape {tuple(v.shape)}, "
                                      f"the model's parameter has shape {shapes[pid]}")
            if not v.is_floating_point():
                raise CheckpointError(f"{f}: optimizer: parameter {pid}: {name} has dtype {v.dtype}, "
                                      "expected a floating-point dtype")


def _short(v) -> str:
    r = repr(v) if not isinstance(v, torch.Tensor) else f"tensor of shape {tuple(v.shape)} ({v.dtype})"
    return r if len(r) <= 40 else f"{r[:30]}... (a {type(v).__name__})"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint folders of a run in step order (temporary folders are never listed)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    found = []
    for p in run_dir.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def clean_partial_checkpoints(run_dir: str | Path) -> list[Path]:
    """Remove what killed saves left in a run (hidden ``.tmp_step_*`` folders and ``.tmp-*``
    files of run.json / metrics.jsonl writes), after putting back a checkpoint whose re-save
    died between its two renames (``.old_step_*``). Call it only from the one process that
    writes the run. Returns what was removed."""
    run_dir = Path(run_dir)
    removed = []
    for p in sorted(run_dir.glob(".old_step_*")):
        m = re.match(r"^\.old_step_(\d+)_", p.name)
        if m and (p / "ckpt").is_dir() and not step_dir(run_dir, int(m.group(1))).exists():
            os.rename(p / "ckpt", step_dir(run_dir, int(m.group(1))))
    for p in sorted([*run_dir.glob(".tmp_step_*"), *run_dir.glob(".old_step_*")]):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    for p in sorted(run_dir.glob(".tmp-*")):  # a killed atomic write of run.json or metrics.jsonl
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def weights_hash(path: str | Path) -> str:
    """sha256 of a checkpoint's model.safetensors (keys the scan cache)."""
    h = hashlib.sha256()
    with open(regular_file(Path(path) / "model.safetensors"), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_finite_number(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
