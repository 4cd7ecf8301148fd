"""Multi-query associative recall (MQAR, Arora et al. 2023 / zoology) on abstract tokens.

Keys come from the first half of the vocabulary, values from the second. A sequence holds
``num_kv_pairs`` key-value pairs, then the same keys queried again at gaps drawn from a
power law; only the positions right after a queried key are labelled (with its value).

    >>> b = mqar_batch(n=2, seq_len=64, num_kv_pairs=4, vocab_size=128, seed=0)
    >>> b.inputs.shape, int((b.labels != -100).sum(1)[0])
    (torch.Size([2, 64]), 4)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class MQARBatch:
    inputs: torch.Tensor  # (n, T) token ids
    labels: torch.Tensor  # (n, T) value id at query positions, -100 elsewhere
    # per sample: (query position, position of the value token in the context) pairs
    answer_pos: list[list[tuple[int, int]]]


def mqar_batch(*, n: int, seq_len: int, num_kv_pairs: int, vocab_size: int = 256, seed: int = 0,
               power_a: float = 0.01, random_non_queries: bool = True) -> MQARBatch:
    if num_kv_pairs < 1 or 4 * num_kv_pairs > seq_len:
        raise ValueError(f"num_kv_pairs: need 1 <= 4 * num_kv_pairs <= seq_len={seq_len}, got {num_kv_pairs}")
    half = vocab_size // 2
    if num_kv_pairs > half - 1:
        raise ValueError(f"vocab_size: {vocab_size} is too small for {num_kv_pairs} distinct keys")
    rng = np.random.default_rng(seed)
    context = 2 * num_kv_pairs
    space = (seq_len - context) // 2  # slots for (query key, answer) pairs
    p = power_a * np.arange(1, space + 1, dtype=float) ** (power_a - 1)
    p = p / p.sum()
    inputs = np.zeros((n, seq_len), dtype=np.int64)
    labels = np.full((n, seq_len), -100, dtype=np.int64)
    answer_pos = []
    for i in range(n):
        keys = rng.choice(np.arange(1, half), size=num_kv_pairs, replace=False)
        vals = rng.choice(np.arange(half, vocab_size), size=num_kv_pairs, replace=True)
        row = np.zeros(seq_len, dtype=np.int64)
        row[0:context:2], row[1:context:2] = keys, vals
        gaps = rng.choice(space, size=num_kv_pairs, replace=False, p=p)  # slot index per query
        if random_non_queries:
            row[context:] = rng.integers(1, vocab_size, size=seq_len - context)
        pairs = []
        for j, g in enumerate(gaps):
            qpos = context + 2 * g
            row[qpos] = keys[j]
            row[qpos + 1] = vals[j]
            labels[i, qpos] = vals[j]
            pairs.append((int(qpos), 2 * j + 1))
        inputs[i] = row
        answer_pos.append(sorted(pairs))
    return MQARBatch(torch.from_numpy(inputs), torch.from_numpy(labels), answer_pos)
