"""Scan HF checkpoints (one, or a series in training order) with the same detector and tables.

    >>> df = hf_scan("ckpts/", context_lens=(1024,), depths=(0.2, 0.5, 0.8))   # doctest: +SKIP

``path`` is one HF checkpoint folder or a folder of them (``checkpoint-*``, ``step*``, any
sub-folders holding an HF config.json; see ``loader.list_hf_checkpoints``). Each checkpoint
is loaded as an ``HFModel`` and scored by ``retrieval_heads.detect.score_heads`` on one fixed
needle set built with the model's own tokenizer (``needles.hf_needle_batch``); recurrent layers
stay NaN. Tables, cache and report are those of ``retrieval_heads.pipeline.scanner`` and go to
``PATH/scan/`` (or ``OUT/scan/``, or ``scan_dir`` itself): scores.parquet, niah.parquet, checkpoints.parquet,
formation.parquet/json, report.html. Needle samples whose answer span could not be located
are left out of every average, counted (``n_needle_errors`` in checkpoints.parquet and
``df.attrs["scan"]``) and reported, never scored as zeros. A checkpoint that cannot be loaded is
skipped and reported like in the native scan.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
from pathlib import Path

import pandas as pd
import torch

from ..detect.metrics import attention_metrics
from ..hf.loader import find_tokenizer_dir, list_hf_checkpoints, load_hf, load_tokenizer, read_hf_config
from ..hf.needles import hf_needle_batch
from ..storage.files import regular_file, write_json
from . import scanner as S

DEFAULT_CONTEXT = 1024


def weights_sha(path: Path, memo: dict) -> str:
    """sha256 over the checkpoint's *.safetensors files (memoised per file size and mtime)."""
    h = hashlib.sha256()
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights")
    for f in files:
        st = f.stat()
        key, sig = str(f.resolve()), [st.st_size, st.st_mtime_ns]
        hit = memo.get(key)
        if not (hit and hit[:2] == sig):
            fh = hashlib.sha256()
            with open(regular_file(f), "rb") as fp:
                for chunk in iter(lambda: fp.read(1 << 20), b""):
                    fh.update(chunk)
            hit = memo[key] = sig + [fh.hexdigest()]
        h.update(f.name.encode() + hit[2].encode())
    return h.hexdigest()


def check_loadable(path: Path, cfg: dict, trust_remote_code: bool) -> None:
    """What can be checked before anything is written: shipped modelling code needs
    ``trust_remote_code``, pickle weights are refused, and every safetensors file has a readable
    header (garbage weights fail here, not after the scan folder exists)."""
    from safetensors import SafetensorError, safe_open

    from ..hf.loader import _check_remote_code, _check_weights

    _check_remote_code(path, cfg, trust_remote_code)
    _check_weights(path)
    for f in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(regular_file(f)), "pt") as h:
                h.keys()
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{f}: unreadable safetensors file ({e})") from None


def tokenizer_fingerprint(tok) -> str:
    vocab = tok.get_vocab()
    blob = json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False)
    extra = [getattr(tok, "bos_token_id", None), getattr(tok, "eos_token_id", None), type(tok).__name__]
    return hashlib.sha256((blob + json.dumps(extra)).encode()).hexdigest()


def needle_grid(tok, settings: S.ScanSettings) -> list:
    """One ``HFNeedleBatch`` per context length (seeded like ``tasks.niah_grid``)."""
    out = []
    for L in settings.context_lens:
        ds = [d for d in settings.depths for _ in range(settings.n_per_cell)]
        out.append(hf_needle_batch(tok, n=len(ds), context_len=int(L), seed=settings.seed + int(L),
                                   variant=settings.variant, depths=ds, haystack=settings.haystack))
    return out


def _max_positions(cfg: dict) -> int | None:
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    v = text.get("max_position_embeddings") or cfg.get("max_position_embeddings")
    return int(v) if v else None


def _resolve(settings: S.ScanSettings, cfg: dict) -> S.ScanSettings:
    max_new = settings.max_new_tokens or 64
    limit = _max_positions(cfg)
    if settings.context_lens is None:
        L = DEFAULT_CONTEXT if limit is None else min(DEFAULT_CONTEXT, limit - max_new)
        settings = dataclasses.replace(settings, context_lens=(L,))
    if limit is not None:
        too_long = [L for L in settings.context_lens if L + max_new > limit]
        if too_long:
            raise ValueError(f"context_lens: {too_long} + up to {max_new} decoded tokens exceed the model's "
                             f"max_position_embeddings={limit}; use shorter --context-lens")
    return settings


def _score(model, settings: S.ScanSettings, batches, sha: str, key: str, batch_size: int, cache_file: Path):
    from ..detect.scores import HeadScores, score_heads

    parts = [score_heads(model, b, recurrent=settings.recurrent, only_correct=settings.only_correct,
                         max_new_tokens=settings.max_new_tokens, batch_size=batch_size) for b in batches]
    res = HeadScores.merge(parts)
    niah = S.niah_cells(res, batches, settings)
    n_err = sum(len(b.errors) for b in batches)
    write_json(cache_file, {
        "version": S.SCORE_VERSION, "weights_sha256": sha, "settings_key": key,
        "settings": settings.to_dict(), "layout": model.layer_types, "n_heads": model.n_heads,
        "layers": res.scored_layers,
        "metrics": {m: S._nan_to_none(res.scores(m).tolist()) for m in attention_metrics()},
        "counts": {"n_samples": res.n_samples + n_err, "n_invalid": res.n_invalid, "n_needle_errors": n_err,
                   "n_correct": res.n_correct, "n_counted": res.n_counted},
        "invalid": [list(x) for x in res.invalid], "niah": niah,
        "needle_errors": [[b.samples[0].context_len if b.samples else None, i, e]
                          for b in batches for i, e in b.errors],
    })


class HFSeries(S.CheckpointSource):
    """One Hugging Face checkpoint folder, or a folder of them in training order."""

    kind = "HF checkpoint"
    parallel = False  # one model at a time in this process (models may be large; GPU memory)

    def __init__(self, path, *, out=None, trust_remote_code=False, tokenizer=None, device=None, dtype=None,
                 layout=None, attn_implementation=None):
        super().__init__(path)
        self.name = self.path.name
        self.out = Path(out) if out is not None else None
        self.load_kw = dict(device=device, dtype=dtype, attn_implementation=attn_implementation,
                            trust_remote_code=trust_remote_code, layout=layout)
        self.tokenizer = tokenizer
        self.cfgs: dict = {}
        self.memo: dict = {}
        self.batches: list = []
        self.n_needle_errors = 0
        self.ref_qk = None
        self.spec = None

    def default_scan_dir(self) -> Path:
        return (self.out if self.out is not None else self.path) / "scan"

    def read(self, hashes: dict) -> list[S.Checkpoint]:
        self.memo = hashes
        ckpts = []
        for c in list_hf_checkpoints(self.path):
            k = S.Checkpoint(path=c.path, step=int(c.step), tokens_seen=int(c.tokens_seen))
            try:
                self.cfgs[str(c.path)] = cfg = read_hf_config(c.path)
                check_loadable(c.path, cfg, self.load_kw["trust_remote_code"])
                k.sha = weights_sha(c.path, hashes)
            except (OSError, ValueError) as e:
                k.error = str(e)
            ckpts.append(k)
        return ckpts

    def prepare(self, settings, good, echo):
        tok = self.tokenizer
        if tok is None or isinstance(tok, (str, Path)):
            tok = load_tokenizer(tok or find_tokenizer_dir(good[0].path),
                                 trust_remote_code=self.load_kw["trust_remote_code"])
        self.tokenizer = tok
        settings = _resolve(settings, self.cfgs[str(good[0].path)])
        self.batches = needle_grid(tok, settings)
        self.n_needle_errors = sum(len(b.errors) for b in self.batches)
        if self.n_needle_errors:
            first = next(e for b in self.batches for _, e in b.errors)
            echo(f"warning: {self.n_needle_errors} needle sample(s) left out: answer span not located "
                 f"(first: {first})")
        skey = hashlib.sha256(json.dumps([settings.key(), tokenizer_fingerprint(tok), self.load_kw["layout"],
                                          "hf"]).encode()).hexdigest()
        self.settings = settings
        return settings, skey

    def reference(self, reference, good):
        return _pick_reference(self.path, reference, good, self.memo)

    def score(self, job: dict) -> dict:
        from ..hf.weights import hf_qk_distance, read_qk_weights

        model = None
        try:
            model = load_hf(job["path"], tokenizer=self.tokenizer, step=job["step"],
                            tokens_seen=job["tokens_seen"], **self.load_kw)
            if job["need_scores"]:
                _score(model, self.settings, self.batches, job["sha"], job["settings_key"], job["batch_size"],
                       Path(job["cache_file"]))
            if job["need_qk"]:
                if self.ref_qk is None:
                    self.ref_qk = read_qk_weights(Path(job["ref_path"]), model)
                qk = hf_qk_distance(model, self.ref_qk)
                write_json(Path(job["qk_file"]), {k: S._nan_to_none(v.tolist()) for k, v in qk.items()})
            return {"path": job["path"], "error": None}
        except (OSError, ValueError, RuntimeError) as e:
            return {"path": job["path"], "error": f"{type(e).__name__}: {e}"}
        finally:
            model = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def job(self, c, settings, skey, ref, cache_file, qk_file, need_scores, need_qk, batch_size):
        return dict(super().job(c, settings, skey, ref, cache_file, qk_file, need_scores, need_qk, batch_size),
                    step=c.step, tokens_seen=c.tokens_seen)

    def model_info(self, good, ref) -> dict:
        from transformers import AutoConfig

        from ..hf.layout import hf_layout

        self.spec = spec = hf_layout(AutoConfig.from_pretrained(str(ref.path), local_files_only=True,
                                                                trust_remote_code=self.load_kw["trust_remote_code"]),
                                     layout=self.load_kw["layout"])
        return {"layout": spec.layout, "windows": spec.windows, "pos": spec.pos,
                "pos_by_kind": spec.pos_by_kind(), "n_heads": spec.n_heads, "n_layers": spec.n_layers,
                "d_model": spec.d_model, "hf_model_type": spec.model_type,
                "describe": spec.describe().splitlines()[0], "source": "huggingface",
                "tokenizer": getattr(self.tokenizer, "name_or_path", "")}

    def extra(self) -> dict:
        return {"needle_errors": self.n_needle_errors}


def hf_scan(path, settings: S.ScanSettings | None = None, *, reference="first", threshold: float = 0.1,
            batch_size: int = 4, progress: bool = True, force: bool = False, report: bool = True, echo=None,
            out=None, scan_dir=None, trust_remote_code: bool = False, tokenizer=None, device=None, dtype=None,
            layout: str | None = None, attn_implementation: str | None = None, workers: int = 1,
            log_progress: bool = False, thresholds: dict | None = None, **setting_kw) -> pd.DataFrame:
    """Scan the HF checkpoint(s) at ``path``; returns the tidy scores table (see the module
    docstring). Keywords as ``retrieval_heads.pipeline.scan`` plus the loading options of
    ``load_hf`` (``trust_remote_code``, ``tokenizer``, ``device``, ``dtype``, ``layout``) and
    ``out`` (tables go to ``OUT/scan/``; default ``PATH/scan/``) or ``scan_dir`` (tables, cache and
    lock go into that folder itself, as ``scan(out=DIR)``). HF checkpoints are scored one at a
    time in this process: ``workers`` other than 1 is an error."""
    from transformers.utils import logging as hf_logging

    source = HFSeries(path, out=out, trust_remote_code=trust_remote_code, tokenizer=tokenizer, device=device,
                      dtype=dtype, layout=layout, attn_implementation=attn_implementation)
    hf_logging.disable_progress_bar()
    df = S.run_scan(source, S.make_settings(settings, setting_kw), reference=reference, threshold=threshold,
                    workers=workers, batch_size=batch_size, progress=progress, force=force, report=report,
                    echo=echo, scan_dir=scan_dir, log_progress=log_progress, thresholds=thresholds)
    df.attrs["scan"].update(layout=source.spec.layout, describe=source.spec.describe())
    return df


def _pick_reference(path: Path, reference, good: list, memo: dict):
    if reference in (None, "first"):
        return good[0]
    if isinstance(reference, int) or (isinstance(reference, str) and reference.isdigit()):
        for c in good:
            if c.step == int(reference):
                return c
        raise ValueError(f"reference: no readable HF checkpoint at step {reference} in {path}")
    p = Path(reference)
    read_hf_config(p)
    return S.Checkpoint(path=p, step=-1, sha=weights_sha(p, memo))
