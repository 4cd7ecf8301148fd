"""NIAH accuracy grids: RULER's ``string_match_all`` on greedy output, per length and depth.

    >>> import retrieval_heads as rh
    >>> model = rh.HybridLM(rh.ModelConfig(layout="SF", d_model=32, n_heads=2, window=8))
    >>> df = rh.eval.niah_grid(model, context_lens=[128], depths=[0.5], n=2, progress=False)
    >>> list(df.columns)
    ['variant', 'context_len', 'depth', 'n', 'accuracy', 'train_len', 'beyond_train']

Lengths past the training length are allowed (that is the point of a length-extrapolation
test); lengths past ``model.cfg.max_seq_len`` raise a ``ValueError`` that says so.

A RULER-format task file (``tasks.load_jsonl``) is evaluated record by record with
``niah_tasks(model, "data/ruler_niah_single_1.jsonl")`` (``retrieval-heads eval CKPT --tasks FILE``).

Every NIAH accuracy of the package (this grid, the training loop's evaluation, the scans'
per-cell accuracy) is ``niah_scores(predictions, samples)``: RULER's ``string_match_all`` of
each decoded answer, then ``.accuracy`` (the mean) or ``.cells(...)`` (per length and depth).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..tasks import TOKENIZER, niah_batch, string_match_all

log = logging.getLogger(__name__)
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEPTH_TOL = 1e-9  # a sample belongs to a requested depth when within this


@dataclass(frozen=True)
class NiahScores:
    """RULER ``string_match_all`` of each sample's decoded answer (NaN where none was
    decoded), with the sample's context length and needle depth."""

    scores: tuple[float, ...]
    context_lens: tuple[int, ...]
    depths: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def correct(self) -> list[bool]:
        """Per sample: more than half of the gold values found (False where not decoded)."""
        return [s > 0.5 for s in self.scores]

    @property
    def accuracy(self) -> float:
        """Mean score of the decoded samples, summed in sample order (NaN when none)."""
        done = [s for s in self.scores if not math.isnan(s)]
        return sum(done) / len(done) if done else math.nan

    def cells(self, context_lens=None, depths=None) -> list[dict]:
        """``{"context_len", "depth", "accuracy", "n"}`` per (length, depth) cell, lengths outer,
        in the given order (default: those present, sorted). A sample is in a cell when its length
        is equal and its depth within ``DEPTH_TOL``; ``n`` counts the cell's samples, ``accuracy``
        is the ``accuracy`` of those (NaN for an empty cell)."""
        context_lens = sorted(set(self.context_lens)) if context_lens is None else context_lens
        depths = sorted(set(self.depths)) if depths is None else depths
        rows = []
        for L in context_lens:
            for d in depths:
                idx = [i for i, (cl, dp) in enumerate(zip(self.context_lens, self.depths))
                       if cl == L and abs(dp - d) < DEPTH_TOL]
                sub = NiahScores(tuple(self.scores[i] for i in idx), (), ())
                rows.append({"context_len": L, "depth": d, "accuracy": sub.accuracy, "n": len(idx)})
        return rows


def niah_scores(predictions: Sequence[str | None], samples: Sequence) -> NiahScores:
    """Score decoded answers against their ``NeedleSample`` s (byte or HF tokenizer): RULER's
    ``string_match_all`` (fraction of the gold values found, case-insensitive) per sample; a
    ``None`` prediction (not decoded) scores NaN and is left out of the means."""
    if len(predictions) != len(samples):
        raise ValueError(f"predictions: {len(predictions)} for {len(samples)} samples")
    scores = tuple(math.nan if p is None else string_match_all(p, s.values) for p, s in zip(predictions, samples))
    return NiahScores(scores, tuple(int(s.context_len) for s in samples),
                      tuple(float(getattr(s, "depth", math.nan)) for s in samples))


def train_len(model) -> int | None:
    """The training context length of a loaded checkpoint, or None when unknown."""
    ck = getattr(model, "checkpoint", None) or {}
    train = ck.get("train")
    return getattr(train, "context_len", None) if train is not None else None


def check_length(model, context_len: int, new_tokens: int = 0) -> None:
    """``ValueError`` when ``context_len`` prompt tokens plus ``new_tokens`` generated ones
    need positions beyond ``model.cfg.max_seq_len``."""
    need = context_len + max(new_tokens - 1, 0)
    limit = model.cfg.max_seq_len
    if need > limit:
        raise ValueError(
            f"context_len: {context_len} tokens (+{max(new_tokens - 1, 0)} generated) exceed the model's "
            f"max_seq_len={limit}; the longest usable prompt is {limit - max(new_tokens - 1, 0)} tokens"
        )


@torch.no_grad()
def greedy_answers(model, batch, max_new_tokens: int | None = None, batch_size: int = 8) -> list[str]:
    """Greedy continuations of a ``NeedleBatch`` (decoded up to EOS)."""
    if max_new_tokens is None:
        max_new_tokens = max(len(s.answer_tokens) for s in batch.samples) + 2
    check_length(model, batch.tokens.shape[1], max_new_tokens)
    out = []
    for i in range(0, len(batch), batch_size):
        toks = batch.tokens[i:i + batch_size].to(model.device)
        gen = model.generate(toks, max_new_tokens=max_new_tokens, stop_token=TOKENIZER.EOS)
        out += [TOKENIZER.decode(row.tolist()) for row in gen.cpu()]
    return out


@torch.no_grad()
def answer_metrics(model, batch, batch_size: int = 8) -> dict:
    """Teacher-forced answer quality on a ``NeedleBatch``: the prompt is followed by the gold
    answer and EOS, and each answer token (and the EOS) is predicted from the gold prefix.
    Returns ``{"answer_loss": mean NLL per token, "answer_token_acc": argmax accuracy,
    "answer_exact": fraction of samples with every token right}``. A graded companion of the
    greedy ``string_match_all`` accuracy (useful when a model is only partly trained)."""
    T = batch.tokens.shape[1]
    check_length(model, T, max(len(s.answer_tokens) for s in batch.samples) + 1)
    nll, correct, count, exact = 0.0, 0, 0, 0
    for i in range(0, len(batch), batch_size):
        samples = batch.samples[i:i + batch_size]
        tgts = [s.answer_tokens + [TOKENIZER.EOS] for s in samples]
        n = max(map(len, tgts))
        x = torch.full((len(samples), T + n - 1), TOKENIZER.PAD, dtype=torch.long)
        y = torch.full((len(samples), n), -100, dtype=torch.long)
        for j, (s, t) in enumerate(zip(samples, tgts)):
            x[j, :T + len(t) - 1] = torch.tensor(s.tokens + t[:-1])
            y[j, :len(t)] = torch.tensor(t)
        logits = model(x.to(model.device))[:, T - 1:].float().cpu()  # (b, n, V)
        mask = y != -100
        lp = logits.log_softmax(-1).gather(-1, y.clamp_min(0)[..., None])[..., 0]  # (b, n)
        hit = (logits.argmax(-1) == y) & mask
        nll -= float(lp[mask].sum())
        correct += int(hit.sum())
        count += int(mask.sum())
        exact += int((hit | ~mask).all(-1).sum())
    return {"answer_loss": nll / count, "answer_token_acc": correct / count, "answer_exact": exact / len(batch)}


def niah_grid(model, context_lens, depths=DEFAULT_DEPTHS, variant: str = "single_1", n: int = 4, *,
              seed: int = 0, haystack: str | None = None, max_new_tokens: int | None = None,
              batch_size: int = 8, details: bool = False, progress: bool = True) -> pd.DataFrame:
    """Accuracy (mean ``string_match_all`` of greedy output) per (context length, depth).

    ``n`` samples per cell, seeded by ``seed``, length and depth. Returns a tidy DataFrame with
    one row per cell (``details=True``: one row per sample, with the prediction and values).
    """
    context_lens = [int(L) for L in context_lens]
    depths = [float(d) for d in depths]
    if not context_lens or not depths:
        raise ValueError("niah_grid: give at least one context length and one depth")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: must be a positive integer, got {n!r}")
    batches = []
    for L in context_lens:  # build every prompt and check every length before any work
        ds = [d for d in depths for _ in range(n)]
        batch = niah_batch(n=len(ds), context_len=L, seed=seed * 1_000_003 + L, variant=variant,
                           depths=ds, haystack=haystack)
        new = max_new_tokens or max(len(s.answer_tokens) for s in batch.samples) + 2
        check_length(model, L, new)
        batches.append((L, batch, new))
    tl = train_len(model)
    was_training = model.training
    model.eval()
    rows = []
    try:
        for L, batch, new in tqdm(batches, desc="niah", disable=not progress):
            preds = greedy_answers(model, batch, new, batch_size)
            scores = niah_scores(preds, batch.samples).scores
            for s, p, score in zip(batch.samples, preds, scores):
                rows.append({"variant": variant, "context_len": L, "depth": s.depth, "score": score,
                             "prediction": p, "values": "|".join(s.values)})
    finally:
        model.train(was_training)
    df = pd.DataFrame(rows)
    df["train_len"] = pd.array([tl] * len(df), dtype="Int64")
    df["beyond_train"] = [tl is not None and L > tl for L in df["context_len"]]
    if details:
        return df
    out = (df.groupby(["variant", "context_len", "depth"], as_index=False)
             .agg(n=("score", "size"), accuracy=("score", "mean")))
    out["train_len"] = pd.array([tl] * len(out), dtype="Int64")
    out["beyond_train"] = [tl is not None and L > tl for L in out["context_len"]]
    return out


def niah_accuracy(model, context_lens, depths=DEFAULT_DEPTHS, variant: str = "single_1", n: int = 4,
                  **kw) -> float:
    """Mean accuracy over every sample of ``niah_grid(model, context_lens, depths, variant, n)``."""
    if isinstance(context_lens, int):
        context_lens = [context_lens]
    kw.setdefault("progress", False)
    df = niah_grid(model, context_lens, depths, variant, n, details=True, **kw)
    return float(df["score"].mean())


def niah_tasks(model, tasks, *, max_new_tokens: int | None = None, batch_size: int = 8, details: bool = False,
               progress: bool = True) -> pd.DataFrame:
    """Accuracy (mean ``string_match_all`` of greedy output) on every record of a RULER-format
    task file (a path or ``tasks.load_jsonl``'s result), per (prompt length, needle depth).

    Accuracy needs only the prompt and the gold values, so every record is answered, located or
    not; a record whose answer is not located in its prompt (``JsonlTasks.errors``) has depth NaN
    (its own cells) and is counted. ``df.attrs``: ``accuracy`` (over every record), ``n_records``,
    ``n_located``, ``n_unlocated``, ``errors`` ([line, why]), ``path``. ``details=True``: one row
    per record (``line``, ``index``, ``located``, ``prediction``, ``values``, ``score``). A prompt
    too long for the model is a ``ValueError`` naming its line."""
    from types import SimpleNamespace

    from ..tasks import NeedleBatch, load_jsonl, read_jsonl
    from ..tasks.jsonl import JsonlTasks

    if not isinstance(tasks, JsonlTasks):
        tasks = load_jsonl(tasks)
    located = {r.line: s for r, s in zip(tasks.records, tasks.samples)}
    groups: dict[int, list] = {}
    for r in read_jsonl(tasks.path)[:tasks.n_records]:
        s = located.get(r.line)
        if s is None:  # answered all the same: the prompt as load_jsonl encodes it (BOS + bytes)
            toks = [TOKENIZER.BOS] + TOKENIZER.encode(r.input)
            answer = ("" if r.input[-1].isspace() else " ") + ", ".join(r.outputs)
            s = SimpleNamespace(tokens=toks, values=list(r.outputs), answer_tokens=TOKENIZER.encode(answer),
                                context_len=len(toks), depth=math.nan)
        groups.setdefault(len(s.tokens), []).append((r, s))
    batches = []
    for L, items in groups.items():  # check every length before any work
        new = max_new_tokens or max(len(s.answer_tokens) for _, s in items) + 2
        try:
            check_length(model, L, new)
        except ValueError as e:
            raise ValueError(f"tasks: {tasks.path}:{items[0][0].line}: {e}") from None
        batches.append((L, items, new))
    tl = train_len(model)
    was_training = model.training
    model.eval()
    rows = []
    try:
        for L, items, new in tqdm(batches, desc="tasks", disable=not progress):
            samples = [s for _, s in items]
            batch = NeedleBatch(torch.tensor([s.tokens for s in samples], dtype=torch.long), samples)
            preds = greedy_answers(model, batch, new, batch_size)
            for (r, s), p, score in zip(items, preds, niah_scores(preds, samples).scores):
                rows.append({"variant": "jsonl", "line": r.line, "index": r.index, "context_len": L,
                             "depth": s.depth, "located": r.line in located, "score": score, "prediction": p,
                             "values": "|".join(s.values)})
    finally:
        model.train(was_training)
    df = pd.DataFrame(rows).sort_values("line", ignore_index=True)
    df["train_len"] = pd.array([tl] * len(df), dtype="Int64")
    df["beyond_train"] = [tl is not None and L > tl for L in df["context_len"]]
    df.attrs.update({"path": tasks.path, "n_records": len(df), "n_located": len(located),
                     "n_unlocated": tasks.n_unlocated, "errors": [list(e) for e in tasks.errors],
                     "accuracy": float(df["score"].mean()) if len(df) else math.nan})
    log.info(tasks_summary(df.attrs))
    return df if details else task_cells(df)


def task_cells(records: pd.DataFrame) -> pd.DataFrame:
    """``niah_tasks(..., details=True)``'s per-record table -> one row per (length, depth) cell
    (``n``, ``accuracy``; depth NaN: the records whose answer was not located), attrs kept."""
    out = (records.groupby(["variant", "context_len", "depth"], as_index=False, dropna=False)
                  .agg(n=("score", "size"), accuracy=("score", "mean"), train_len=("train_len", "first"),
                       beyond_train=("beyond_train", "first")))
    out.attrs.update(records.attrs)
    return out


def tasks_summary(attrs: dict) -> str:
    """One line: the accuracy over a task file's records and the records not located."""
    s = (f"tasks {attrs['path']}: accuracy {attrs['accuracy']:.3f} over {attrs['n_records']} record(s), "
         f"{attrs['n_located']} with located answers")
    if attrs["n_unlocated"]:
        line, why = attrs["errors"][0]
        s += (f", {attrs['n_unlocated']} not located (answered all the same, depth NaN; "
              f"first: line {line}: {why})")
    return s
