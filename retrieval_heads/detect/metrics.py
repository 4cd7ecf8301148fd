"""The table of per-head scores ("metrics"): one ``Metric`` per name, read by the detector
(``scores.py``), the figures (``plots.py``), the scan (``pipeline``) and the CLI.

    >>> from retrieval_heads.detect import metrics
    >>> metrics.attention_metrics(), metrics.retrieval_metrics()
    (('copy', 'mass', 'entropy', 'entropy_norm', 'copy_tf'), ('copy', 'mass', 'copy_tf'))
    >>> metrics.metric("entropy_norm").range, metrics.metric("qk_distance").kind
    ((0.0, 1.0), 'weights')

Two kinds:

- ``attention``: per sample, from the detector's attention rows, averaged over samples by
  ``HeadScores``. ``copy`` is computed from the greedy decode steps (``scores.copy_step``);
  every other attention metric is a function of attention rows, ``row(rows, ctx) -> (B, H)``:
  ``at="query"`` (mass, entropy, ...): rows (B, H, T) probabilities over keys at the query
  position and ``ctx`` a ``RowContext``; ``at="answer"`` (copy_tf): teacher-forced rows
  (B, H, nq, T) at the answer positions (prompt + gold answer fed; answer position j is the
  query that predicts answer token j) and ``ctx`` an ``AnswerContext`` -- adding one is one
  ``register_metric`` call (see CONTRIBUTING.md).
- ``weights``: from the heads' Q/K weights against a reference checkpoint
  (``weights.qk_distance``; ``weights_key`` names its entry).
- ``causal``: how much the answer depends on the head, from forward (and backward) passes
  with the head's output intervened on (``causal.causal_scores``: ``ablation``,
  ``ablation_mean``, ``attribution``, ``attribution_mean``, ``attribution_ig``; nats of answer
  log-probability). They need their own passes, so scans compute them only when asked
  (``rh.scan(..., causal=True)``, ``retrieval-heads scan --causal``), and the report draws
  them in a section of their own beside the attention scores (``heatmap=False`` here);
  see ``docs/CAUSAL.md``.

``range`` is the value range; a bounded metric (both ends finite) gets that fixed colour
scale in heatmaps. ``higher_is_retrieval``: a high value marks a retrieval head -- the
attention metrics that say so (``retrieval_metrics``) rank heads (``retrieval_scores``'s
``method``, ``retrieval-heads ablate --metric``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a row is scored: the table itself loads without it
    import torch

KINDS = ("attention", "weights", "causal")


# --- row functions (pure) ------------------------------------------------------------------
def span_mass(rows: torch.Tensor, spans_mask: torch.Tensor) -> torch.Tensor:
    """rows (B, H, T) probabilities; spans_mask (B, T) bool -> (B, H) mass on the spans."""
    return (rows * spans_mask[:, None, :].to(rows.dtype)).sum(-1)


def entropy(rows: torch.Tensor) -> torch.Tensor:
    """(..., T) probability rows -> (...) entropy in nats (0 log 0 = 0)."""
    import torch

    return -torch.special.xlogy(rows, rows).sum(-1)


def visible_keys(query_pos: int, window: int | None) -> int:
    return query_pos + 1 if window is None else min(window, query_pos + 1)


@dataclass(frozen=True)
class RowContext:
    """What a row metric may read besides the rows (B, H, T) of one layer.

    spans    (B, T) bool: the gold answer-span positions of each sample
    visible  (B,) float32: keys each sample's query sees (its position and the layer's window)
    """

    spans: torch.Tensor
    visible: torch.Tensor


@dataclass(frozen=True)
class AnswerContext:
    """What an answer-position metric (``at="answer"``) may read besides the teacher-forced
    rows (B, H, nq, T) of one layer.

    targets  (B, nq) long: at answer position j, the prompt position of the needle token that
             answer token j copies (``scores.answer_targets``); -1 where answer token j is no
             needle token (a separator such as ", ") or j is past the sample's answer
    """

    targets: torch.Tensor


def copy_tf(rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Teacher-forced copy score. rows (B, H, nq, T) at the answer positions; targets (B, nq)
    -> (B, H): the share of answer positions with a target (>= 0) at which the head's argmax key
    is that target; NaN for a sample with no target.

        >>> import torch
        >>> rows = torch.tensor([[[[.1, .8, .1], [.7, .2, .1]]]])      # 1 sample, 1 head, 2 positions
        >>> copy_tf(rows, torch.tensor([[1, 2]])), copy_tf(rows, torch.tensor([[1, -1]]))
        (tensor([[0.5000]]), tensor([[1.]]))
    """
    import torch

    has = targets >= 0  # (B, nq)
    hit = (rows.argmax(-1) == targets[:, None, :]) & has[:, None, :]  # (B, H, nq)
    n = has.sum(-1, keepdim=True).to(rows.dtype)  # (B, 1)
    return torch.where(n > 0, hit.sum(-1).to(rows.dtype) / n.clamp_min(1), torch.full_like(n, float("nan")))


def _copy_tf(rows, ctx: AnswerContext):
    return copy_tf(rows, ctx.targets)


def _mass(rows, ctx: RowContext):
    return span_mass(rows, ctx.spans)


def _entropy(rows, ctx: RowContext):
    return entropy(rows)


def _entropy_norm(rows, ctx: RowContext):
    import torch

    ent = entropy(rows)  # (B, H)
    n = ctx.visible
    return torch.where(n[:, None] > 1, ent / n.clamp_min(2).log()[:, None], torch.zeros_like(ent))


# --- the table -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """One per-head score (see the module docstring)."""

    name: str
    description: str
    kind: str = "attention"  # "attention" (per sample, from rows) | "weights" (Q/K weights) | "causal"
    range: tuple = (None, None)  # (low, high); None = open
    higher_is_retrieval: bool = True
    row: Callable | None = None  # attention: (rows, ctx) -> (B, H) (see ``at``); None = copy's decode rule
    at: str = "query"  # rows at "query": (B, H, T) at the query, RowContext; "answer": teacher-forced
    #                    rows (B, H, nq, T) at the answer positions, AnswerContext
    over: str = "valid"  # samples averaged: "valid", or "counted" (valid and answered correctly)
    weights_key: str | None = None  # weights: the entry of ``weights.qk_distance``'s result
    heatmap: bool = True  # the scan report draws its layer x head heatmap

    @property
    def bounded(self) -> bool:
        lo, hi = self.range
        return lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi)

    @property
    def decode(self) -> bool:
        """Computed from greedy decoding (copy), not from the prompt's query row."""
        return self.kind == "attention" and self.row is None


REGISTRY: dict[str, Metric] = {}
BUILTIN = ("copy", "mass", "entropy", "entropy_norm", "copy_tf", "qk_distance", "qk_l2", "ablation", "ablation_mean",
           "attribution", "attribution_mean", "attribution_ig")
ROWS_AT = ("query", "answer")


def register_metric(m: Metric) -> Metric:
    """Add a metric to ``REGISTRY`` (``ValueError`` if the name is taken or a field is off)."""
    if not isinstance(m, Metric):
        raise ValueError(f"register_metric: expected a Metric, got {type(m).__name__}")
    if not (isinstance(m.name, str) and m.name.isidentifier()):
        raise ValueError(f"metric name: a Python identifier (it is a column value and a method name), got {m.name!r}")
    if m.name in REGISTRY and REGISTRY[m.name] != m:
        raise ValueError(f"metric {m.name!r} is already registered")
    if m.kind not in KINDS:
        raise ValueError(f"metric {m.name}: kind {m.kind!r}; use one of {KINDS}")
    if m.over not in ("valid", "counted"):
        raise ValueError(f"metric {m.name}: over {m.over!r}; use 'valid' or 'counted'")
    if m.at not in ROWS_AT:
        raise ValueError(f"metric {m.name}: at {m.at!r}; use one of {ROWS_AT}")
    if not (isinstance(m.range, tuple) and len(m.range) == 2):
        raise ValueError(f"metric {m.name}: range is a (low, high) pair (None = open), got {m.range!r}")
    if m.kind == "attention" and m.row is None and m.name != "copy":
        raise ValueError(f"metric {m.name}: an attention metric needs row=(rows, ctx) -> (B, H); only "
                         "copy is computed from the decode steps")
    if m.kind == "weights" and not m.weights_key:
        raise ValueError(f"metric {m.name}: a weights metric needs weights_key (an entry of qk_distance)")
    REGISTRY[m.name] = m
    return m


def unregister_metric(name: str) -> None:
    """Remove a metric added by ``register_metric`` (the built-in ones stay)."""
    if name in BUILTIN:
        raise ValueError(f"unregister_metric: {name!r} is built in")
    REGISTRY.pop(name, None)


def metric(name: str) -> Metric:
    """The registered ``Metric`` called ``name`` (``ValueError`` naming the choices if none)."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"metric: {name!r}; use one of {tuple(REGISTRY)}") from None


def attention_metrics() -> tuple[str, ...]:
    """Per-sample metrics from attention rows, in table order (``HeadScores.scores`` takes these)."""
    return tuple(n for n, m in REGISTRY.items() if m.kind == "attention")


def weight_metrics() -> tuple[str, ...]:
    """Metrics of the Q/K weights against a reference checkpoint."""
    return tuple(n for n, m in REGISTRY.items() if m.kind == "weights")


def causal_metrics() -> tuple[str, ...]:
    """Metrics from interventions on the head's output (``kind="causal"``: ablation, attribution)."""
    return tuple(n for n, m in REGISTRY.items() if m.kind == "causal")


def ranking_metrics() -> tuple[str, ...]:
    """Every metric that ranks heads (higher = matters more): the causal ones, then the
    retrieval metrics (``retrieval-heads ablate --rank-by``)."""
    return causal_metrics() + retrieval_metrics()


def retrieval_metrics() -> tuple[str, ...]:
    """Attention metrics that rank heads (higher = retrieval): ``score_heads``'s methods."""
    return tuple(n for n, m in REGISTRY.items() if m.kind == "attention" and m.higher_is_retrieval)


def row_metrics() -> tuple[str, ...]:
    """Attention metrics computed from the query row (``at="query"``: mass, entropy, ...)."""
    return tuple(n for n, m in REGISTRY.items() if m.kind == "attention" and m.row is not None and m.at == "query")


def answer_metrics() -> tuple[str, ...]:
    """Attention metrics computed from teacher-forced rows at the answer positions
    (``at="answer"``: copy_tf)."""
    return tuple(n for n, m in REGISTRY.items() if m.kind == "attention" and m.row is not None and m.at == "answer")


def heatmap_metrics() -> tuple[str, ...]:
    """Metrics the scan report draws a heatmap of."""
    return tuple(n for n, m in REGISTRY.items() if m.heatmap)


def colour_range(name: str) -> tuple[float | None, float | None]:
    """Fixed colour scale of a bounded metric; (None, None) = scale to the data (also for an
    unregistered name)."""
    m = REGISTRY.get(name)
    return m.range if m is not None and m.bounded else (None, None)


for _m in (
    Metric("copy", "Wu et al.'s copy score: share of the answer tokens the head's decode-step argmax "
                   "copies from the gold span (samples answered correctly)",
           range=(0.0, 1.0), over="counted"),
    Metric("mass", "attention probability on the gold answer span at the query position",
           range=(0.0, 1.0), row=_mass),
    Metric("entropy", "entropy (nats) of the query's attention row", range=(0.0, None),
           higher_is_retrieval=False, row=_entropy, heatmap=False),
    Metric("entropy_norm", "entropy / log(number of keys the query sees)", range=(0.0, 1.0),
           higher_is_retrieval=False, row=_entropy_norm),
    Metric("copy_tf", "teacher-forced copy score: share of the answer positions (prompt + gold answer fed) "
                      "at which the head's argmax key is the needle position of the answer token being "
                      "produced (all valid samples, answered or not)",
           range=(0.0, 1.0), row=_copy_tf, at="answer", heatmap=False),
    Metric("qk_distance", "relative L2 distance of the head's W_Q/W_K rows to the reference checkpoint",
           kind="weights", range=(0.0, None), higher_is_retrieval=False, weights_key="rel_l2"),
    Metric("qk_l2", "L2 distance of the head's W_Q/W_K rows to the reference checkpoint",
           kind="weights", range=(0.0, None), higher_is_retrieval=False, weights_key="l2", heatmap=False),
    Metric("ablation", "drop in the answer's teacher-forced log-probability (nats, summed over answer tokens, "
                       "mean over samples) when the head's output is zeroed (exact)", kind="causal", heatmap=False),
    Metric("ablation_mean", "the same drop when the head's output is replaced by its mean over the needle set",
           kind="causal", heatmap=False),
    Metric("attribution", "attribution patching: gradient of the answer log-probability times the head's "
                          "output (first-order estimate of ablation; one forward + backward)", kind="causal",
           heatmap=False),
    Metric("attribution_mean", "attribution patching estimate of ablation_mean", kind="causal", heatmap=False),
    Metric("attribution_ig", "integrated-gradients estimate of ablation (the layer's head outputs scaled "
                             "towards zero; gradient at the path's midpoints)", kind="causal", heatmap=False),
):
    register_metric(_m)
del _m
