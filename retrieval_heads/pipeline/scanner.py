"""Scan every checkpoint of a run: retrieval scores, NIAH accuracy, formation steps.

    >>> df = rh.scan("runs/x", context_lens=(256, 512), workers=2)   # doctest: +SKIP

Every checkpoint (``RUN/step_XXXXXX``, in step order) is scored on the same fixed, seeded
needle set. Results go under ``RUN/scan/`` (or ``out=DIR``: into ``DIR``, with the cache and
the lock; the run folder is then only read)::

    scores.parquet      step, tokens_seen, layer, head, layer_type, metric, value
                        metric: every metric of retrieval_heads.detect.metrics (copy, mass,
                        entropy, entropy_norm, qk_distance: relative L2 of the head's W_Q/W_K
                        slices to the reference checkpoint, qk_l2, and any registered one)
    niah.parquet        step, tokens_seen, context_len, depth, accuracy, n
    checkpoints.parquet step, tokens_seen, path, weights_sha256, status, error, counts
    formation.parquet   per head: the step after which its copy score stays >= threshold
    formation_measures.parquet
                        per (measure, head), measures mass, copy_tf, copy with their own
                        ``thresholds`` (default mass 0.5, copy_tf 0.1, copy 0.1): measure, layer,
                        head, layer_type, threshold, formed, formation_step, formation_tokens,
                        censored_at_step, censored_at_tokens (the last scanned checkpoint, for a
                        head that has not formed), final_value, max_value
                        (``detect.formation.formation_by_measure``)
    formation.json      formation.parquet + the run's first full-attention retrieval head, settings,
                        model; "measures": per measure the first full-attention head to form (or
                        where the run is censored) and its threshold
    report.html         plotly report (``retrieval_heads.pipeline.report``)
    cache/              one JSON per (weights sha256, settings): a re-run scores only what is new

A checkpoint that cannot be read is reported, listed in the tables and the report, and
skipped (``ScanResult.skipped``; the CLI then exits non-zero). Writes are atomic and the
whole scan holds an exclusive lock on ``RUN/scan/.lock`` (``DIR/.lock``), so concurrent scans of one run
never corrupt its tables (the second waits, then finds everything cached).
``workers=N`` scores checkpoints in N spawned processes; the tables equal a serial scan's.

A folder of runs (``runs/demo`` holding ``window_16/`` and ``window_64/``) is not a run:
``find_runs`` lists the runs in it and ``scan`` refuses it naming them (the CLI scans each).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from ..detect.formation import (
    formation_by_measure,
    formation_table,
    measure_thresholds,
    run_formation,
    run_formation_by_measure,
)
from ..detect.metrics import attention_metrics, causal_metrics, metric, weight_metrics
from ..labels import format_duration
from ..storage.checkpoint import STEP_RE, CheckpointError, list_checkpoints, load_checkpoint, read_meta, weights_hash
from ..storage.files import write_json, write_parquet
from .cache import (CAUSAL_VERSION, SCORE_VERSION, _cache_file, _causal_file, _check_causal, _check_qk,
                    _check_scores, _HashCache, _load_cache, _qk_file, _read_hashes)

log = logging.getLogger(__name__)
_BUILTIN_ATTENTION = ("copy", "mass", "entropy", "entropy_norm")  # cache keys of scans before the registry
SCORES_COLUMNS = ["step", "tokens_seen", "layer", "head", "layer_type", "metric", "value"]
NIAH_COLUMNS = ["step", "tokens_seen", "context_len", "depth", "accuracy", "n"]


COMPAT_FIELDS = ("compat", "query_offset", "answer_positions", "span_locate", "accept")


@dataclass
class ScanSettings:
    """The needle set and scoring options; every checkpoint of a scan uses the same ones.
    ``context_lens=None`` = the run's training context length (capped by max_seq_len)."""

    variant: str = "single_1"
    context_lens: tuple | None = None
    depths: tuple = (0.1, 0.3, 0.5, 0.7, 0.9)
    n_per_cell: int = 2
    seed: int = 0
    haystack: str | None = None
    recurrent: bool = False
    only_correct: bool = True
    max_new_tokens: int | None = None
    tasks: str | None = None  # a RULER-format .jsonl (tasks.load_jsonl) instead of the generated needles
    # scoring rules of the original code (detect.compat): a preset and single overrides; None = ours
    compat: str | None = None
    query_offset: int | None = None
    answer_positions: str | None = None
    span_locate: str | None = None
    accept: str | None = None
    # the forward passes' dtype: None = float32 (every device); "bfloat16" (faster on a GPU, within the
    # tolerance of docs/GPU.md). Part of the cache key when set; the device is not (see scan_device).
    dtype: str | None = None

    def __post_init__(self):
        from ..tasks import VARIANTS

        if self.variant not in VARIANTS:
            raise ValueError(f"variant: unknown {self.variant!r}; valid: {', '.join(VARIANTS)}")
        if self.context_lens is not None:
            self.context_lens = tuple(int(x) for x in self.context_lens)
            if not self.context_lens or min(self.context_lens) < 1:
                raise ValueError(f"context_lens: expected positive lengths, got {self.context_lens}")
        self.depths = tuple(float(d) for d in self.depths)
        if not self.depths or not all(0.0 <= d <= 1.0 for d in self.depths):
            raise ValueError(f"depths: expected values in [0, 1], got {self.depths}")
        if self.n_per_cell < 1:
            raise ValueError(f"n_per_cell: must be >= 1, got {self.n_per_cell}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be >= 1, got {self.max_new_tokens}")
        if self.haystack is not None:
            from ..tasks.haystack import load_haystack

            load_haystack(self.haystack)  # ValueError naming the file (missing, empty, not UTF-8 text)
        if self.tasks is not None:
            from ..tasks import read_jsonl

            self.tasks = str(self.tasks)
            read_jsonl(self.tasks)  # ValueError naming the file and line of a bad record
        self.rules()  # ValueError naming a bad compat choice
        self.dtype = scan_dtype(self.dtype)

    def torch_dtype(self) -> torch.dtype:
        return torch.float32 if self.dtype is None else getattr(torch, self.dtype)

    def rules(self):
        """The scoring choices (``detect.compat.Compat``): the preset, overridden by single choices."""
        from ..detect.compat import resolve

        return resolve(self.compat, query_offset=self.query_offset, answer_positions=self.answer_positions,
                       span_locate=self.span_locate, accept=self.accept)

    def compat_kw(self) -> dict:
        """``score_heads`` keywords of the scoring choices (empty for ours)."""
        c = self.rules()
        return {} if c.is_default else c.to_dict()

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("tasks", *COMPAT_FIELDS, "dtype"):
            if d[k] is None:
                del d[k]  # settings without a task file, compat choices or dtype read as before they existed
        return d

    def key(self) -> str:
        """sha256 of the settings and the scoring version (keys the cache)."""
        d = dict(self.to_dict(), version=SCORE_VERSION)
        for k in COMPAT_FIELDS:  # keyed by the resolved choices: a preset and its spelled-out choices agree
            d.pop(k, None)
        if not self.rules().is_default:
            d["compat_rules"] = self.rules().to_dict()
        if self.tasks is not None:  # the file's contents, not only its name
            d["tasks_sha256"] = hashlib.sha256(Path(self.tasks).read_bytes()).hexdigest()
        if attention_metrics() != _BUILTIN_ATTENTION:  # a registered metric: its own cache entries
            d["metrics"] = list(attention_metrics())
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def batches(self):
        if self.tasks is not None:
            from ..tasks import load_jsonl

            lens = None if self.context_lens is None else set(self.context_lens)
            return [b for b in load_jsonl(self.tasks).batches() if lens is None or b.tokens.shape[1] in lens]
        from ..tasks import niah_grid

        return niah_grid(context_lens=self.context_lens, depths=self.depths, n_per_cell=self.n_per_cell,
                         seed=self.seed, variant=self.variant, haystack=self.haystack)


_DTYPES = {"auto": None, "fp32": None, "float32": None, "bf16": "bfloat16", "bfloat16": "bfloat16"}


def scan_dtype(dtype) -> str | None:
    """A native scan's dtype, normalised: None (float32, the default) or "bfloat16"; ValueError else.
    ``"auto"``, ``"fp32"``, ``torch.float32`` read as None, so they key the cache as the default."""
    if dtype is None:
        return None
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"dtype: {dtype!r} is not a scan dtype; use float32 (fp32, the default) or bfloat16 (bf16)")
    return _DTYPES[name]


def scan_device(device=None, local_rank: int = 0) -> torch.device:
    """The device of a native scan: ``None``/"cpu" -> CPU (the default: the tables are the same bits on
    every machine), "cuda"/"cuda:N", or "auto" (``cuda:local_rank`` when CUDA is present, else CPU).
    "cuda" without CUDA, or anything else, is a one-line ValueError naming the fix. The device is
    not part of the cache key: fp32 scores on CUDA equal the CPU's within the tolerance of
    docs/GPU.md, so either serves the other's cached entries (``force=True`` rescores)."""
    from ..train.loop import resolve_device

    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ValueError(f"device: {device!r} is not a device; use auto, cpu, cuda or cuda:N")
    return resolve_device(device.strip().lower(), local_rank)


def _nan_to_none(x):
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return None if isinstance(x, float) and math.isnan(x) else x


def _none_to_nan(x):
    if isinstance(x, list):
        return [_none_to_nan(v) for v in x]
    return math.nan if x is None else x


@contextlib.contextmanager
def scan_lock(scan_dir: Path, echo=None):
    """Exclusive lock on ``scan_dir/.lock`` (blocking; a no-op where fcntl is missing)."""
    scan_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows)
        yield
        return
    with open(scan_dir / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if echo:
                echo(f"waiting for another scan writing to {scan_dir} to finish ...")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- one checkpoint -----------------------------------------------------------------------
def score_checkpoint(job: dict) -> dict:
    """Score one checkpoint and write its cache file(s); returns {"path", "error"} (error None on
    success). In a worker process (``workers > 1``, ``job["deliver"]``) it writes nothing and
    returns the files' contents as ``"writes"``: the scan writes them under its lock, so a
    worker outliving a killed scan can never write."""
    from safetensors.torch import load_file

    from ..detect.scores import HeadScores, score_heads
    from ..detect.weights import qk_distance

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    path = Path(job["path"])
    try:
        model = load_checkpoint(path)
    except (CheckpointError, OSError) as e:
        return {"path": str(path), "error": str(e)}
    settings = ScanSettings(**job["settings"])
    cfg = model.cfg
    writes = []  # (cache file, JSON) pairs
    qk = None
    if job["need_qk"]:  # weights only: on the CPU in float32 whatever the scan's device and dtype
        ref = load_file(str(Path(job["ref_path"]) / "model.safetensors"))
        qk = qk_distance(model, ref, cfg=cfg, recurrent=settings.recurrent)
    device = job.get("device") or "cpu"
    if device != "cpu" or settings.dtype is not None:
        model = model.to(device=device, dtype=settings.torch_dtype())
    if job["need_scores"]:
        batches = settings.batches()
        res = HeadScores.merge([score_heads(model, b, recurrent=settings.recurrent, only_correct=settings.only_correct,
                                            max_new_tokens=settings.max_new_tokens, batch_size=job["batch_size"],
                                            **settings.compat_kw())
                                for b in batches])
        niah = niah_cells(res, batches, settings)
        payload = {
            "version": SCORE_VERSION, "weights_sha256": job["sha"], "settings_key": job["settings_key"],
            "settings": job["settings"], "layout": cfg.layout, "n_heads": cfg.n_heads,
            "layers": res.scored_layers,
            "metrics": {m: _nan_to_none(res.scores(m).tolist()) for m in attention_metrics()},
            "counts": {"n_samples": res.n_samples, "n_invalid": res.n_invalid, "n_correct": res.n_correct,
                       "n_counted": res.n_counted},
            "invalid": [list(x) for x in res.invalid], "niah": niah,
            **({"device": device} if device != "cpu" else {}),  # where it was scored (not part of the key)
        }
        writes.append((job["cache_file"], payload))
    if job.get("need_causal"):
        writes.append((job["causal_file"], causal_entry(model, settings, job)))
    if qk is not None:
        writes.append((job["qk_file"], {k: _nan_to_none(v.tolist()) for k, v in qk.items()}))
    if job.get("deliver"):  # a worker process: the scan writes them, under its lock
        _exit_if_orphaned()
        return {"path": str(path), "error": None, "writes": writes}
    for f, obj in writes:
        write_json(Path(f), obj)
    return {"path": str(path), "error": None}


def causal_entry(model, settings: ScanSettings, job: dict) -> dict:
    """The causal cache entry of one checkpoint: ``detect.causal.causal_scores`` on the scan's
    needle set (every layer with heads; exact ablations, attribution, integrated gradients)."""
    from ..detect.causal import causal_scores

    res = causal_scores(model, settings.batches(), batch_size=job["batch_size"])
    return {"version": CAUSAL_VERSION, "weights_sha256": job["sha"], "settings_key": job["settings_key"],
            "layout": model.cfg.layout, "n_heads": model.cfg.n_heads, "layers": res.scored_layers,
            "metrics": {m: _nan_to_none(res.scores(m).tolist()) for m in causal_metrics()},
            "layer_metrics": {m: _nan_to_none(res.layer_scores(m).tolist()) for m in res.layer_per_sample},
            "clean_logprob": float(res.clean.mean()), "seconds": res.seconds}


def niah_cells(res, batches, settings: ScanSettings) -> list[dict]:
    """NIAH accuracy per (context length, depth) of a scan, from the detector's decoded answers
    (``eval.niah_scores``: the one NIAH accuracy of training, evaluation and scans)."""
    from ..eval.niah import niah_scores

    samples = [s for b in batches for s in b.samples]
    if settings.tasks is not None:  # a task file: its own lengths and (0.1-rounded) needle depths
        return niah_scores(res.predictions, samples).cells(settings.context_lens, None)
    return niah_scores(res.predictions, samples).cells(settings.context_lens, settings.depths)


_PARENT: tuple | None = None  # (parent pid, scan pid) of a worker process; None in the scan itself


def _orphaned() -> bool:
    """In a worker: whether the scan process that started it has died (the worker was then
    re-parented, or the scan pid is gone). Its lock died with it."""
    if _PARENT is None:
        return False
    ppid, scan_pid = _PARENT
    if os.getppid() != ppid:
        return True
    if scan_pid != ppid:  # e.g. a forkserver in between
        try:
            os.kill(scan_pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            pass
    return False


def _exit_if_orphaned() -> None:
    if _orphaned():
        os._exit(1)


def _watch_parent(interval: float = 0.1) -> None:
    while True:
        time.sleep(interval)
        _exit_if_orphaned()


def _init_worker(threads: int, scan_pid: int | None = None):
    """Worker start-up: threads, and a watchdog that ends the worker (``os._exit``) within
    ``0.1 s`` of the scan's death (kill -9 included: no worker scores on without the lock)."""
    global _PARENT
    torch.set_num_threads(threads)
    if scan_pid is not None:
        _PARENT = (os.getppid(), scan_pid)
        _exit_if_orphaned()  # the scan died while this worker started
        threading.Thread(target=_watch_parent, name="scan-parent-watchdog", daemon=True).start()


# --- checkpoint sources --------------------------------------------------------------------
@dataclass
class Checkpoint:
    """One checkpoint of a source as the scan sees it (``error`` set when it cannot be used)."""

    path: Path
    step: int
    tokens_seen: int = 0
    sha: str | None = None
    meta: dict | None = None
    error: str | None = None
    config_sha: str | None = None  # sha256 of config.json (native checkpoints; keys the scores cache)


_Ckpt = Checkpoint  # the older private name


class CheckpointSource:
    """Where a scan's checkpoints come from: the seam between the one scan loop (:func:`run_scan`)
    and a kind of checkpoint (our run folders here; Hugging Face checkpoints in
    :mod:`retrieval_heads.pipeline.hf_scanner`). A source reads without writing anything until
    :meth:`score` is called under the scan's lock."""

    name: str = "checkpoints"  # shown on the progress bar
    kind: str = "checkpoint"  # in messages: "none of the 3 {kind}(s) can be read"
    parallel: bool = False  # may its jobs run in worker processes?

    def __init__(self, path):
        self.path = Path(path)

    def default_scan_dir(self) -> Path:
        return self.path / "scan"

    def read(self, hashes: dict) -> list[Checkpoint]:  # every checkpoint, with its sha or its error
        raise NotImplementedError

    def prepare(self, settings: ScanSettings, good: list[Checkpoint], echo) -> tuple[ScanSettings, str]:
        """The settings resolved for these checkpoints and the cache key of the scores."""
        raise NotImplementedError

    def reference(self, reference, good: list[Checkpoint]) -> Checkpoint:
        raise NotImplementedError

    def job(self, c: Checkpoint, settings: ScanSettings, skey: str, ref: Checkpoint, cache_file: Path,
            qk_file: Path, need_scores: bool, need_qk: bool, batch_size: int) -> dict:
        return {"path": str(c.path), "sha": c.sha, "settings": settings.to_dict(), "settings_key": skey,
                "cache_file": str(cache_file), "qk_file": str(qk_file), "ref_path": str(ref.path),
                "need_scores": need_scores, "need_qk": need_qk, "batch_size": batch_size, "threads": None}

    def score(self, job: dict) -> dict:
        """Score one checkpoint into its cache file(s); returns {"path", "error"}."""
        raise NotImplementedError

    def model_info(self, good: list[Checkpoint], ref: Checkpoint) -> dict:
        raise NotImplementedError

    def extra(self) -> dict:
        """Source-specific entries for ``scan.json`` and ``df.attrs["scan"]``."""
        return {}


class NativeRun(CheckpointSource):
    """A run folder of our own checkpoints, ``RUN/step_XXXXXX`` in step order."""

    kind = "checkpoint"
    parallel = True

    def __init__(self, path, device="cpu"):
        super().__init__(path)
        self.name = self.path.name
        self.device = str(device)  # a resolved device (scan_device): where the jobs score

    def job(self, c, settings, skey, ref, cache_file, qk_file, need_scores, need_qk, batch_size):
        return dict(super().job(c, settings, skey, ref, cache_file, qk_file, need_scores, need_qk, batch_size),
                    device=self.device)

    def read(self, hashes: dict) -> list[Checkpoint]:
        paths = list_checkpoints(self.path)
        if not paths:
            raise _no_checkpoints_error(self.path)
        memo = _HashCache(hashes)
        ckpts = []
        for p in paths:
            c = Checkpoint(path=p, step=int(STEP_RE.match(p.name).group(1)))
            try:
                c.meta = read_meta(p)
                c.step = int(c.meta.get("step", c.step))
                c.tokens_seen = int(c.meta.get("tokens_seen", 0))
                c.sha = memo.get(p)
                c.config_sha = hashlib.sha256((p / "config.json").read_bytes()).hexdigest()
            except (ValueError, OSError) as e:  # CheckpointError is a ValueError; so is a FIFO/device
                c.error = str(e) if not isinstance(e, FileNotFoundError) else \
                    f"{p / 'model.safetensors'}: missing; a checkpoint needs config.json and model.safetensors"
            ckpts.append(c)
        _skip_other_shapes(ckpts)
        return ckpts

    def prepare(self, settings, good, echo):
        settings = _resolve_context_lens(settings, good[0].meta)
        settings.batches()  # a needle set that cannot be built (too short a context) fails here, writing nothing
        return settings, settings.key()

    def reference(self, reference, good):
        return _pick_reference(self.path, reference, good)

    def score(self, job):
        return score_checkpoint(job)

    def model_info(self, good, ref):
        return _model_info(good[0].meta["model"])


def _default_echo(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)


def _resolve_context_lens(settings: ScanSettings, meta: dict) -> ScanSettings:
    cfg = meta["model"]
    max_new = settings.max_new_tokens or 64
    if max_new >= cfg.max_seq_len:
        raise ValueError(f"max_new_tokens: {max_new} decoded tokens leave no room for a prompt in the model's "
                         f"max_seq_len={cfg.max_seq_len}; use --max-new-tokens below {cfg.max_seq_len}")
    if settings.tasks is not None:  # the task file's prompt lengths; longer ones are an error
        from ..tasks import load_jsonl

        tasks = load_jsonl(settings.tasks)
        lens = tuple(sorted({len(s.tokens) for s in tasks.samples}))
        if not lens:
            raise ValueError(f"tasks: no record with a located answer ({tasks.summary()})")
        settings = dataclasses.replace(settings, context_lens=lens)
    if settings.context_lens is None:
        train = meta.get("train")
        L = train.context_len if train is not None else 512
        settings = dataclasses.replace(settings, context_lens=(min(L, cfg.max_seq_len - max_new),))
    too_long = [L for L in settings.context_lens if L + max_new > cfg.max_seq_len]
    if too_long:
        raise ValueError(f"context_lens: {too_long} + up to {max_new} decoded tokens exceed the model's "
                         f"max_seq_len={cfg.max_seq_len}; use shorter --context-lens")
    return settings


def _model_info(cfg) -> dict:
    kinds = sorted(set(cfg.layout) & {"F", "S"})
    return {"layout": cfg.layout, "window": cfg.window if "S" in cfg.layout else None,
            "pos": {k: cfg.pos[k] for k in kinds}, "d_model": cfg.d_model, "n_heads": cfg.n_heads,
            "n_layers": cfg.n_layers, "describe": cfg.describe()}


def find_runs(folder) -> list[Path]:
    """The run folders directly inside ``folder`` (sub-folders holding ``step_XXXXXX``
    checkpoints), in name order; ``[]`` when there are none (or ``folder`` is itself a run)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.iterdir())
            if p.is_dir() and not p.name.startswith(".") and _has_checkpoints(p)]


def _has_checkpoints(path: Path) -> bool:
    try:
        return bool(list_checkpoints(path))
    except OSError:
        return False


def _no_checkpoints_error(run_dir: Path) -> ValueError:
    runs = find_runs(run_dir)
    if runs:
        names = ", ".join(p.name for p in runs)
        return ValueError(f"{run_dir}: no checkpoints (step_XXXXXX folders) here, but {len(runs)} run(s) in it: "
                          f"{names}; scan each run folder (`retrieval-heads scan {run_dir}` scans them all)")
    return ValueError(f"{run_dir}: no checkpoints (step_XXXXXX folders) to scan, and no run folders holding them")


def make_settings(settings: ScanSettings | None, setting_kw: dict) -> ScanSettings:
    """``settings`` with keyword overrides, or new settings from the keywords."""
    if settings is None:
        return ScanSettings(**setting_kw)
    return dataclasses.replace(settings, **setting_kw) if setting_kw else settings


# --- the scan -----------------------------------------------------------------------------
def scan(run_dir, settings: ScanSettings | None = None, *, reference="first", threshold: float = 0.1,
         workers: int = 1, batch_size: int = 8, progress: bool = True, force: bool = False,
         report: bool = True, echo=None, mp_context: str = "spawn", out=None, log_progress: bool = False,
         thresholds: dict | None = None, causal: bool = False, device=None, **setting_kw) -> pd.DataFrame:
    """Scan every checkpoint of ``run_dir``; returns the tidy scores table (also written to
    ``RUN/scan/scores.parquet``). Setting keywords (``variant``, ``context_lens``, ``depths``,
    ``n_per_cell``, ``seed``, ``haystack``, ``recurrent``, ``only_correct``, ``max_new_tokens``,
    ``tasks``; ``compat`` = "ours" | "thunlp" | "wu" and the single choices ``query_offset``,
    ``answer_positions``, ``span_locate``, ``accept``: ``detect.compat``) build a ``ScanSettings``.
    ``reference``: ``"first"`` (first readable checkpoint), a step number or a checkpoint folder,
    for ``qk_distance``. ``workers > 1`` starts processes with
    ``mp_context`` ("spawn": safe, each worker imports the library, a few seconds; "fork":
    instant on Linux, but unsafe once the parent has run multi-threaded torch code).
    ``out``: write the tables, report, cache and lock into this folder instead of ``RUN/scan/``.
    ``log_progress`` (with ``progress=False``): ``echo`` one line per scored checkpoint,
    ``scanning 3/13 checkpoints (step_000400 done)  0m12s`` (for worker processes, where a bar
    is unreadable).
    ``thresholds``: {measure: threshold in [0, 1]} of formation_measures.parquet, over the
    defaults mass 0.5, copy_tf 0.1, copy 0.1 (a measure is a retrieval metric of
    ``detect.metrics``; ``threshold`` stays the copy threshold of formation.parquet).
    ``causal=True``: also the causal scores of every head (``detect.causal``: ablation,
    ablation_mean, attribution, attribution_mean, attribution_ig; their own cache entries, so
    a later causal scan of a scanned run adds only them) and the formation measure ``ablation``
    (threshold 1.0 nat; see docs/CAUSAL.md). ``df.attrs["scan"]`` holds counts
    (scored, cached, skipped) and the skipped checkpoints with their errors.
    ``device``: "cpu" (default), "cuda", "cuda:N" or "auto" (CUDA when present); ``dtype``:
    float32 (default) or "bf16" (a setting: keyed in the cache; the device is not). See docs/GPU.md.
    A Hugging Face checkpoint, or a folder of them, goes to ``retrieval_heads.pipeline.hf_scanner.hf_scan``
    (same tables; extra keywords ``trust_remote_code``, ``tokenizer``, ``dtype``, ``device``: there
    the default device is CUDA when present)."""
    from ..hf.loader import is_hf_path

    if not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"scan: takes a run folder or Hugging Face checkpoint folder(s), got "
                        f"{type(run_dir).__name__}; for a model in memory use rh.score_heads(model, batch)")
    if is_hf_path(run_dir):
        from .hf_scanner import hf_scan

        if causal:
            raise ValueError("causal: causal scores are computed for our own run folders only, not Hugging Face "
                             "checkpoints")
        if (settings.tasks if settings is not None else setting_kw.get("tasks")) is not None:
            raise ValueError("tasks: task files are scanned on our own run folders only so far; for a Hugging Face "
                             "model use rh.tasks.load_jsonl(path, model.tokenizer) with rh.score_heads")
        chosen = {k: getattr(settings, k) for k in COMPAT_FIELDS} if settings is not None else {}
        chosen.update({k: setting_kw[k] for k in COMPAT_FIELDS if k in setting_kw})
        if not ScanSettings(**chosen).rules().is_default:
            raise ValueError("compat: the original scoring rules are scanned on our own run folders only so far; "
                             "for a Hugging Face model use rh.score_heads(model, batch, compat=...)")
        if device is not None:
            setting_kw["device"] = device
        return hf_scan(run_dir, settings, reference=reference, threshold=threshold, batch_size=batch_size,
                       progress=progress, force=force, report=report, echo=echo, scan_dir=out, workers=workers,
                       log_progress=log_progress, thresholds=thresholds, **setting_kw)
    dev = scan_device(device)  # "cuda" without CUDA: a ValueError here, before anything is read or written
    settings = make_settings(settings, setting_kw)
    if not settings.rules().is_default:
        log.info("scan %s: %s scoring rules %s", run_dir, settings.rules().name(), settings.rules().to_dict())
    return run_scan(NativeRun(run_dir, device=dev), settings, reference=reference,
                    threshold=threshold, workers=workers, batch_size=batch_size, progress=progress, force=force,
                    report=report, echo=echo, mp_context=mp_context, scan_dir=out, log_progress=log_progress,
                    thresholds=thresholds, causal=causal)


def _check_options(workers, batch_size, threshold) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: must be >= 1, got {workers}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be an integer >= 1, got {batch_size!r}")
    if not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold: a copy score in [0, 1], got {threshold!r}")


def run_scan(source: CheckpointSource, settings: ScanSettings, *, reference="first", threshold: float = 0.1,
             workers: int = 1, batch_size: int = 8, progress: bool = True, force: bool = False,
             report: bool = True, echo=None, mp_context: str = "spawn", scan_dir=None,
             log_progress: bool = False, thresholds: dict | None = None, causal: bool = False,
             executor=None) -> pd.DataFrame:
    """The one scan loop, for any :class:`CheckpointSource`: read every checkpoint and check the
    settings (nothing is written before that), then under the lock plan what is not cached,
    score it (in ``workers`` processes where the source allows), assemble and write the tables
    unless they are up to date, and build the report.
    ``executor(source, jobs)``: scores the planned jobs elsewhere instead (an iterable of the
    results of ``score_checkpoint`` with ``job["deliver"]``, in any order; called once, under the
    lock, even with no jobs): the ranks of ``pipeline.distributed``. The results' cache entries
    are written here, as a worker pool's are."""
    echo = echo or _default_echo
    _check_options(workers, batch_size, threshold)
    thresholds = measure_thresholds(thresholds, causal=causal)
    if workers > 1 and not source.parallel:
        raise ValueError(f"workers: {source.kind}s are scored one at a time in this process; use workers=1")
    scan_dir = Path(scan_dir) if scan_dir is not None else source.default_scan_dir()
    cache_dir = scan_dir / "cache"
    # 1. read and check: a bad setting or an unreadable source writes nothing
    hashes = _read_hashes(cache_dir)
    hashes_before = json.dumps(hashes, sort_keys=True)
    ckpts = source.read(hashes)
    good = [c for c in ckpts if c.error is None]
    if not good:
        raise ValueError(f"{source.path}: none of the {len(ckpts)} {source.kind}(s) can be read; first: "
                         f"{ckpts[0].error}")
    settings, skey = source.prepare(settings, good, echo)
    ref = source.reference(reference, good)
    # 2. under the lock: plan, score, assemble, write
    cache_dir.mkdir(parents=True, exist_ok=True)
    with scan_lock(scan_dir, echo):
        for f in [*scan_dir.glob(".tmp-*"), *cache_dir.glob(".tmp-*")]:  # a killed scan's partial writes
            f.unlink(missing_ok=True)  # (safe: every writer of this folder holds the lock)
        if json.dumps(hashes, sort_keys=True) != hashes_before:
            write_json(cache_dir / "hashes.json", hashes)
        jobs = _plan(source, good, settings, skey, ref, cache_dir, batch_size, force, echo, causal=causal)
        errors = _run_jobs(source, jobs, workers=workers, mp_context=mp_context, progress=progress,
                           log_progress=log_progress, echo=echo, n_total=len(ckpts), executor=executor)
        n_scored = sum(j["need_scores"] or j.get("need_causal", False) for j in jobs)
        for c in good:
            if str(c.path) in errors:
                c.error = errors[str(c.path)]
        skipped = [c for c in ckpts if c.error is not None]
        for c in skipped:
            echo(f"skipped {c.path.name}: {c.error}")
        if len(skipped) == len(ckpts):
            raise ValueError(f"{source.path}: no {source.kind} could be scored; first: {skipped[0].error}")
        tables = _assemble(ckpts, cache_dir, skey, ref, settings, threshold, thresholds, causal=causal)
        state = {
            "run": str(source.path), "settings": settings.to_dict(), "settings_key": skey,
            "reference": {"step": ref.step, "path": str(ref.path), "weights_sha256": ref.sha},
            "threshold": threshold, "thresholds": thresholds, "model": source.model_info(good, ref),
            "checkpoints": [[c.path.name, c.sha, c.error] for c in ckpts], **source.extra(),
            **({"causal": True} if causal else {}),
        }
        state = json.loads(json.dumps(state))  # as stored (tuples -> lists)
        unchanged = not force and _read_state(scan_dir) == state and _tables_intact(scan_dir)
        if not unchanged:
            _write_tables(scan_dir, tables, state, settings, threshold, thresholds)
        if report and (not unchanged or not (scan_dir / "report.html").exists()):
            from .report import build_report

            # RUN/scan/ -> the run's report (with its interventions); any other folder -> its tables
            build_report(scan_dir.parent if scan_dir == source.default_scan_dir() else scan_dir)
    df = tables["scores"]
    df.attrs["scan"] = {"n_checkpoints": len(ckpts), "n_scored": n_scored - len(errors),
                        "n_cached": len(good) - n_scored, "n_skipped": len(skipped),
                        "skipped": [{"step": c.step, "path": str(c.path), "error": c.error} for c in skipped],
                        "unchanged": unchanged, "formation": tables["run_formation"],
                        "formation_measures": tables["run_formation_measures"],
                        "scan_dir": str(scan_dir), **source.extra()}
    return df


def _plan(source, good, settings, skey, ref, cache_dir, batch_size, force, echo=None, causal=False) -> list[dict]:
    """A job for every checkpoint whose scores or Q/K distances are not cached yet. A damaged
    cache entry (not JSON, not UTF-8, wrong types, keys or shapes) is never trusted: one warning
    line names it, and the checkpoint is scored again (its entry rewritten)."""
    echo = echo or _default_echo
    jobs = []
    for c in good:
        cf = _cache_file(cache_dir, c.sha, skey, c.config_sha)
        qf = _qk_file(cache_dir, c.sha, ref.sha, settings.recurrent)
        need_s, need_q = force or not cf.exists(), force or not qf.exists()
        shape = None
        if not need_s:
            try:
                shape = _check_scores(_load_cache(cf), c.sha, skey)
            except ValueError as e:
                echo(f"warning: damaged cache entry {cf} ({e}); ignored, scoring {c.path.name} again")
                need_s = True
        if not need_q:
            try:
                _check_qk(_load_cache(qf), shape)
            except ValueError as e:
                echo(f"warning: damaged cache entry {qf} ({e}); ignored, scoring {c.path.name} again")
                need_q = True
        need_c, kf = False, _causal_file(cache_dir, c.sha, skey, c.config_sha)
        if causal:
            need_c = force or not kf.exists()
            if not need_c:
                try:
                    _check_causal(_load_cache(kf), c.sha, skey)
                except ValueError as e:
                    echo(f"warning: damaged cache entry {kf} ({e}); ignored, scoring {c.path.name} again")
                    need_c = True
        if need_s or need_q or need_c:
            job = source.job(c, settings, skey, ref, cf, qf, need_s, need_q, batch_size)
            if need_c:
                job.update(need_causal=True, causal_file=str(kf))
            jobs.append(job)
    return jobs


def _run_jobs(source, jobs, *, workers, mp_context, progress, log_progress, echo, n_total, executor=None) -> dict:
    """Run the jobs (serially, in a process pool of ``workers``, or by ``executor``); {path: error}
    of failures."""
    from tqdm import tqdm

    errors = {}
    bar = tqdm(total=len(jobs), desc=f"scan {source.name}", unit="ckpt", disable=not progress or not jobs,
               file=sys.stderr)
    t_scan, done = time.time(), [0]

    def advance(r):
        for f, obj in r.get("writes", ()):  # a worker's results: written here, under the scan's lock
            write_json(Path(f), obj)
        if r["error"]:
            errors[r["path"]] = r["error"]
        bar.update(1)
        done[0] += 1
        if log_progress and not progress:
            echo(f"scanning {done[0]}/{len(jobs)} checkpoints ({Path(r['path']).name} "
                 f"{'skipped' if r['error'] else 'done'})  {format_duration(time.time() - t_scan)}")

    if log_progress and not progress:
        echo(f"scanning {len(jobs)} of {n_total} checkpoints ({n_total - len(jobs)} cached)"
             if jobs else f"scanning: all {n_total} checkpoints cached")
    if executor is not None:
        for j in jobs:
            j["deliver"] = True  # results come back to this process, which holds the lock, to be written
        for r in executor(source, jobs):
            advance(r)
    elif workers > 1 and len(jobs) > 1:
        import concurrent.futures as cf_
        import multiprocessing as mp

        threads = max(1, torch.get_num_threads() // workers)
        for j in jobs:
            j["threads"] = threads
            j["deliver"] = True  # results come back to this process, which holds the lock, to be written
        with cf_.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context(mp_context),
                                     initializer=_init_worker, initargs=(threads, os.getpid())) as ex:
            for fut in cf_.as_completed([ex.submit(score_checkpoint, j) for j in jobs]):
                advance(fut.result())
    else:
        for j in jobs:
            advance(source.score(j))
    bar.close()
    return errors


# the ModelConfig fields that determine the parameters' shapes (n_layers follows the layout)
SHAPE_FIELDS = ("layout", "d_model", "n_heads", "n_kv_heads", "d_mlp", "vocab_size", "d_state", "tie_embeddings")


def _shape_difference(cfg, base: Checkpoint) -> str | None:
    """``"d_model 32 differs from the run's 16 (step_000000)"`` for the first shape field in which
    model config ``cfg`` differs from checkpoint ``base``'s; None when the shapes agree."""
    ref = base.meta["model"]
    for f in SHAPE_FIELDS:
        a, b = getattr(cfg, f), getattr(ref, f)
        if a != b:
            return f"{f} {_show(a)} differs from the run's {_show(b)} ({base.path.name})"
    return None


def _show(v) -> str:
    return repr(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)


def _skip_other_shapes(ckpts: list[Checkpoint]) -> None:
    """Mark every readable checkpoint whose model has other parameter shapes than the run's first
    readable one (the tables and the Q/K comparison need one shape). A checkpoint whose weights do
    not even match its own config.json keeps that error (the more basic one)."""
    good = [c for c in ckpts if c.error is None]
    if not good:
        return
    base = good[0]
    for c in good[1:]:
        diff = _shape_difference(c.meta["model"], base)
        if diff is None:
            continue
        try:
            load_checkpoint(c.path)
        except (CheckpointError, OSError) as e:
            c.error = str(e)
            continue
        c.error = f"{c.path / 'config.json'}: {diff}"


def _pick_reference(run_dir: Path, reference, good: list[Checkpoint]) -> Checkpoint:
    if reference in (None, "first"):
        errors = []
        for c in good:  # the first checkpoint whose weights load
            try:
                load_checkpoint(c.path)
                return c
            except CheckpointError as e:
                errors.append(str(e))
        raise ValueError(f"{run_dir}: none of the {len(good)} checkpoint(s) can be loaded; first: {errors[0]}")
    if isinstance(reference, int) or (isinstance(reference, str) and reference.isdigit()):
        for c in good:
            if c.step == int(reference):
                break
        else:
            raise ValueError(f"reference: no readable checkpoint at step {reference} in {run_dir}")
    else:
        p = Path(reference)
        c = Checkpoint(path=p, step=-1)
        c.meta = read_meta(p)
        c.step = int(c.meta.get("step", -1))
        diff = _shape_difference(c.meta["model"], good[0])
        if diff is not None:
            raise ValueError(f"reference: {p / 'config.json'}: {diff}; the reference needs the run's shapes")
        c.sha = weights_hash(p)
    load_checkpoint(c.path)  # raises CheckpointError (a ValueError) when unreadable
    return c


def _tables_intact(scan_dir: Path) -> bool:
    """Every table exists and parses (a damaged one is rewritten, not trusted)."""
    try:
        for f in ("scores.parquet", "niah.parquet", "formation.parquet", "checkpoints.parquet",
                  "formation_measures.parquet"):
            pd.read_parquet(scan_dir / f, columns=[])
        json.loads((scan_dir / "formation.json").read_text())
        return True
    except Exception:  # missing, truncated, not parquet/JSON: pyarrow raises several types
        return False


def _read_state(scan_dir: Path):
    try:
        return json.loads((scan_dir / "scan.json").read_text())
    except (OSError, ValueError):
        return None


def _assemble(ckpts, cache_dir: Path, skey: str, ref: _Ckpt, settings: ScanSettings, threshold: float,
              thresholds: dict | None = None, causal: bool = False) -> dict:
    score_rows, niah_rows, ck_rows = [], [], []
    for c in ckpts:
        base = {"step": c.step, "tokens_seen": c.tokens_seen, "path": str(c.path), "weights_sha256": c.sha}
        if c.error is not None:
            ck_rows.append(dict(base, status="skipped", error=c.error))
            continue
        cf = _cache_file(cache_dir, c.sha, skey, c.config_sha)
        qf = _qk_file(cache_dir, c.sha, ref.sha, settings.recurrent)
        try:  # just written or checked by _plan, under the lock: a failure here names the file
            shape = _check_scores(d := _load_cache(cf), c.sha, skey)
        except ValueError as e:
            raise ValueError(f"{cf}: damaged cache entry ({e}); scan again (it is rebuilt)") from None
        try:
            _check_qk(qk := _load_cache(qf), shape)
        except ValueError as e:
            raise ValueError(f"{qf}: damaged cache entry ({e}); scan again (it is rebuilt)") from None
        layout = d["layout"]
        mats = {m: _none_to_nan(d["metrics"][m]) for m in attention_metrics()}
        mats.update({m: _none_to_nan(qk[metric(m).weights_key]) for m in weight_metrics()})
        for m, mat in mats.items():
            for l in d["layers"]:
                if metric(m).kind == "weights" and all(math.isnan(v) for v in mat[l]):
                    continue  # no Q/K weights (e.g. a Mamba layer)
                for h, v in enumerate(mat[l]):
                    score_rows.append((c.step, c.tokens_seen, l, h, layout[l], m, float(v)))
        if causal:
            kf = _causal_file(cache_dir, c.sha, skey, c.config_sha)
            try:
                _check_causal(k := _load_cache(kf), c.sha, skey)
            except ValueError as e:
                raise ValueError(f"{kf}: damaged cache entry ({e}); scan again (it is rebuilt)") from None
            for m in causal_metrics():
                mat = _none_to_nan(k["metrics"][m])
                for l in k["layers"]:
                    for h, v in enumerate(mat[l]):
                        score_rows.append((c.step, c.tokens_seen, l, h, layout[l], m, float(v)))
        for r in d["niah"]:
            niah_rows.append((c.step, c.tokens_seen, r["context_len"], r["depth"], r["accuracy"], r["n"]))
        acc = [r["accuracy"] for r in d["niah"]]
        ck_rows.append(dict(base, status="ok", error=None, **d["counts"],
                            accuracy=sum(acc) / len(acc) if acc else math.nan))
    scores = pd.DataFrame(score_rows, columns=SCORES_COLUMNS)
    scores = scores.astype({"step": "int64", "tokens_seen": "int64", "layer": "int64", "head": "int64",
                            "value": "float64"})
    niah = pd.DataFrame(niah_rows, columns=NIAH_COLUMNS).astype(
        {"step": "int64", "tokens_seen": "int64", "context_len": "int64", "n": "int64"})
    form = formation_table(scores, threshold=threshold, metric="copy")
    thresholds = measure_thresholds(thresholds, causal=causal)
    measures = formation_by_measure(scores, thresholds)
    return {"scores": scores, "niah": niah, "checkpoints": pd.DataFrame(ck_rows), "formation": form,
            "run_formation": run_formation(form, "F"), "formation_measures": measures,
            "run_formation_measures": run_formation_by_measure(measures, "F", measures=list(thresholds))}


def _write_tables(scan_dir: Path, t: dict, state: dict, settings: ScanSettings, threshold: float,
                  thresholds: dict | None = None) -> None:
    thresholds = measure_thresholds(thresholds)
    write_parquet(scan_dir / "scores.parquet", t["scores"])
    write_parquet(scan_dir / "niah.parquet", t["niah"])
    write_parquet(scan_dir / "checkpoints.parquet", t["checkpoints"])
    write_parquet(scan_dir / "formation.parquet", t["formation"])
    write_parquet(scan_dir / "formation_measures.parquet", t["formation_measures"])
    form = t["formation"]
    write_json(scan_dir / "formation.json", {
        "threshold": threshold, "metric": "copy", "model": state["model"], "settings": state["settings"],
        "reference": state["reference"],
        "run": dict(t["run_formation"], description="first full-attention head whose copy score stays "
                                                    f">= {threshold} from this step on"),
        "heads": [{k: _nan_to_none(v) if isinstance(v, float) else v for k, v in r.items()}
                  for r in form.to_dict("records")],
        "skipped": [{"checkpoint": n, "error": e} for n, _, e in state["checkpoints"] if e],
        "measures": {m: dict(r, threshold=thresholds[m]) for m, r in t["run_formation_measures"].items()},
    })
    write_json(scan_dir / "scan.json", state)  # last: marks the tables as complete
