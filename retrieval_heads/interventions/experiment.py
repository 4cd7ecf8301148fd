"""The ablation experiment: does removing the top retrieval heads hurt NIAH more than controls?

    >>> import retrieval_heads as rh
    >>> model = rh.HybridLM(rh.ModelConfig(layout="SSSF", d_model=32, n_heads=4, window=16))
    >>> df = ablation_experiment(model, k=2, context_lens=[128], depths=[0.5], n=1, progress=False)
    >>> sorted(df["condition"].unique())[:3]
    ['none', 'random_same_kind', 'swa']
    >>> list(df.columns[:8])
    ['condition', 'draw', 'k', 'heads', 'kinds', 'context_len', 'accuracy', 'answer_loss']

Conditions (each ablates ``k`` heads; ``random_*`` ones average ``n_random`` seeded draws):

- ``none``: no ablation (the baseline);
- ``top``: the top-k heads by retrieval score over all attention layers;
- ``top_full``: the top-k heads of the full-attention (``F``) layers;
- ``random_same_kind``: k random heads matching ``top`` layer kind by layer kind, disjoint from it;
- ``swa``: k random heads of the sliding-window (``S``) layers, disjoint from ``top``;
- ``top_swa``: the top-k heads of the ``S`` layers (skipped when they all score the same,
  e.g. 0 because the needle lies outside the window).

A condition that cannot be formed (e.g. fewer than k candidate heads) is skipped and listed
in ``df.attrs["skipped"]``.
"""

from __future__ import annotations

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..eval.niah import answer_metrics, niah_grid
from ..labels import head_label
from ..tasks import niah_batch
from .ablation import ablate_heads
from .heads import format_heads, heads_of_kind, random_heads, same_kind_random, top_heads
from .scores import retrieval_head_scores

CONDITIONS = ("none", "top", "top_full", "random_same_kind", "swa", "top_swa")


def head_sets(model, scores: torch.Tensor, k: int, *, conditions=CONDITIONS, n_random: int = 3,
              seed: int = 0) -> tuple[list[tuple[str, int, list]], dict[str, str]]:
    """The head sets of every condition: ([(condition, draw, heads)], {skipped: reason})."""
    cfg = model.cfg
    out, skipped = [], {}
    try:
        top = top_heads(scores, k, cfg)
    except ValueError as e:
        top, skipped["top"] = None, str(e)
    for cond in conditions:
        try:
            if cond == "none":
                out.append((cond, 0, []))
            elif cond == "top":
                if top is None:
                    continue
                out.append((cond, 0, top))
            elif cond == "top_full":
                out.append((cond, 0, top_heads(scores, k, cfg, kinds="F")))
            elif cond == "top_swa":
                sw = [float(scores[l, h]) for l, h in heads_of_kind(cfg, "S")]
                if sw and max(sw) == min(sw):
                    raise ValueError(f"every SWA head scores {sw[0]:.3g} (the needle lies outside the "
                                     "window): there is no ranking to take the top of")
                out.append((cond, 0, top_heads(scores, k, cfg, kinds="S")))
            elif cond == "random_same_kind":
                if top is None:
                    raise ValueError("no top heads")
                out += [(cond, i, same_kind_random(cfg, top, seed=seed + i)) for i in range(n_random)]
            elif cond == "swa":
                exclude = top or []
                out += [(cond, i, random_heads(heads_of_kind(cfg, "S"), k, seed=seed + i, exclude=exclude))
                        for i in range(n_random)]
            else:
                raise ValueError(f"conditions: unknown {cond!r}; valid: {CONDITIONS}")
        except ValueError as e:
            if "unknown" in str(e):
                raise
            skipped[cond] = str(e)
    seen, uniq = set(), []
    for cond, draw, heads in out:  # a small pool can give the same random draw twice
        if (cond, tuple(heads)) not in seen:
            seen.add((cond, tuple(heads)))
            uniq.append((cond, draw, heads))
    return uniq, skipped


def ablation_experiment(model, *, k: int = 4, scores: torch.Tensor | None = None, score_method: str = "mass",
                        score_batch=None, method: str = "zero", rank_by: str | None = None,
                        context_lens=(512,), depths=(0.1, 0.3, 0.5, 0.7, 0.9),
                        n: int = 4, variant: str = "single_1", seed: int = 0, n_random: int = 3,
                        conditions=CONDITIONS, reference=None, progress: bool = True) -> pd.DataFrame:
    """NIAH accuracy under each ablation condition; one row per (condition, draw, context_len).

    ``scores``: a [n_layers, n_heads] retrieval-score matrix; when None it is computed with
    ``retrieval_head_scores(model, score_batch, score_method)`` on a needle batch seeded apart
    from the evaluation prompts (``score_method`` may be a causal score, e.g. ``"ablation"``).
    ``method``/``reference``: as in ``ablate_heads``; for ``"mean"`` the reference defaults to
    that same scoring batch. ``rank_by``: the name of the score in ``scores`` (default
    ``score_method``), written to the table's ``rank_by`` column; ``head_scores`` holds each
    ablated head's score (``L5H2=6.722,L5H3=2.867``).
    """
    if score_batch is None and (scores is None or (method == "mean" and reference is None)):
        score_batch = niah_batch(n=16, context_len=int(max(context_lens)), seed=seed + 7919, variant=variant)
    if scores is None:
        scores = retrieval_head_scores(model, score_batch, method=score_method)
    if method == "mean" and reference is None:
        reference = score_batch  # needle prompts seeded apart from the evaluation prompts
    sets, skipped = head_sets(model, scores, k, conditions=conditions, n_random=n_random, seed=seed)
    # teacher-forced prompts for the graded answer metrics (the same prompts niah_grid uses)
    tf = {int(L): niah_batch(n=len(depths) * n, context_len=int(L), seed=seed * 1_000_003 + int(L),
                             variant=variant, depths=[float(d) for d in depths for _ in range(n)])
          for L in context_lens}
    rows = []
    for cond, draw, heads in tqdm(sets, desc="ablation", disable=not progress):
        with ablate_heads(model, heads, method=method, reference=reference):
            grid = niah_grid(model, context_lens, depths, variant, n, seed=seed, progress=False)
            graded = {L: answer_metrics(model, b) for L, b in tf.items()}
        for L, g in grid.groupby("context_len"):
            rows.append({"condition": cond, "draw": draw, "k": len(heads), "heads": format_heads(heads),
                         "kinds": "".join(sorted({model.cfg.layer_kind(l) for l, _ in heads})),
                         "context_len": int(L), "accuracy": float((g["accuracy"] * g["n"]).sum() / g["n"].sum()),
                         **graded[int(L)], "n": int(g["n"].sum()), "method": method,
                         "rank_by": rank_by or score_method,
                         "head_scores": ",".join(f"{head_label(l, h)}={float(scores[l, h]):.4g}" for l, h in heads)})
    df = pd.DataFrame(rows)
    df.attrs["skipped"] = skipped
    df.attrs["scores"] = scores.tolist()
    return df


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per condition (mean over draws and lengths), with the drop from ``none``."""
    aggs = dict(accuracy=("accuracy", "mean"))
    for c in ("answer_token_acc", "answer_loss"):
        if c in df:
            aggs[c] = (c, "mean")
    out = df.groupby("condition", sort=False).agg(**aggs, draws=("draw", "nunique"),
                                                  heads=("heads", lambda s: " / ".join(dict.fromkeys(s))))
    out = out.reset_index()
    if "none" in set(out["condition"]):
        base = float(out.loc[out["condition"] == "none", "accuracy"].iloc[0])
        out["drop"] = base - out["accuracy"]
    return out


def receptive_field_experiment(model, *, full=(), efficient=(), context_lens=(512,),
                               depths=(0.1, 0.3, 0.5, 0.7, 0.9), n: int = 4, variant: str = "single_1",
                               seed: int = 0, loss_len: int | None = None, loss_rows: int = 4,
                               text: str = "essay", progress: bool = True) -> pd.DataFrame:
    """NIAH accuracy and held-out long-context loss with the full-attention layers limited to
    each window in ``full`` and, separately, the efficient layers limited to each window in
    ``efficient`` (plus the unconstrained baseline). One row per (module, window, context_len)."""
    from ..eval.loss import long_context_loss
    from .receptive_field import receptive_field

    settings = [("none", None)] + [("full", int(w)) for w in full] + [("efficient", int(w)) for w in efficient]
    L = int(loss_len or max(context_lens))
    rows = []
    for module, w in tqdm(settings, desc="receptive field", disable=not progress):
        kw = {} if module == "none" else {module: w}
        with receptive_field(model, **kw):
            grid = niah_grid(model, context_lens, depths, variant, n, seed=seed, progress=False)
            lc = long_context_loss(model, context_len=L, n=loss_rows, text=text, seed=seed)
        loss = float((lc["loss"] * lc["n_tokens"]).sum() / lc["n_tokens"].sum())
        for cl, g in grid.groupby("context_len"):
            rows.append({"module": module, "window": w, "context_len": int(cl),
                         "accuracy": float((g["accuracy"] * g["n"]).sum() / g["n"].sum()),
                         "long_loss": loss, "long_loss_last_bucket": float(lc["loss"].iloc[-1]),
                         "loss_len": L})
    df = pd.DataFrame(rows)
    df["window"] = df["window"].astype("Int64")
    return df
