"""Causal per-head scores: how much the answer depends on a head, not where the head looks.

    >>> import retrieval_heads as rh
    >>> model = rh.HybridLM(rh.ModelConfig(layout="SMF", d_model=32, n_heads=2, window=8, d_state=8))
    >>> batch = rh.tasks.niah_batch(n=2, context_len=160, seed=0)
    >>> res = causal_scores(model, batch)
    >>> res.scores("ablation").shape, sorted(res.per_sample)
    (torch.Size([3, 2]), ['ablation', 'ablation_mean', 'attribution', 'attribution_ig', 'attribution_mean'])

The quantity is the answer's teacher-forced log-probability ``lp``: the prompt up to its query
position ``q`` followed by the gold answer tokens, and the sum over answer tokens ``j`` of
``log p(answer_j | prompt, answer_<j)`` (read at positions ``q + j``; the EOS is not counted).
Every score is a drop, ``lp(clean) - lp(intervened)``, in nats, averaged over the needle set's
samples (all of them, answered correctly or not): positive = the head helps the answer,
0 = the answer does not depend on it, negative = it hurts.

- ``ablation``: exact. The head's output is zeroed at every position: ``blocks.{l}.attn.hook_z``
  ``[:, :, h]`` for attention layers (F, S); for recurrent layers (M, D, L), whose mixers have
  heads too, ``blocks.{l}.mixer.hook_out[:, :, h]`` (the recurrence's per-head output, before
  the mixer's gate, norm and output projection).
- ``ablation_mean``: exact, the head's output replaced by its mean over every position of the
  needle set (all samples' teacher-forced inputs).
- ``attribution`` / ``attribution_mean``: attribution patching, the first-order estimate of
  the two drops from one forward and one backward pass: with ``g = d lp / d z`` at the clean
  run, ``drop ~ -sum_{t,d} g * (z_ablated - z)``, i.e. ``sum g * z`` for zero ablation and
  ``sum g * (z - mean)`` for mean ablation. Where a head's removal is far from linear (a
  saturated answer: ``lp`` near 0, its gradient tiny) it misranks heads: Spearman 0.42 with
  ``ablation`` over the 48 heads of ``tests/fixtures/tiny_deep`` (``docs/CAUSAL.md``).
- ``attribution_ig``: integrated gradients along the path that scales one layer's head
  outputs to zero (``ig_steps`` midpoints, default 1: the gradient at half-ablation), the
  estimate of ``ablation`` that ranks well there (Spearman 0.69 over all heads, 0.95 within
  the full-attention layer) at about a seventh of the exact cost.

Per layer (``CausalScores.layer_scores``), the same drop when the whole token mixer's output is
zeroed (``blocks.{l}.hook_attn_out`` / ``blocks.{l}.hook_mixer_out``) and its attribution.

Cost, per chunk of ``batch_size`` samples: one forward + one backward at the clean input
(``lp``, the gradients, the means, and every layer's input ``hook_resid_pre``), then per scored
layer ``l`` one batched forward of the blocks ``l..L-1`` only, started from the cached input,
on ``(2 H + 1) x batch_size`` rows (H zero-ablated replicas, H mean-ablated, one with the
layer removed; ``max_rows`` splits it). In full-forward equivalents: about
``2 + (2H + 1) (L + 1) / 2`` for exact scores; ``exact=False`` skips the replays (about 3 for
``attribution``, plus ``3 ig_steps (L + 1) / 2`` for ``attribution_ig``). ``benchmarks/bench_causal.py`` measures both.

Pure scoring like the rest of ``detect``: a model and needle batches in, tensors and tables
out; hooks are TransformerLens hooks, removed on exit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import pandas as pd
import torch

CAUSAL_METRICS = ("ablation", "ablation_mean", "attribution", "attribution_mean", "attribution_ig")
EXACT = ("ablation", "ablation_mean")
ESTIMATES = ("attribution", "attribution_mean", "attribution_ig")
LAYER_METRICS = ("ablation", "attribution")  # per layer: the whole mixer's output zeroed


def head_site(model, layer: int) -> str:
    """The per-head output hook of ``layer``: ``hook_z`` (attention) or the mixer's ``hook_out``."""
    return f"blocks.{layer}.attn.hook_z" if model.cfg.is_attention(layer) else f"blocks.{layer}.mixer.hook_out"


def layer_site(model, layer: int) -> str:
    """The token mixer's output hook of ``layer``: ``hook_attn_out`` or ``hook_mixer_out``."""
    return f"blocks.{layer}.hook_attn_out" if model.cfg.is_attention(layer) else f"blocks.{layer}.hook_mixer_out"


# --- teacher-forced answers ---------------------------------------------------------------
@dataclass
class TeacherForced:
    """Inputs for the answer log-probability of a chunk of samples.

    tokens (B, T) prompt up to q + gold answer minus its last token, right-padded with the
    last real token (causal: never read by a real position); at (B, nq) positions q + j;
    target (B, nq) answer token j; mask (B, nq) answer token j exists; real (B, T) real
    positions (the means average over these)."""

    tokens: torch.Tensor
    at: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    real: torch.Tensor


def teacher_forced(samples, max_len: int | None = None) -> TeacherForced:
    """``TeacherForced`` inputs for a list of ``NeedleSample`` (answers cut to fit ``max_len``)."""
    seqs, ats, tgts = [], [], []
    for s in samples:
        q = int(s.query_pos)
        ans = list(s.answer_tokens)
        if max_len is not None:
            ans = ans[:max(0, max_len - q)]
        if not ans:
            raise ValueError(f"causal scores: a sample without answer tokens that fit (query position {q}, "
                             f"max_len {max_len})")
        seqs.append(list(s.tokens[:q + 1]) + ans[:-1])
        ats.append([q + j for j in range(len(ans))])
        tgts.append(ans)
    T = max(map(len, seqs))
    nq = max(map(len, ats))
    tokens = torch.tensor([x + [x[-1]] * (T - len(x)) for x in seqs], dtype=torch.long)  # (B, T)
    at = torch.tensor([x + [x[-1]] * (nq - len(x)) for x in ats], dtype=torch.long)  # (B, nq)
    target = torch.tensor([x + [0] * (nq - len(x)) for x in tgts], dtype=torch.long)  # (B, nq)
    mask = torch.tensor([[True] * len(x) + [False] * (nq - len(x)) for x in tgts])  # (B, nq)
    real = torch.tensor([[True] * len(x) + [False] * (T - len(x)) for x in seqs])  # (B, T)
    return TeacherForced(tokens, at, target, mask, real)


def answer_logprob_from_resid(model, resid: torch.Tensor, tf: TeacherForced) -> torch.Tensor:
    """Final residual (R*B, T, d) (before ``ln_final``) -> (R*B,) summed answer log-probability;
    R replicas of the chunk, in order."""
    RB, _, d = resid.shape
    B = tf.at.shape[0]
    R = RB // B
    at = tf.at.to(resid.device).repeat(R, 1)  # (R*B, nq)
    x = resid.gather(1, at[..., None].expand(-1, -1, d))  # (R*B, nq, d)
    lp = model.unembed(model.ln_final(x)).float().log_softmax(-1)  # (R*B, nq, V)
    tgt = tf.target.to(resid.device).repeat(R, 1)
    lp = lp.gather(-1, tgt[..., None])[..., 0]  # (R*B, nq)
    return (lp * tf.mask.to(resid.device).repeat(R, 1)).sum(-1)


@torch.no_grad()
def answer_logprob(model, samples, fwd_hooks=(), max_len: int | None = None) -> torch.Tensor:
    """(n,) teacher-forced answer log-probability of ``samples`` (a ``NeedleBatch`` or a list of
    samples) with ``fwd_hooks`` active: the reference the exact scores are tested against."""
    samples = list(getattr(samples, "samples", samples))
    tf = teacher_forced(samples, max_len or model.cfg.max_seq_len)
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        resid = model(tf.tokens.to(model.device), return_type="residual")  # after ln_final
    d = resid.shape[-1]
    x = resid.gather(1, tf.at.to(resid.device)[..., None].expand(-1, -1, d))
    lp = model.unembed(x).float().log_softmax(-1).gather(-1, tf.target.to(resid.device)[..., None])[..., 0]
    return (lp * tf.mask.to(resid.device)).sum(-1).cpu()


# --- the result object --------------------------------------------------------------------
@dataclass
class CausalScores:
    """Causal scores of every (layer, head) over needle samples: ``per_sample[m]`` (n, L, H)
    nats (NaN for layers not scored), ``layer_per_sample[m]`` (n, L) for the whole mixer,
    ``clean`` (n,) the unablated answer log-probability, ``seconds`` the time of the clean
    pass (forward + backward) and of the exact replays."""

    layer_types: str
    scored_layers: list[int]
    per_sample: dict
    layer_per_sample: dict
    clean: torch.Tensor
    seconds: dict = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return int(self.clean.numel())

    def scores(self, metric: str = "ablation") -> torch.Tensor:
        """[n_layers, n_heads] mean over samples of a causal metric (``CAUSAL_METRICS``)."""
        if metric not in CAUSAL_METRICS:
            raise ValueError(f"causal metric: {metric!r}; use one of {CAUSAL_METRICS}")
        if metric not in self.per_sample:
            raise ValueError(f"{metric} was not computed (exact=False leaves out the exact ablations, "
                             "ig_steps=0 attribution_ig)")
        return self.per_sample[metric].mean(0)

    def layer_scores(self, metric: str = "ablation") -> torch.Tensor:
        """[n_layers] mean drop when the whole token mixer of a layer is zeroed (or its attribution)."""
        if metric not in self.layer_per_sample:
            raise ValueError(f"layer metric: {metric!r}; computed: {tuple(self.layer_per_sample)}")
        return self.layer_per_sample[metric].mean(0)

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: layer, head, layer_type, metric, value, n."""
        rows = []
        for m in self.per_sample:
            s = self.scores(m)
            for l in self.scored_layers:
                for h in range(s.shape[1]):
                    rows.append((l, h, self.layer_types[l], m, float(s[l, h]), self.n_samples))
        return pd.DataFrame(rows, columns=["layer", "head", "layer_type", "metric", "value", "n"])

    @staticmethod
    def merge(parts: list[CausalScores]) -> CausalScores:
        p0 = parts[0]
        secs = {k: sum(p.seconds.get(k, 0.0) for p in parts) for k in p0.seconds}
        return CausalScores(p0.layer_types, p0.scored_layers,
                            {m: torch.cat([p.per_sample[m] for p in parts]) for m in p0.per_sample},
                            {m: torch.cat([p.layer_per_sample[m] for p in parts]) for m in p0.layer_per_sample},
                            torch.cat([p.clean for p in parts]), secs)


# --- the scorer ---------------------------------------------------------------------------
def _flat_samples(batches) -> list:
    if hasattr(batches, "samples"):
        return list(batches.samples)
    out = []
    for b in batches:
        out += list(getattr(b, "samples", [b]))
    return out


def _clean_pass(model, tf: TeacherForced, layers: list[int]) -> dict:
    """One forward + backward at the clean input: lp (B,), per head sum g*z (B, L, H) and
    sum_t g (B, L, H, D), per layer sum g*out (B, L), real-position sums of z (L, H, D) and
    counts, and each scored layer's input (B, T, d)."""
    dev = model.device
    tokens = tf.tokens.to(dev)
    acts, resid = {}, {}

    def keep(t, hook):
        acts[hook.name] = t
        return t

    def keep_resid(t, hook):
        resid[hook.name] = t.detach()
        return t

    def leaf(t, hook):  # gradients reach the activations even when the weights are frozen
        return t if t.requires_grad else t.detach().requires_grad_(True)

    hooks = [("hook_embed", leaf)]
    for l in layers:
        hooks += [(head_site(model, l), keep), (layer_site(model, l), keep),
                  (f"blocks.{l}.hook_resid_pre", keep_resid)]
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        out = model(tokens, return_type="residual")  # (B, T, d) after ln_final
        d = out.shape[-1]
        x = out.gather(1, tf.at.to(dev)[..., None].expand(-1, -1, d))  # (B, nq, d)
        lp = model.unembed(x).float().log_softmax(-1).gather(-1, tf.target.to(dev)[..., None])[..., 0]
        lp = (lp * tf.mask.to(dev)).sum(-1)  # (B,)
        names = [n for l in layers for n in (head_site(model, l), layer_site(model, l))]
        grads = torch.autograd.grad(lp.sum(), [acts[n] for n in names], allow_unused=True)
    g = dict(zip(names, grads))
    real = tf.real.to(dev)
    res = {"lp": lp.detach(), "gz": {}, "gsum": {}, "zsum": {}, "count": int(real.sum()), "layer_gz": {},
           "resid": {l: resid[f"blocks.{l}.hook_resid_pre"] for l in layers}}
    for l in layers:
        z, gz = acts[head_site(model, l)].detach(), g[head_site(model, l)]  # (B, T, H, D)
        gz = torch.zeros_like(z) if gz is None else gz
        res["gz"][l] = (gz * z).sum((1, 3)).float()  # (B, H)
        res["gsum"][l] = gz.sum(1).double()  # (B, H, D)
        res["zsum"][l] = (z * real[:, :, None, None]).sum((0, 1)).double()  # (H, D)
        o, go = acts[layer_site(model, l)].detach(), g[layer_site(model, l)]
        res["layer_gz"][l] = torch.zeros(z.shape[0]) if go is None else (go * o).sum((1, 2)).float()
    return res


def _integrated(model, tf: TeacherForced, layer: int, x0: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrated-gradients estimate of the zero-ablation drops of ``layer``'s heads (B, H):
    the path scales this layer's head outputs by ``1 - a`` (a from 0 to 1, every head at once),
    midpoint rule with ``steps`` points; ``sum_a g(a) * z / steps`` per head, each point one
    forward + backward of the blocks layer..L-1 from the cached input x0 (B, T, d)."""
    B, T, d = x0.shape
    positions = torch.arange(T, device=x0.device)
    total = 0.0
    for i in range(steps):
        a = (i + 0.5) / steps
        keep = {}

        def scale(z, hook, a=a, keep=keep):
            keep["z"] = z  # the clean head outputs (B, T, H, D): blocks before the layer are clean
            keep["s"] = z * (1.0 - a)
            return keep["s"]

        with torch.enable_grad(), model.hooks(fwd_hooks=[(head_site(model, layer), scale)]):
            x = x0.detach().requires_grad_(True)
            for blk in model.blocks[layer:]:
                x = blk(x, positions)
            lp = answer_logprob_from_resid(model, x, tf)  # (B,)
            (g,) = torch.autograd.grad(lp.sum(), [keep["s"]])
        total = total + (g * keep["z"].detach()).sum((1, 3)).float() / steps  # (B, H)
    return total


@torch.no_grad()
def _replay(model, tf: TeacherForced, layer: int, x0: torch.Tensor, means: torch.Tensor | None,
            max_rows: int) -> torch.Tensor:
    """Exact drops at ``layer``: replicas [zero h for h < H] + [mean h] + [layer zeroed], each a
    copy of the chunk, run through blocks layer..L-1 from the cached input x0 (B, T, d).
    Returns the answer log-probability (R, B)."""
    B, T, d = x0.shape
    H = model.cfg.n_heads
    specs = [("zero", h) for h in range(H)] + ([("mean", h) for h in range(H)] if means is not None else []) \
        + [("layer", -1)]
    positions = torch.arange(T, device=x0.device)
    out = []
    per = max(1, max_rows // B)
    for i in range(0, len(specs), per):
        group = specs[i:i + per]
        R = len(group)

        def heads_hook(z, hook, group=group, R=R):  # z (R*B, T, H, D)
            z = z.reshape(R, B, *z.shape[1:]).clone()
            for r, (kind, h) in enumerate(group):
                if kind == "zero":
                    z[r, :, :, h] = 0.0
                elif kind == "mean":
                    z[r, :, :, h] = means[h].to(z.dtype)
            return z.reshape(R * B, *z.shape[2:])

        def layer_hook(o, hook, group=group, R=R):  # o (R*B, T, d_model)
            rows = [r for r, (kind, _) in enumerate(group) if kind == "layer"]
            if not rows:
                return o
            o = o.reshape(R, B, *o.shape[1:]).clone()
            o[rows] = 0.0
            return o.reshape(R * B, *o.shape[2:])

        x = x0.unsqueeze(0).expand(R, B, T, d).reshape(R * B, T, d)  # (R*B, T, d)
        with model.hooks(fwd_hooks=[(head_site(model, layer), heads_hook), (layer_site(model, layer), layer_hook)]):
            for blk in model.blocks[layer:]:
                x = blk(x, positions)
        out.append(answer_logprob_from_resid(model, x, tf).view(R, B))
    return torch.cat(out)  # (R, B)


def causal_scores(model, batches, *, layers=None, batch_size: int = 8, exact: bool = True, ig_steps: int = 1,
                  means: dict | None = None, max_rows: int = 256) -> CausalScores:
    """Causal scores of every head of ``model`` (a ``HybridLM``) on ``batches`` (a
    ``NeedleBatch``, a list of them, or a list of samples; see the module docstring).

    ``layers``: the layers to score (default every layer: attention through ``hook_z``,
    recurrent through ``mixer.hook_out``). ``exact=False``: only the estimates (``attribution``,
    ``attribution_mean``: one forward and one backward per chunk; ``attribution_ig``: ``ig_steps``
    more forward + backward passes per layer, from that layer on; ``ig_steps=0`` leaves it out).
    ``means``: {layer: (H, D)}
    for the mean ablation (default: the mean over every real position of the needle set).
    ``max_rows``: most rows of one batched replay forward."""
    if not all(hasattr(model, a) for a in ("blocks", "ln_final", "unembed", "cfg")):
        raise ValueError(f"causal scores need a HybridLM (blocks, ln_final, unembed); got {type(model).__name__}")
    cfg = model.cfg
    L, H = cfg.n_layers, cfg.n_heads
    layers = list(range(L)) if layers is None else sorted(set(int(l) for l in layers))
    bad = [l for l in layers if not 0 <= l < L]
    if bad:
        raise ValueError(f"layers: {bad} out of range; the model has {L} layers")
    samples = _flat_samples(batches)
    if not samples:
        raise ValueError("causal scores: no samples")
    chunks = [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]
    was_training = model.training
    model.eval()
    try:
        t0 = time.perf_counter()
        clean = []
        for ch in chunks:
            tf = teacher_forced(ch, cfg.max_seq_len)
            clean.append((tf, _clean_pass(model, tf, layers)))
        count = sum(c["count"] for _, c in clean)
        if means is None:
            means = {l: (sum(c["zsum"][l] for _, c in clean) / max(count, 1)).float() for l in layers}
        t_clean = time.perf_counter() - t0
        n = len(samples)
        names = [m for m in CAUSAL_METRICS if (exact or m not in EXACT) and (ig_steps or m != "attribution_ig")]
        per = {m: torch.full((n, L, H), math.nan) for m in names}
        per_layer = {m: torch.full((n, L), math.nan) for m in LAYER_METRICS if exact or m not in EXACT}
        lp_clean = torch.cat([c["lp"].cpu() for _, c in clean])
        b0, t_ig = 0, 0.0
        t1 = time.perf_counter()
        for tf, c in clean:
            B = tf.tokens.shape[0]
            sl = slice(b0, b0 + B)
            for l in layers:
                mean_l = means[l].to(c["gsum"][l].device).double()  # (H, D)
                per["attribution"][sl, l] = c["gz"][l].cpu()
                per["attribution_mean"][sl, l] = (c["gz"][l].double()
                                                  - (c["gsum"][l] * mean_l).sum(-1)).float().cpu()
                per_layer["attribution"][sl, l] = c["layer_gz"][l].cpu()
                if ig_steps:
                    ti = time.perf_counter()
                    per["attribution_ig"][sl, l] = _integrated(model, tf, l, c["resid"][l], ig_steps).cpu()
                    t_ig += time.perf_counter() - ti
                if not exact:
                    continue
                lp = _replay(model, tf, l, c["resid"][l], means[l], max_rows).cpu()  # (2H + 1, B)
                drop = c["lp"].cpu()[None] - lp
                per["ablation"][sl, l] = drop[:H].T
                per["ablation_mean"][sl, l] = drop[H:2 * H].T
                per_layer["ablation"][sl, l] = drop[2 * H]
            b0 += B
        t_exact = time.perf_counter() - t1 - t_ig if exact else 0.0
    finally:
        model.train(was_training)
    return CausalScores(cfg.layout, layers, per, per_layer, lp_clean,
                        {"clean": t_clean, "exact": t_exact, "ig": t_ig})
