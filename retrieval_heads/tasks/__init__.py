"""Tasks: byte tokenizer, haystacks, needle tasks (RULER vocabulary: one text-level plan,
``plan.needle_plan``, encoded by ``niah`` and ``hf.needles``), clean/corrupted needle pairs,
MQAR, training mixture, RULER-format task files (``load_jsonl``)."""

from .haystack import haystack_sentences, load_haystack
from .jsonl import JsonlTasks, TaskRecord, load_jsonl, read_jsonl
from .mqar import MQARBatch, mqar_batch
from .niah import (
                   NeedleBatch,
                   NeedleSample,
                   make_sample,
                   min_context_len,
                   niah_batch,
                   niah_grid,
                   string_match_all,
)
from .pairs import NeedlePair, needle_pairs
from .plan import VARIANTS, NeedlePlan, Variant, needle_plan
from .tokenizer import TOKENIZER, ByteTokenizer

__all__ = [
    "ByteTokenizer", "TOKENIZER", "load_haystack", "haystack_sentences", "VARIANTS",
    "NeedleBatch", "NeedleSample", "make_sample", "min_context_len", "niah_batch", "niah_grid", "string_match_all",
    "Variant", "NeedlePlan", "needle_plan", "NeedlePair", "needle_pairs", "MQARBatch", "mqar_batch",
    "load_jsonl", "read_jsonl", "JsonlTasks", "TaskRecord",
]
