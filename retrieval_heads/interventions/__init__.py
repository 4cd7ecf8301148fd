"""Interventions: head ablation, activation patching, receptive-field constraints.

    import retrieval_heads as rh
    with rh.ablate_heads(model, [(3, 1), (7, 0)]):                  # zero ablation (fast path)
        acc = rh.eval.niah_grid(model, [512], [0.5], n=8)
    with rh.ablate_heads(model, "3.1", method="mean", reference=batch.tokens):
        logits = model(tokens)
    with rh.interventions.receptive_field(model, full=256):         # F layers see 256 keys
        loss = rh.eval.long_context_loss(model, context_len=1024)
    pair = rh.interventions.needle_pairs(n=4, context_len=512)
    df, fig = rh.interventions.activation_patching(model, pair, kind="heads")
"""

from .ablation import METHODS, ablate_heads, mean_head_outputs
from .experiment import CONDITIONS, ablation_experiment, head_sets, receptive_field_experiment, summarize
from .heads import format_heads, heads_of_kind, parse_heads, random_heads, same_kind_random, top_heads, top_ties
from ..tasks.pairs import NeedlePair, needle_pairs  # the pairs live in tasks; re-exported for user code
from .patching import KINDS, PatchingResult, activation_patching, default_positions, logit_diff, patching_figure
from .receptive_field import layer_windows, receptive_field
from .scores import retrieval_head_scores, scores_from_scan

__all__ = [
    "ablate_heads", "mean_head_outputs", "METHODS",
    "parse_heads", "format_heads", "heads_of_kind", "top_heads", "top_ties", "random_heads", "same_kind_random",
    "activation_patching", "needle_pairs", "NeedlePair", "PatchingResult", "patching_figure",
    "default_positions", "logit_diff", "KINDS",
    "receptive_field", "layer_windows",
    "retrieval_head_scores", "scores_from_scan",
    "ablation_experiment", "head_sets", "summarize", "CONDITIONS", "receptive_field_experiment",
]
