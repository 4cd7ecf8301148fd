"""Q/K weight distance of each attention head of an HF model to a reference checkpoint.

Same definition as ``retrieval_heads.detect.weights``: per head, ``l2 = sqrt(||dQ||^2 +
||dK||^2)`` over its rows of ``q_proj`` and its key group's rows of ``k_proj``, and
``rel_l2 = l2 / sqrt(||Q_ref||^2 + ||K_ref||^2)``. Gated query projections (Qwen3-Next /
Qwen3.5: ``[q_h | gate_h]`` per head) use the query half. Layers without separate
``q_proj`` / ``k_proj`` weights (recurrent layers, fused QKV) are NaN. The reference is read
from its safetensors files tensor by tensor, so only the Q/K weights are loaded.

    >>> from retrieval_heads.hf.testing import tiny_model
    >>> from retrieval_heads.hf.model import HFModel
    >>> m = HFModel(tiny_model("smollm3"))
    >>> hf_qk_distance(m, qk_weights(m))["rel_l2"][0].tolist()
    [0.0, 0.0, 0.0, 0.0]
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..storage.files import inside, read_json, regular_file


def qk_weights(model) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{layer: (q_proj.weight, k_proj.weight)} of an ``HFModel``'s attention layers."""
    out = {}
    sd = model.hf.state_dict()
    for l, name in model.attn_paths.items():
        q, k = sd.get(f"{name}.q_proj.weight"), sd.get(f"{name}.k_proj.weight")
        if q is not None and k is not None:
            out[l] = (q.detach(), k.detach())
    return out


def read_qk_weights(path, model) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The same tensors read from another checkpoint folder of the same architecture."""
    from safetensors import safe_open

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        where = read_json(index).get("weight_map", {})
        if not isinstance(where, dict):
            raise ValueError(f"{index}: weight_map: expected a JSON object")
        where = {k: str(inside(path, v, f"{index}: weight_map[{k!r}]").relative_to(path)) for k, v in where.items()}
    else:
        where = {}
        for f in sorted(path.glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                where.update({k: f.name for k in h.keys()})
    out = {}
    for l, name in model.attn_paths.items():
        keys = (f"{name}.q_proj.weight", f"{name}.k_proj.weight")
        if not all(k in where for k in keys):
            continue
        pair = []
        for k in keys:
            with safe_open(str(regular_file(path / where[k])), "pt") as h:
                pair.append(h.get_tensor(k))
        out[l] = tuple(pair)
    return out


def head_slices(q: torch.Tensor, k: torch.Tensor, n_heads: int, n_kv: int, d_head: int):
    """(H, d_head, d_model) query and key row-slices (keys repeated over their group)."""
    q = q.float()
    if q.shape[0] == 2 * n_heads * d_head:  # gated: [q_h | gate_h] per head
        q = q.view(n_heads, 2 * d_head, -1)[:, :d_head]
    else:
        q = q.view(n_heads, d_head, -1)
    k = k.float().view(n_kv, d_head, -1).repeat_interleave(n_heads // n_kv, dim=0)
    return q, k


def hf_qk_distance(model, reference: dict) -> dict:
    """{"l2": [L, H], "rel_l2": [L, H]} of ``model``'s heads to ``reference`` (from ``qk_weights``
    or ``read_qk_weights``); NaN where either side lacks Q/K weights."""
    spec = model.spec
    L, H = spec.n_layers, spec.n_heads
    l2 = torch.full((L, H), float("nan"))
    rel = torch.full((L, H), float("nan"))
    mine = qk_weights(model)
    for l, (qa, ka) in mine.items():
        if l not in reference:
            continue
        qb, kb = reference[l]
        if qa.shape != qb.shape or ka.shape != kb.shape:
            raise ValueError(f"layer {l}: Q/K weight shapes differ from the reference's "
                             f"({tuple(qa.shape)} vs {tuple(qb.shape)}); not the same architecture")
        (qa, ka), (qb, kb) = (head_slices(qa, ka, H, spec.n_kv_heads, spec.d_head),
                              head_slices(qb, kb, H, spec.n_kv_heads, spec.d_head))
        d2 = (qa - qb.to(qa.device)).pow(2).sum((1, 2)) + (ka - kb.to(ka.device)).pow(2).sum((1, 2))  # (H,)
        r2 = qb.pow(2).sum((1, 2)) + kb.pow(2).sum((1, 2))
        l2[l] = d2.sqrt().cpu()
        rel[l] = (d2.sqrt().cpu() / r2.sqrt().clamp_min(1e-12).cpu())
    return {"l2": l2, "rel_l2": rel}
