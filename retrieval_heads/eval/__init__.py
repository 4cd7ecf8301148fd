"""Evaluation: NIAH accuracy grids and held-out language-model loss.

    import retrieval_heads as rh
    df   = rh.eval.niah_grid(model, context_lens=[256, 512, 1024], depths=[0, .5, 1], n=4)
    df   = rh.eval.niah_tasks(model, "data/ruler_niah_single_1.jsonl")   # a RULER task file
    lc   = rh.eval.long_context_loss(model, context_len=1024, n=8, buckets=8)
    loss = rh.eval.short_context_loss(model, context_len=256)
"""

from .loss import HELDOUT_FRACTION, heldout_bytes, long_context_loss, short_context_loss, text_rows, token_losses
from .niah import (
    DEFAULT_DEPTHS,
    NiahScores,
    answer_metrics,
    check_length,
    greedy_answers,
    niah_accuracy,
    niah_grid,
    niah_scores,
    niah_tasks,
    train_len,
)

__all__ = [
    "niah_grid", "niah_tasks", "niah_accuracy", "niah_scores", "NiahScores",
    "answer_metrics", "greedy_answers", "check_length", "train_len", "DEFAULT_DEPTHS",
    "long_context_loss", "short_context_loss", "token_losses", "text_rows", "heldout_bytes",
    "HELDOUT_FRACTION",
]
