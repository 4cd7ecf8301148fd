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
import math
from pathlib import Path

import pandas as pd
import torch

from ..hf.loader import find_tokenizer_dir, list_hf_checkpoints, load_hf, load_tokenizer, read_hf_config
from ..hf.needles import hf_needle_batch
from ..storage.files import write_json
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
            with open(f, "rb") as fp:
                for chunk in iter(lambda: fp.read(1 << 20), b""):
                    fh.update(chunk)
            hit = memo[key] = sig + [fh.hexdigest()]
        h.update(f.name.encode() + hit[2].encode())
    return h.hexdigest()


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
    niah = []
    cl, dp = torch.tensor(res.context_lens), torch.tensor(res.depths)
    for L in settings.context_lens:
        for d in settings.depths:
            sel = (cl == L) & ((dp - d).abs() < 1e-9)
            m = res.match[sel]
            niah.append({"context_len": L, "depth": d, "accuracy": float(m.mean()) if len(m) else math.nan,
                         "n": int(sel.sum())})
    n_err = sum(len(b.errors) for b in batches)
    write_json(cache_file, {
        "version": S.SCORE_VERSION, "weights_sha256": sha, "settings_key": key,
        "settings": settings.to_dict(), "layout": model.layer_types, "n_heads": model.n_heads,
        "layers": res.scored_layers,
        "metrics": {m: S._nan_to_none(res.scores(m).tolist()) for m in S.SCORE_METRICS},
        "counts": {"n_samples": res.n_samples + n_err, "n_invalid": res.n_invalid, "n_needle_errors": n_err,
                   "n_correct": res.n_correct, "n_counted": res.n_counted},
        "invalid": [list(x) for x in res.invalid], "niah": niah,
        "needle_errors": [[b.samples[0].context_len if b.samples else None, i, e]
                          for b in batches for i, e in b.errors],
    })


def hf_scan(path, settings: S.ScanSettings | None = None, *, reference="first", threshold: float = 0.1,
            batch_size: int = 4, progress: bool = True, force: bool = False, report: bool = True, echo=None,
            out=None, scan_dir=None, trust_remote_code: bool = False, tokenizer=None, device=None, dtype=None,
            layout: str | None = None, attn_implementation: str | None = None, workers: int = 1,
            **setting_kw) -> pd.DataFrame:
    """Scan the HF checkpoint(s) at ``path``; returns the tidy scores table (see the module
    docstring). Keywords as ``retrieval_heads.detect.scan`` plus the loading options of
    ``load_hf`` (``trust_remote_code``, ``tokenizer``, ``device``, ``dtype``, ``layout``) and
    ``out`` (tables go to ``OUT/scan/``; default ``PATH/scan/``) or ``scan_dir`` (tables, cache and
    lock go into that folder itself, as ``scan(out=DIR)``). ``workers`` is accepted and ignored
    (HF checkpoints are scored one at a time)."""
    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    from ..hf.weights import hf_qk_distance, read_qk_weights

    echo = echo or S._default_echo
    if settings is None:
        settings = S.ScanSettings(**setting_kw)
    elif setting_kw:
        settings = dataclasses.replace(settings, **setting_kw)
    path = Path(path)
    found = list_hf_checkpoints(path)
    root = Path(out) if out is not None else path  # tables go to ROOT/scan/ (or to scan_dir)
    scan_dir = Path(scan_dir) if scan_dir is not None else root / "scan"
    if scan_dir != root / "scan":
        root = scan_dir  # build_report finds tables written directly into a folder
    cache_dir = scan_dir / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    hf_logging.disable_progress_bar()
    with S.scan_lock(scan_dir, echo):
        memo_file = cache_dir / "hashes.json"
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, ValueError):
            memo = {}
        ckpts, cfgs = [], {}
        for c in found:
            k = S._Ckpt(path=c.path, step=int(c.step), tokens_seen=int(c.tokens_seen))
            try:
                cfgs[str(c.path)] = read_hf_config(c.path)
                k.sha = weights_sha(c.path, memo)
            except (OSError, ValueError) as e:
                k.error = str(e)
            ckpts.append(k)
        write_json(memo_file, memo)
        good = [c for c in ckpts if c.error is None]
        if not good:
            raise ValueError(f"{path}: none of the {len(ckpts)} HF checkpoint(s) can be read; first: "
                             f"{ckpts[0].error}")
        if tokenizer is None or isinstance(tokenizer, (str, Path)):
            tokenizer = load_tokenizer(tokenizer or find_tokenizer_dir(good[0].path),
                                       trust_remote_code=trust_remote_code)
        settings = _resolve(settings, cfgs[str(good[0].path)])
        batches = needle_grid(tokenizer, settings)
        n_err = sum(len(b.errors) for b in batches)
        if n_err:
            first = next(e for b in batches for _, e in b.errors)
            echo(f"warning: {n_err} needle sample(s) left out: answer span not located (first: {first})")
        skey = hashlib.sha256(json.dumps([settings.key(), tokenizer_fingerprint(tokenizer), layout, "hf"])
                              .encode()).hexdigest()
        ref = _pick_reference(path, reference, good, memo)

        def load(c):
            return load_hf(c.path, device=device, dtype=dtype, attn_implementation=attn_implementation,
                           trust_remote_code=trust_remote_code, layout=layout, tokenizer=tokenizer,
                           step=c.step, tokens_seen=c.tokens_seen)

        todo = []
        for c in good:
            cf = S._cache_file(cache_dir, c.sha, skey)
            qf = S._qk_file(cache_dir, c.sha, ref.sha, settings.recurrent)
            if force or not cf.exists() or not qf.exists():
                todo.append((c, cf, qf))
        ref_qk = None
        n_scored = 0
        bar = tqdm(total=len(todo), desc=f"scan {path.name}", unit="ckpt", disable=not progress or not todo)
        for c, cf, qf in todo:
            try:
                model = load(c)
                if force or not cf.exists():
                    _score(model, settings, batches, c.sha, skey, batch_size, cf)
                if force or not qf.exists():
                    if ref_qk is None:
                        ref_qk = read_qk_weights(ref.path, model)
                    qk = hf_qk_distance(model, ref_qk)
                    write_json(qf, {"l2": S._nan_to_none(qk["l2"].tolist()),
                                      "rel_l2": S._nan_to_none(qk["rel_l2"].tolist())})
                n_scored += 1
            except (OSError, ValueError, RuntimeError) as e:
                c.error = f"{type(e).__name__}: {e}"
            finally:
                model = None
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            bar.update(1)
        bar.close()
        skipped = [c for c in ckpts if c.error is not None]
        for c in skipped:
            echo(f"skipped {c.path.name}: {c.error}")
        if len(skipped) == len(ckpts):
            raise ValueError(f"{path}: no HF checkpoint could be scored; first: {skipped[0].error}")
        tables = S._assemble(ckpts, cache_dir, skey, ref, settings, threshold)
        from transformers import AutoConfig

        from ..hf.layout import hf_layout

        spec = hf_layout(AutoConfig.from_pretrained(str(ref.path), local_files_only=True,
                                                    trust_remote_code=trust_remote_code), layout=layout)
        state = {
            "run": str(path), "settings": settings.to_dict(), "settings_key": skey,
            "reference": {"step": ref.step, "path": str(ref.path), "weights_sha256": ref.sha},
            "threshold": threshold,
            "model": {"layout": spec.layout, "windows": spec.windows, "pos": spec.pos,
                      "pos_by_kind": spec.pos_by_kind(), "n_heads": spec.n_heads, "n_layers": spec.n_layers,
                      "d_model": spec.d_model, "hf_model_type": spec.model_type,
                      "describe": spec.describe().splitlines()[0], "source": "huggingface",
                      "tokenizer": getattr(tokenizer, "name_or_path", "")},
            "checkpoints": [[c.path.name, c.sha, c.error] for c in ckpts],
            "needle_errors": n_err,
        }
        state = json.loads(json.dumps(state))
        old = S._read_state(scan_dir)
        unchanged = old == state and all((scan_dir / f).exists() for f in
                                         ("scores.parquet", "niah.parquet", "formation.parquet",
                                          "checkpoints.parquet", "formation.json"))
        if not unchanged:
            S._write_tables(scan_dir, tables, state, settings, threshold)
        if report and (not unchanged or not (scan_dir / "report.html").exists()):
            try:
                from .report import build_report
                build_report(root)
            except (ImportError, OSError, ValueError, KeyError) as e:
                echo(f"report not written: {e}")
    df = tables["scores"]
    df.attrs["scan"] = {"n_checkpoints": len(ckpts), "n_scored": n_scored,
                        "n_cached": len(good) - len(todo), "n_skipped": len(skipped),
                        "skipped": [{"step": c.step, "path": str(c.path), "error": c.error} for c in skipped],
                        "unchanged": unchanged, "formation": tables["run_formation"],
                        "scan_dir": str(scan_dir), "needle_errors": n_err, "layout": spec.layout,
                        "describe": spec.describe()}
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
    return S._Ckpt(path=p, step=-1, sha=weights_sha(p, memo))
