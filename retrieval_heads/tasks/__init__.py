"""Tasks: byte tokenizer, haystacks, needle tasks (RULER vocabulary), MQAR, training mixture."""

from .haystack import haystack_sentences, load_haystack
from .mqar import MQARBatch, mqar_batch
from .niah import (
                   VARIANTS,
                   NeedleBatch,
                   NeedleSample,
                   make_sample,
                   min_context_len,
                   niah_batch,
                   niah_grid,
                   string_match_all,
)
from .tokenizer import TOKENIZER, ByteTokenizer

__all__ = [
    "ByteTokenizer", "TOKENIZER", "load_haystack", "haystack_sentences", "VARIANTS",
    "NeedleBatch", "NeedleSample", "make_sample", "min_context_len", "niah_batch", "niah_grid", "string_match_all",
    "MQARBatch", "mqar_batch",
]
