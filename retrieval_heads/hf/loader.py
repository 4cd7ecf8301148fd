"""Find and load Hugging Face checkpoint folders offline (config.json + *.safetensors + tokenizer).

- ``is_hf_checkpoint(path)``: a folder whose config.json is an HF config (has ``model_type``),
  not one of our own ``step_XXXXXX`` checkpoints.
- ``list_hf_checkpoints(path)``: one checkpoint, or the sub-folders of ``path`` (two levels
  deep) that hold one, in training order: the step in the folder name (``checkpoint-500``,
  ``step1000``, ``global_step_20``, ``stage1-step3000-tokens12B``), else ``global_step`` of
  its ``trainer_state.json``; folders without any step are an error unless none has one
  (then name order). ``tokens_seen`` comes from ``num_input_tokens_seen`` when recorded.
- ``load_hf(path)``: an ``HFModel`` (HF model + tokenizer behind our hook names and the
  detector's row interface). ``load_bridge(path)``: TransformerLens's ``TransformerBridge``.

Nothing is downloaded: ``HF_HUB_OFFLINE=1`` and ``local_files_only=True``; a missing file is
a ``FileNotFoundError`` naming it. Weights load only from safetensors (a pickle-only
checkpoint is refused). A checkpoint that ships its own modelling code (``auto_map``) runs
only with ``trust_remote_code=True`` (CLI: ``--trust-remote-code``).

    >>> import tempfile
    >>> from retrieval_heads.hf.testing import save_tiny
    >>> root = tempfile.mkdtemp()
    >>> for s in (20, 5):
    ...     _ = save_tiny("gemma3_text", f"{root}/checkpoint-{s}", seed=s)
    >>> [c.step for c in list_hf_checkpoints(root)]
    [5, 20]
    >>> load_hf(f"{root}/checkpoint-5").layer_types
    'SSSF'
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..storage.files import read_json, read_json_or_empty

STEP_IN_NAME = re.compile(r"(?:checkpoint|global[-_]?step|step|iter|ckpt)[-_]?(\d+)", re.IGNORECASE)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer_config.json")
PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def read_hf_config(path) -> dict:
    """The parsed config.json of an HF checkpoint folder (FileNotFoundError / ValueError otherwise)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such checkpoint folder")
    f = path / "config.json"
    if not f.exists():
        raise FileNotFoundError(f"{f}: missing; an HF checkpoint needs config.json, *.safetensors and "
                                "tokenizer files")
    d = read_json(f)
    if not isinstance(d, dict) or "model_type" not in d:
        raise ValueError(f"{f}: no 'model_type'; not a Hugging Face config")
    return d


def is_hf_checkpoint(path) -> bool:
    try:
        d = read_hf_config(path)
    except (OSError, ValueError):
        return False
    return "format" not in d or "model" not in d  # ours: {"format", "model", ...}


def _children(path: Path, depth: int = 2):
    for p in sorted(path.iterdir()):
        if p.is_dir() and not p.name.startswith("."):
            if is_hf_checkpoint(p):
                yield p
            elif depth > 1:
                yield from _children(p, depth - 1)


def is_hf_path(path) -> bool:
    """True if ``path`` is an HF checkpoint or a folder holding some (what ``scan`` dispatches on)."""
    path = Path(path)
    if not path.is_dir():
        return False
    return is_hf_checkpoint(path) or next(_children(path), None) is not None


@dataclass
class HFCheckpoint:
    path: Path
    step: int | None
    tokens_seen: int = 0


def _trainer_state(path: Path) -> dict:
    return read_json_or_empty(path / "trainer_state.json")


def _step_of(path: Path) -> int | None:
    m = STEP_IN_NAME.findall(path.name)
    if m:
        return int(m[-1])
    st = _trainer_state(path).get("global_step")
    return int(st) if isinstance(st, (int, float)) else None


def list_hf_checkpoints(path) -> list[HFCheckpoint]:
    """The HF checkpoint(s) at ``path`` in training order (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    subs = list(_children(path)) if path.is_dir() else []
    if not subs:
        if is_hf_checkpoint(path):
            subs = [path]
        else:
            read_hf_config(path)  # raises the precise error
    found = [HFCheckpoint(p, _step_of(p), int(_trainer_state(p).get("num_input_tokens_seen", 0) or 0))
             for p in subs]
    missing = [c.path.name for c in found if c.step is None]
    if missing and len(missing) < len(found):
        raise ValueError(f"{path}: cannot order checkpoints {missing} in training: no step in their names "
                         "(checkpoint-N, stepN, global_stepN) or trainer_state.json")
    if missing:
        if len(found) > 1:
            def natural(c):
                return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(c.path))]
            found.sort(key=natural)
        for i, c in enumerate(found):
            c.step = i
        return found
    steps = [c.step for c in found]
    if len(set(steps)) != len(steps):
        dup = sorted({s for s in steps if steps.count(s) > 1})
        raise ValueError(f"{path}: several checkpoints share step(s) {dup}; scan one series at a time")
    return sorted(found, key=lambda c: c.step)


def _check_weights(path: Path) -> None:
    files = [f.name for f in path.iterdir()]
    if any(f.endswith(".safetensors") for f in files):
        return
    pick = [f for f in files if f.endswith(PICKLE_WEIGHTS)]
    if pick:
        raise ValueError(f"{path / pick[0]}: pickle-format weights refused (loading could run code); "
                         "convert the checkpoint to safetensors")
    raise FileNotFoundError(f"{path}: no *.safetensors weights")


def _check_remote_code(path: Path, cfg: dict, trust_remote_code: bool) -> None:
    if cfg.get("auto_map") and not trust_remote_code:
        raise ValueError(f"{path}: this checkpoint ships its own modelling code (auto_map in config.json); "
                         "it runs only with trust_remote_code=True (CLI: --trust-remote-code)")
    if not cfg.get("auto_map"):
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        if cfg["model_type"] not in CONFIG_MAPPING:
            import transformers
            raise ValueError(f"{path}: model_type {cfg['model_type']!r} is unknown to transformers "
                             f"{transformers.__version__}")


def find_tokenizer_dir(path) -> Path:
    """``path`` if it holds tokenizer files, else its parent (a series root), else FileNotFoundError."""
    path = Path(path)
    for p in (path, path.parent):
        if any((p / f).exists() for f in TOKENIZER_FILES):
            return p
    raise FileNotFoundError(f"{path}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...) here or in "
                            f"{path.parent}; pass tokenizer=DIR (CLI: --tokenizer DIR)")


def load_tokenizer(path, *, trust_remote_code: bool = False):
    """The checkpoint's tokenizer (a fast one when available), from local files only."""
    _offline()
    from transformers import AutoTokenizer

    d = find_tokenizer_dir(path)
    try:
        return AutoTokenizer.from_pretrained(str(d), local_files_only=True, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise FileNotFoundError(f"{d}: cannot load the tokenizer offline ({e})") from None


def _dtype(dtype):
    import torch

    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, str):
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                    "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[dtype]
        except KeyError:
            raise ValueError(f"dtype: expected auto, float32, float16 or bfloat16, got {dtype!r}") from None
    return dtype


def load_hf_model(path, *, device=None, dtype=None, attn_implementation: str | None = None,
                  trust_remote_code: bool = False, device_map=None):
    """The raw HF ``AutoModelForCausalLM`` of a local checkpoint folder, in eval mode.

    ``device_map`` (e.g. ``"auto"``; needs ``accelerate``): handed to ``from_pretrained``, which
    spreads the layers over the GPUs (then the CPU) of a model larger than one GPU; the model is
    then not moved, and ``device`` must be None. See docs/GPU.md."""
    _offline()
    if device_map is not None and device is not None:
        raise ValueError(f"device_map: {device_map!r} places the model itself; give device or device_map, "
                         f"not both (device={device!r})")
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    path = Path(path)
    cfg = read_hf_config(path)
    _check_remote_code(path, cfg, trust_remote_code)
    _check_weights(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if attn_implementation is None:
        attn_implementation = "eager" if cfg.get("attn_logit_softcapping") else "sdpa"
    placed = {} if device_map is None else {"device_map": device_map}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True, dtype=_dtype(dtype),
            attn_implementation=attn_implementation, trust_remote_code=trust_remote_code, **placed)
    except ValueError as e:
        if "attention implementation" not in str(e) or attn_implementation == "eager":
            raise
        model = AutoModelForCausalLM.from_pretrained(  # no SDPA for this architecture: eager
            str(path), local_files_only=True, use_safetensors=True, dtype=_dtype(dtype),
            attn_implementation="eager", trust_remote_code=trust_remote_code, **placed)
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot load the model offline ({e})") from None
    except SafetensorError as e:
        raise ValueError(f"{path}: unreadable safetensors weights ({e})") from None
    if device_map is not None:  # placed by accelerate: moving it would undo the map
        return model.eval()
    return model.to(device).eval()


def load_hf(path, *, device=None, dtype=None, attn_implementation: str | None = None,
            trust_remote_code: bool = False, layout: str | None = None, tokenizer=None, step: int | None = None,
            tokens_seen: int | None = None, device_map=None):
    """Load an HF checkpoint folder as an ``HFModel`` (see ``retrieval_heads.hf.model``).

    ``tokenizer``: a tokenizer object or folder (default: the checkpoint's own, or its parent's).
    ``layout``: override the layout letters where the HF layer types are not ones we know.
    ``device_map="auto"``: a model larger than one GPU, spread by accelerate (``load_hf_model``)."""
    from .model import HFModel

    path = Path(path)
    hf = load_hf_model(path, device=device, dtype=dtype, attn_implementation=attn_implementation,
                       trust_remote_code=trust_remote_code, device_map=device_map)
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer or path, trust_remote_code=trust_remote_code)
    if step is None:
        step = _step_of(path)
    return HFModel(hf, tokenizer, layout=layout, path=path, step=step, tokens_seen=tokens_seen)


def load_bridge(path, *, device=None, dtype=None, trust_remote_code: bool = False, tokenizer=None,
                device_map=None):
    """TransformerLens 4.x ``TransformerBridge`` around the checkpoint (eager attention, offline).

    Its attention materialises the T x T pattern; use ``load_hf`` for O(T) detection."""
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    model = load_hf_model(path, device=device, dtype=dtype, attn_implementation="eager",
                          trust_remote_code=trust_remote_code, device_map=device_map)
    arch = (model.config.architectures or [type(model).__name__])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"{path}: TransformerBridge has no adapter for {arch}; use load_hf (our adapter)")
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer or path, trust_remote_code=trust_remote_code)
    return build_bridge_from_module(model, arch, hf_config=model.config, tokenizer=tokenizer,
                                    model_name=str(path))


def describe_hf(path, *, trust_remote_code: bool = False, layout: str | None = None) -> str:
    """Layout, positions and what is on disk for an HF checkpoint or series, from config.json
    only (no weights are loaded): what ``retrieval-heads info --hf PATH`` prints."""
    _offline()
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    from transformers import AutoConfig

    from .layout import hf_layout

    found = list_hf_checkpoints(path)
    first = found[0].path
    cfg = read_hf_config(first)
    _check_remote_code(first, cfg, trust_remote_code)
    config = AutoConfig.from_pretrained(str(first), local_files_only=True, trust_remote_code=trust_remote_code)
    spec = hf_layout(config, layout=layout)
    lines = [spec.describe()]
    if len(found) > 1:
        lines.append(f"  series: {len(found)} checkpoints, steps {found[0].step} .. {found[-1].step} "
                     f"({', '.join(c.path.name for c in found[:4])}{', ...' if len(found) > 4 else ''})")
    try:
        lines.append(f"  tokenizer: {find_tokenizer_dir(first)}")
    except FileNotFoundError as e:
        lines.append(f"  tokenizer: missing ({e})")
    arch = spec.architecture
    lines.append(f"  TransformerBridge: {'supported' if arch in SUPPORTED_ARCHITECTURES else 'no adapter'} "
                 f"for {arch}; detection uses our O(T) adapter (load_hf)")
    return "\n".join(lines)
