"""Per-head retrieval scores: ``copy`` (Wu et al. 2024), ``mass``, attention entropy.

    >>> import retrieval_heads as rh
    >>> model = rh.HybridLM(rh.ModelConfig(layout="SF", d_model=32, n_heads=2, window=8))
    >>> batch = rh.tasks.niah_batch(n=2, context_len=160, seed=0)
    >>> res = rh.detect.score_heads(model, batch)          # copy, mass, entropy, counts
    >>> res.copy.shape, res.n_counted                      # random model: nothing answered
    (torch.Size([2, 2]), 0)
    >>> rh.retrieval_scores(model, batch, method="mass").shape
    torch.Size([2, 2])

Rules (per sample; then averaged over samples):

- ``copy``: greedy decoding; at step i (query at position T-1+i, producing token g_i) each
  head's argmax key position p counts ``1 / (len(span) * n_spans)`` when p lies in a gold
  answer span and the prompt token at p equals g_i. Averaged over samples answered
  correctly (``string_match_all > 0.5``; ``only_correct=False`` averages over every valid
  sample). No counted sample -> NaN, never 0.
- ``mass``: the head's attention probability summed over the gold answer spans, at the query
  position (the last prompt token), teacher-forced (the prompt only). Averaged over valid samples.
- ``entropy``: -sum p log p of that query row; ``entropy_norm`` = entropy / log(n) with n the
  number of keys the query sees (0 when n = 1).
- ``copy_tf``: teacher-forced copy. The prompt (up to the query position q) and the gold
  answer are fed in one pass (O(T) rows); answer position j is the query at q + j, which
  predicts answer token j. Each answer token that is a needle token (``answer_targets``: the
  gold spans in order, found in ``answer_tokens``; separators such as ", " are not) scores 1
  when the head's argmax key is the needle position holding that token. Averaged over those
  answer positions, then over every valid sample (answered correctly or not): it exists
  before the model answers. A sample whose spans cannot be found in its answer tokens has
  no such position and is left out of this average (NaN, never 0).

The metrics themselves (names, ranges, which are row functions) are the table in
``retrieval_heads.detect.metrics``; a metric registered there is computed and averaged here
without further changes.

Compat choices (``compat="thunlp"`` / ``"wu"`` or the keywords ``query_offset``,
``answer_positions``, ``span_locate``, ``accept``) switch these rules to the original code's:
``retrieval_heads.detect.compat`` says exactly what each changes. The defaults are ours.

A sample whose answer span cannot be located (out of range, empty, beyond the query, or not
holding its gold value) is *invalid*: it is excluded from every average and counted in
``n_invalid`` (with a warning; ``strict=True`` raises instead). It never counts as zeros.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field

import pandas as pd
import torch

from ..tasks import string_match_all
from . import compat as compat_rules
from .metrics import (
    REGISTRY,
    AnswerContext,
    RowContext,
    answer_metrics,
    attention_metrics,
    entropy,  # noqa: F401 (re-exported: the pure scoring functions live in metrics.py)
    retrieval_metrics,
    row_metrics,
    span_mass,  # noqa: F401
    visible_keys,
)
from .metrics import metric as metric_spec
from .rows import as_row_source

log = logging.getLogger(__name__)

# the built-in entries of the metric table (``metrics.retrieval_metrics()`` /
# ``metrics.attention_metrics()`` include registered ones)
METHODS = ("copy", "mass")
METRICS = ("copy", "mass", "entropy", "entropy_norm")


# --- pure scoring functions ---------------------------------------------------------------
def span_problem(tokens: list[int], sample, decode=None) -> str | None:
    """Why ``sample.answer_spans`` cannot be used with ``tokens`` (the prompt), or None."""
    spans = getattr(sample, "answer_spans", None)
    if not spans:
        return "no answer span"
    q = getattr(sample, "query_pos", len(tokens) - 1)
    values = list(getattr(sample, "values", []) or [])
    for j, sp in enumerate(spans):
        try:
            s, e = int(sp[0]), int(sp[1])
        except (TypeError, ValueError, IndexError):
            return f"span {sp!r} is not a pair of token positions"
        if not 0 <= s < e <= len(tokens):
            return f"span [{s}, {e}) lies outside the prompt of {len(tokens)} tokens"
        if e > q:
            return f"span [{s}, {e}) is not before the query position {q}"
        if decode is not None and j < len(values) and decode(tokens[s:e]) != values[j]:
            return f"span [{s}, {e}) holds {decode(tokens[s:e])!r}, not the gold value {values[j]!r}"
    return None


def span_weights(spans, length: int) -> torch.Tensor:
    """(length,) weights 1 / (len(span) * n_spans) on answer-span positions, 0 elsewhere."""
    w = torch.zeros(length)
    for s, e in spans:
        w[s:e] = 1.0 / ((e - s) * len(spans))
    return w


def answer_targets(prompt: list[int], sample) -> list[int]:
    """Per answer token j of ``sample.answer_tokens``: the prompt position of the needle token
    it copies, or -1 (a separator, or a span not found). The gold spans are taken in order,
    each found as a run of its own prompt tokens in the answer after the previous one.

        >>> from types import SimpleNamespace as NS
        >>> answer_targets([9, 5, 6, 9, 7, 8, 9], NS(answer_spans=[(1, 3), (4, 6)], answer_tokens=[5, 6, 0, 7, 8]))
        [1, 2, -1, 4, 5]
    """
    ans = list(sample.answer_tokens)
    out = [-1] * len(ans)
    off = 0
    for s, e in sample.answer_spans:
        span = list(prompt[s:e])
        for o in range(off, len(ans) - len(span) + 1):
            if span and ans[o:o + len(span)] == span:
                out[o:o + len(span)] = range(s, e)
                off = o + len(span)
                break
    return out


def _max_len(src) -> int | None:
    """The longest input the row source's model takes (None = unknown)."""
    for obj in (src, getattr(src, "spec", None), getattr(getattr(src, "model", None), "cfg", None)):
        v = getattr(obj, "max_seq_len", None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def copy_step(argmax: torch.Tensor, generated: torch.Tensor, prompt: torch.Tensor,
              weights: torch.Tensor) -> torch.Tensor:
    """One decode step of Wu et al.'s rule. argmax (B, H) key positions; generated (B,) tokens;
    prompt (B, T); weights (B, T) from ``span_weights`` -> (B, H) contributions."""
    T = prompt.shape[1]
    inside = argmax < T  # generated positions are never in a span
    pos = argmax.clamp(max=T - 1)  # (B, H)
    tok = prompt.gather(1, pos)  # (B, H) prompt token at the argmax
    w = weights.gather(1, pos)  # (B, H)
    return torch.where(inside & (tok == generated[:, None]), w, torch.zeros_like(w))


# --- the result object --------------------------------------------------------------------
@dataclass
class HeadScores:
    """Scores of every (layer, head) over a needle batch. Tensors are [n_layers, n_heads]
    (NaN for layers not scored); ``per_sample_*`` are [n, n_layers, n_heads] (NaN for invalid
    samples); counts say which samples each average used."""

    layer_types: str
    scored_layers: list[int]
    methods: tuple
    per_sample: dict  # metric -> (n, L, H)
    valid: torch.Tensor  # (n,) bool
    match: torch.Tensor  # (n,) string_match_all of the greedy answer (NaN if not decoded)
    predictions: list = field(default_factory=list)
    invalid: list = field(default_factory=list)  # (sample index, reason)
    only_correct: bool = True
    context_lens: list = field(default_factory=list)
    depths: list = field(default_factory=list)
    accepted: torch.Tensor | None = None  # (n,) bool: the answer accepted by ``accept="rouge"``; None = exact
    compat: dict = field(default_factory=dict)  # the scoring choices (``detect.compat.Compat``) used

    @property
    def n_samples(self) -> int:
        return int(self.valid.numel())

    @property
    def n_invalid(self) -> int:
        return len(self.invalid)

    @property
    def correct(self) -> torch.Tensor:
        """(n,) answered correctly: ``string_match_all > 0.5``, or accepted by ROUGE-1 recall under
        ``accept="rouge"``."""
        return self.accepted if self.accepted is not None else self.match > 0.5

    @property
    def n_correct(self) -> int:
        return int((self.valid & self.correct).sum())

    @property
    def counted(self) -> torch.Tensor:
        """(n,) samples that enter the copy average."""
        return self.valid & self.correct if self.only_correct else self.valid

    @property
    def n_counted(self) -> int:
        return int(self.counted.sum()) if "copy" in self.methods else 0

    @property
    def accuracy(self) -> float:
        m = self.match[~self.match.isnan()]
        return float(m.mean()) if m.numel() else float("nan")

    def _mean(self, metric: str, use: torch.Tensor) -> torch.Tensor:
        x = self.per_sample[metric]  # (n, L, H)
        L, H = x.shape[1:]
        if not bool(use.any()):
            return torch.full((L, H), float("nan"))
        if metric_spec(metric).at == "answer":  # a sample without answer targets is left out
            return x[use].nanmean(0)
        return x[use].mean(0)

    def __getattr__(self, name: str) -> torch.Tensor:
        """``res.copy``, ``res.mass``, ... : ``res.scores(name)`` for every attention metric of
        the table (``retrieval_heads.detect.metrics``), registered ones included."""
        if not name.startswith("_") and name in attention_metrics():
            return self.scores(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def scores(self, metric: str = "copy") -> torch.Tensor:
        """[n_layers, n_heads] mean of an attention metric of the table (``metrics``) over
        its samples: the counted ones for copy, the valid ones otherwise."""
        names = attention_metrics()
        if metric not in names:
            raise ValueError(f"metric: {metric!r}; use one of {names}")
        if metric not in self.per_sample:
            raise ValueError(f"{metric} scores were not computed; pass methods=({metric!r}, ...)")
        return self._mean(metric, self.counted if metric_spec(metric).over == "counted" else self.valid)

    def top_heads(self, k: int = 4, metric: str = "copy") -> list[tuple[int, int, float]]:
        s = self.scores(metric)
        flat = torch.nan_to_num(s, nan=-math.inf).flatten()
        order = flat.argsort(descending=True)[:k]
        H = s.shape[1]
        return [(int(i) // H, int(i) % H, float(s.flatten()[i])) for i in order if flat[i] > -math.inf]

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: layer, head, layer_type, metric, value, n (samples averaged)."""
        rows = []
        metrics = [m for m in attention_metrics() if m in self.per_sample]
        H = self.per_sample[metrics[0]].shape[2]
        for m in metrics:
            s = self.scores(m)
            n = self.n_counted if metric_spec(m).over == "counted" else int(self.valid.sum())
            for l in self.scored_layers:
                for h in range(H):
                    rows.append((l, h, self.layer_types[l], m, float(s[l, h]), n))
        return pd.DataFrame(rows, columns=["layer", "head", "layer_type", "metric", "value", "n"])

    def summary(self) -> str:
        s = (f"{self.n_samples} samples: {self.n_invalid} invalid span(s), "
             f"{self.n_correct} answered correctly")
        if "copy" in self.methods:
            s += f"; copy averaged over {self.n_counted} sample(s)"
        return s

    def __repr__(self) -> str:
        return f"HeadScores({self.layer_types}, {self.summary()})"

    @staticmethod
    def merge(parts: list[HeadScores]) -> HeadScores:
        """Concatenate the samples of several results (same model and methods)."""
        p0 = parts[0]
        off, invalid = 0, []
        for p in parts:
            invalid += [(i + off, r) for i, r in p.invalid]
            off += p.n_samples
        return HeadScores(
            layer_types=p0.layer_types, scored_layers=p0.scored_layers, methods=p0.methods,
            per_sample={m: torch.cat([p.per_sample[m] for p in parts]) for m in p0.per_sample},
            valid=torch.cat([p.valid for p in parts]), match=torch.cat([p.match for p in parts]),
            predictions=sum((p.predictions for p in parts), []), invalid=invalid,
            only_correct=p0.only_correct, context_lens=sum((p.context_lens for p in parts), []),
            depths=sum((p.depths for p in parts), []),
            accepted=None if p0.accepted is None else torch.cat([p.accepted for p in parts]), compat=p0.compat)


# --- the detector -------------------------------------------------------------------------
def _row_metrics(out: dict, rows: dict, b0: int, spans_mask, qpos: list[int], windows) -> None:
    """Fill the row metrics' (n, L, H) entries (mass, entropy, ...: ``metrics.row_metrics``)
    of samples b0.. from query rows {layer: (B, H, T)}."""
    names = [m for m in row_metrics() if m in out]
    for l, r in rows.items():
        r = r.float().cpu()
        Tk = r.shape[-1]
        B = r.shape[0]
        n = torch.tensor([visible_keys(q, windows[l]) for q in qpos], dtype=torch.float32)
        ctx = RowContext(spans=spans_mask[:, :Tk], visible=n)
        for m in names:
            out[m][b0:b0 + B, l] = REGISTRY[m].row(r, ctx)


def _answer_metrics(out: dict, src, tokens: torch.Tensor, samples: list, b0: int, valid: torch.Tensor, *,
                    recurrent: bool, fwd_hooks) -> None:
    """Fill the answer metrics' (n, L, H) entries (copy_tf: ``metrics.answer_metrics``) of
    samples b0..: one teacher-forced pass over each prompt (up to its query position q) and its
    gold answer, rows at the answer positions q .. q + n_answer - 1."""
    names = [m for m in answer_metrics() if m in out]
    if not names:
        return
    B = len(samples)
    limit = _max_len(src)
    seqs, qs, tgts = [], [], []
    for j, s in enumerate(samples):
        q = int(s.query_pos)
        prompt = tokens[j, :q + 1].tolist()
        tg = answer_targets(tokens[j].tolist(), s) if valid[b0 + j] else []
        if limit is not None:
            tg = tg[:max(0, limit - q)]  # answer positions q + i must lie inside the model's context
        while tg and tg[-1] < 0:  # trailing separators: no position to score
            tg.pop()
        seqs.append(prompt + list(s.answer_tokens[:max(len(tg) - 1, 0)]))
        qs.append([q + i for i in range(len(tg))] or [q])
        tgts.append(tg or [-1])
    if all(max(t) < 0 for t in tgts):
        return
    Tl = max(map(len, seqs))
    nq = max(map(len, qs))
    inp = torch.stack([torch.tensor(x + [x[-1]] * (Tl - len(x)), dtype=torch.long) for x in seqs])  # causal: pad unread
    qpos = torch.tensor([x + [x[-1]] * (nq - len(x)) for x in qs], dtype=torch.long)  # (B, nq)
    targets = torch.tensor([x + [-1] * (nq - len(x)) for x in tgts], dtype=torch.long)  # (B, nq)
    rows = src.prefill_rows(inp, qpos, recurrent=recurrent, fwd_hooks=fwd_hooks)
    ctx = AnswerContext(targets=targets)
    for l, r in rows.items():
        r = r.float().cpu()
        for m in names:
            out[m][b0:b0 + B, l] = REGISTRY[m].row(r, ctx)


def _locate(tokens: list[int], sample, c, decode, encode) -> tuple[list, str | None]:
    """The answer spans a sample is scored on under choices ``c`` and why they cannot be used
    (or None): the gold spans (``span_locate="exact"``) or Wu's overlap windows."""
    if c.span_locate == "exact":
        return list(sample.answer_spans or []), span_problem(tokens, sample, decode)
    spans = []
    for v in getattr(sample, "values", []) or []:
        sp = compat_rules.overlap_span(tokens, list(encode(v)))
        if sp is None:
            return [], f"needle {v!r} not located by the overlap rule (> 90% of its token set)"
        spans.append(sp)
    if not spans:
        return [], "no gold value to locate"
    from types import SimpleNamespace

    return spans, span_problem(tokens, SimpleNamespace(answer_spans=spans, query_pos=sample.query_pos))


def _answer_cut(src, gen: torch.Tensor) -> list[int]:
    """Per sample, the number of decode steps up to and including the first token whose text
    holds a newline (Wu's stop), or all of them."""
    text = getattr(src, "token_text", None) or (lambda t: src.decode([t]))
    ends: dict[int, bool] = {}
    out = []
    for row in gen.tolist():
        n = len(row)
        for i, t in enumerate(row):
            if t not in ends:
                ends[t] = compat_rules.ends_answer(text(t))
            if ends[t]:
                n = i + 1
                break
        out.append(n)
    return out


def score_heads(model, batch, *, methods=METHODS, recurrent: bool = False, only_correct: bool = True,
                max_new_tokens: int | None = None, batch_size: int = 8, strict: bool = False,
                fwd_hooks=(), compat=None, query_offset: int | None = None, answer_positions: str | None = None,
                span_locate: str | None = None, accept: str | None = None) -> HeadScores:
    """Score every head of ``model`` (a ``HybridLM`` or any row source, see ``detect.rows``)
    on a ``NeedleBatch``. ``methods`` picks ``copy`` (greedy decoding) and/or ``mass`` (or
    another retrieval metric of the table, ``metrics.retrieval_metrics``); every row metric
    (mass, entropy, entropy_norm, ...) and answer metric (copy_tf: one more teacher-forced
    pass) comes with any of them. ``recurrent=True`` also scores M/D/L layers through their
    effective attention. ``fwd_hooks`` are extra TransformerLens hooks active on every
    forward pass (e.g. an ablation). Memory is O(T) per sample.

    ``compat``: ``"ours"`` (default), ``"thunlp"`` or ``"wu"``, the scoring rules of the
    original code; ``query_offset``, ``answer_positions``, ``span_locate``, ``accept`` override
    single choices (``retrieval_heads.detect.compat``)."""
    c = compat_rules.resolve(compat, query_offset=query_offset, answer_positions=answer_positions,
                             span_locate=span_locate, accept=accept)
    methods = tuple(methods) if not isinstance(methods, str) else (methods,)
    names = retrieval_metrics()
    bad = [m for m in methods if m not in names]
    if bad or not methods:
        raise ValueError(f"method: {bad or methods!r}; use one {'or both' if len(names) == 2 else 'or more'} "
                         f"of {names}")
    if not c.is_default:
        log.debug("score_heads: %s scoring rules %s", c.name(), c.to_dict())
    src = as_row_source(model)
    layers = src.scorable_layers(recurrent)
    L, H = src.n_layers, src.n_heads
    tokens = batch.tokens
    n, T = tokens.shape
    windows = src.windows
    metrics = [m for m in attention_metrics() if not REGISTRY[m].decode or m in methods]
    out = {m: torch.full((n, L, H), float("nan")) for m in metrics}
    valid = torch.ones(n, dtype=torch.bool)
    invalid = []
    decode = getattr(src, "decode", None)
    encode = getattr(src, "encode", None)
    if encode is None and (c.span_locate == "overlap" or c.answer_positions == "variants"):
        raise ValueError(f"{'span_locate' if c.span_locate == 'overlap' else 'answer_positions'}: this model "
                         f"({type(src).__name__}) has no tokenizer to encode answers with")
    spans = []
    row_mask = torch.zeros(n, T, dtype=torch.bool)  # the answer positions of the row metrics (mass)
    for i, s in enumerate(batch.samples):
        toks = tokens[i].tolist()
        sp, why = _locate(toks, s, c, decode, encode)
        if why is None and "copy" in methods and s.query_pos != T - 1:
            why = f"query position {s.query_pos} is not the last prompt token ({T - 1}); copy needs it"
        if why is None and s.query_pos - (c.query_offset - 1) < 0:
            why = f"query offset {c.query_offset} reaches before the prompt (query position {s.query_pos})"
        if why is None and c.answer_positions == "variants":
            pos = compat_rules.variant_positions(toks, s.values, encode)
            if not pos:
                why = "no spelling of the answer (x, ' x', 'x.', ' x.', ': x', ': x.') occurs in the prompt"
            row_mask[i, pos] = True
        if why is not None:
            if strict:
                raise ValueError(f"sample {i}: {why}")
            valid[i] = False
            invalid.append((i, why))
            row_mask[i] = False
        spans.append(sp if why is None else [])
    if invalid:
        warnings.warn(f"{len(invalid)} of {n} sample(s) excluded: answer span not located "
                      f"(first: sample {invalid[0][0]}: {invalid[0][1]})", stacklevel=2)
    match = torch.full((n,), float("nan"))
    accepted = torch.zeros(n, dtype=torch.bool) if c.accept == "rouge" else None
    preds = [None] * n
    weights = torch.stack([span_weights(sp, T) if valid[i] else torch.zeros(T)
                           for i, sp in enumerate(spans)])  # (n, T)
    spans_mask = row_mask if c.answer_positions == "variants" else weights > 0
    if max_new_tokens is None:
        if c.accept == "rouge":  # Wu: up to 50 tokens (fewer where the model's context ends)
            limit = _max_len(src)
            max_new_tokens = compat_rules.WU_MAX_NEW_TOKENS if limit is None else \
                max(1, min(compat_rules.WU_MAX_NEW_TOKENS, limit - T + 1))
        else:
            max_new_tokens = max(len(s.answer_tokens) for s in batch.samples) + 1
    shift = c.query_offset - 1
    for b0 in range(0, n, batch_size):
        idx = list(range(b0, min(b0 + batch_size, n)))
        tok = tokens[idx]
        qpos = [max(batch.samples[i].query_pos - shift, 0) for i in idx]  # the row metrics' query rows
        if "copy" in methods:
            def reduce(i, l, r):
                return r if i == 0 and not shift else r.argmax(-1)
            dec = src.decode_rows(tok, max_new_tokens, recurrent=recurrent, fwd_hooks=fwd_hooks, reduce=reduce)
            gen = dec.generated.cpu()
            alive = dec.alive.cpu()
            if c.accept == "rouge":  # Wu: a sample's steps end with its first newline token
                cut = _answer_cut(src, gen)
                steps = torch.arange(gen.shape[1])[None, :]
                alive = alive & (steps < torch.tensor(cut)[:, None])
            else:
                cut = [gen.shape[1]] * len(idx)
            if not shift:
                _row_metrics(out, dec.rows[0], b0, spans_mask[idx], qpos, windows)
            acc = torch.zeros(len(idx), L, H)
            for step, rows in enumerate(dec.rows):
                for l, r in rows.items():
                    am = (r.argmax(-1) if step == 0 and not shift else r).cpu()  # (B, H)
                    cs = copy_step(am, gen[:, step], tok.cpu(), weights[idx])
                    acc[:, l] += cs * alive[:, step, None]
            for j, i in enumerate(idx):
                out["copy"][i, layers] = acc[j, layers]
                preds[i] = src.decode(gen[j, :cut[j]].tolist())
                match[i] = string_match_all(preds[i], batch.samples[i].values)
                if accepted is not None:
                    accepted[i] = compat_rules.rouge_accepts(batch.samples[i].values, preds[i])
        if "copy" not in methods or shift:
            rows = src.prefill_rows(tok, torch.tensor(qpos)[:, None], recurrent=recurrent, fwd_hooks=fwd_hooks)
            _row_metrics(out, {l: r[:, :, 0] for l, r in rows.items()}, b0, spans_mask[idx], qpos, windows)
        _answer_metrics(out, src, tok, [batch.samples[i] for i in idx], b0, valid, recurrent=recurrent,
                        fwd_hooks=fwd_hooks)
    for m in out:
        out[m][~valid] = float("nan")
    return HeadScores(layer_types=src.layer_types, scored_layers=layers, methods=methods,
                      per_sample=out, valid=valid, match=match, predictions=preds, invalid=invalid,
                      only_correct=only_correct, context_lens=[T] * n,
                      depths=[getattr(s, "depth", float("nan")) for s in batch.samples],
                      accepted=accepted, compat=c.to_dict())


def retrieval_scores(model, batch, method: str = "copy", **kw) -> torch.Tensor:
    """[n_layers, n_heads] retrieval scores (NaN for layers not scored). ``method``: ``copy``
    (Wu et al.) or ``mass`` (or another of ``metrics.retrieval_metrics()``), or a causal score
    (``ablation``, ``attribution``, ...: ``causal.causal_scores``, every layer). Keyword
    arguments go to ``score_heads`` (``causal_scores``); use it directly for the counts, entropy
    and per-sample values."""
    from .metrics import causal_metrics

    if method in causal_metrics():
        from .causal import EXACT, causal_scores

        kw.setdefault("exact", method in EXACT)
        return causal_scores(model, batch, **kw).scores(method)
    names = retrieval_metrics()
    if method not in names:
        raise ValueError(f"method: {method!r}; use {' or '.join(map(repr, names))}")
    return score_heads(model, batch, methods=(method,), **kw).scores(method)
