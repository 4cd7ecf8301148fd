"""The nnsight backend of activation patching (``with`` blocks must live in a file).

Each patch is one ``NNsight(model).trace`` of the corrupted prompt in which the hooked
module's output is overwritten by the clean run's value. Module outputs are read in
execution order, as nnsight requires. Attention runs on the fast path: overwriting
``hook_z`` needs no pattern.
"""

from __future__ import annotations

import torch


def _envoy(root, name: str):
    env = root
    for part in name.split("."):
        env = env[int(part)] if part.isdigit() else getattr(env, part)
    return env


def run(model, pair, patches, logit_diff, hook_order, progress: bool = False):
    from nnsight import NNsight
    from tqdm.auto import tqdm

    nm = NNsight(model)
    names = sorted({p.hook for p in patches}, key=hook_order)
    clean = {}
    with torch.no_grad():
        with nm.trace(pair.clean):
            for name in names:
                clean[name] = _envoy(nm, name).output.clone().save()
            clean_logits = nm.output.save()
        with nm.trace(pair.corrupt):
            corrupt_logits = nm.output.save()
        diffs = []
        for p in tqdm(patches, desc="patching (nnsight)", disable=not progress):
            src = clean[p.hook]
            with nm.trace(pair.corrupt):
                env = _envoy(nm, p.hook)
                env.output = p.apply(env.output, src)
                logits = nm.output.save()
            diffs.append(logit_diff(logits, pair))
    return logit_diff(clean_logits, pair), logit_diff(corrupt_logits, pair), diffs
