"""Batched ensembles: K small attention-only models trained in one process, one step for all.

``train_ensemble`` stacks the K members' parameters along a leading *model axis* and runs one
forward, one backward and one optimizer step per training step for all of them (the
Large-Window Laziness sweep: windows 4..64 plus the all-F reference, 3 seeds). It pays off
where per-operation overhead dominates (very small models and batches). **Measured:** for a
tiny-like model (d_model 32, context 256, batch 16) a step is *not* overhead-bound (the
attention kernels and matmuls dominate), and the ensemble in one thread was slower than
``train()`` run after run: 0.43x (K=6) and 0.78x (K=12) of its tokens/s, with the 2-core
machine at load 4-6 (benchmarks/bench_ensemble.py, results/ensemble_cpu.json): use it
for its single process and folder-per-member bookkeeping, or for smaller models, and check
the benchmark before relying on a speed-up::

    from retrieval_heads.train.ensemble import train_ensemble
    mc, tc = rh.train.load_preset("tiny")
    members = [(mc.replace(window=w), tc.replace(seed=s), f"runs/w{w}_s{s}")
               for w in (8, 16, 64) for s in (0, 1, 2)]
    results = train_ensemble(members)            # one dict per member, as train() returns

**What members share and what they may differ in.** Everything that fixes a tensor shape or
the optimizer's trajectory must be equal (``n_layers``, ``d_model``, ``n_heads``,
``n_kv_heads``, ``d_mlp``, ``vocab_size``, ``norm_eps``, ``tie_embeddings``; ``steps``,
``batch_size``, ``grad_accum``, ``context_len``, the learning-rate schedule, AdamW's
hyper-parameters, ``grad_clip``, ``device``, ``dtype``). A member may have its own
``MODEL_MAY_DIFFER`` (the window; the layout's S/F letters, so an all-F reference such as
``SSSF -> FFFF`` can join; ``pos``/``rope_base``; ``init_std``) and ``TRAIN_MAY_DIFFER`` (the
seed and the data mixture; evaluation and checkpoint cadence). Anything else is a one-line
``ValueError`` naming the field. Layouts must be attention-only (F, S): the recurrent mixers
(M, D, L) have no batched form here and raise a ``ValueError``.

**How one step serves all members.** ``ensemble_forward`` is a functional re-implementation of
``HybridLM.forward`` for F/S layouts over stacked parameters ``{name: [K, ...]}`` and tokens
``[K, B, T]``: embeddings are gathered per member, every ``nn.Linear`` is one batched matmul over
the model axis, RMSNorm/SwiGLU are elementwise. Attention goes through the same kernels as the
single model (``kernels.fast_attention``: SDPA for full causal layers, the blocked
sliding-window kernel for S layers): in each layer the members are split into runs of equal
window (members are ordered internally by their windows, so each distinct window is one
kernel call over ``K_w x B`` rows); no ``[T, T]`` mask is materialised, so a window-8 member
costs what it costs alone. Per-member RoPE on/off (an all-F NoPE reference next to RoPE S
layers) uses ``cos = 1, sin = 0`` for NoPE members, which rotates exactly nothing.

**Equal to ``train()`` per member.** Member k is initialised exactly as ``train()`` does
(``torch.manual_seed(seed); HybridLM(model_cfg)``), sees exactly ``training_batch(train_cfg,
step)`` (members with equal ``TrainConfig`` share the rows, built once), and gets
``row_loss`` summed over its rows / ``batch_size`` per micro-batch as in ``train()`` (members
do not interact: the gradient of the summed loss w.r.t. member k's parameters is member k's
gradient). Gradient clipping is **per member** (each member's global norm over its own
parameters, the formula of ``clip_grad_norm_``), and AdamW on the stacked tensors is
elementwise with one shared step count and learning rate (the members share the schedule),
so it is member k's AdamW. The trajectories agree with ``train()`` up to float summation
order (the embedding gradient's scatter-add, the norms of the clipping): tests/train/test_ensemble.py
measures the difference.

**Run folders.** Every member writes the normal layout of ``train()``: ``RUN/run.json``,
``RUN/metrics.jsonl`` and ``RUN/step_XXXXXX/`` checkpoints at ``checkpoint_steps(train_cfg)``
through ``save_checkpoint``, *with* a ``train_state.pt`` in ``train()``'s format (member
k's AdamW state dict, step, tokens seen, the RNG state after its initialisation, the
running loss sums): ``rh.scan(RUN)`` works unchanged, a member can be continued alone with
``train(model_cfg, train_cfg, RUN, resume=True)``, and ``train_ensemble(..., resume=True)``
continues all members from their newest common checkpoint. ``metrics.jsonl`` rows: with
``full_eval=True`` (default) the same keys as ``train()``'s rows (``loop.evaluate`` on the
member's weights: NIAH accuracy, answer-token accuracy, held-out LM loss); with
``full_eval=False`` the NIAH keys are left out (``lm_loss`` and the training losses stay).
``tokens_per_s``/``wall_s`` are one member's tokens over the *ensemble's* training time
(sum over members for the ensemble's rate). ``compile`` is ignored (no ``torch.compile``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import ATTENTION_KINDS, ModelConfig, TrainConfig
from ..labels import format_duration
from ..model import kernels
from ..model.attention import rope_angles
from ..storage.checkpoint import (
    clean_partial_checkpoints,
    list_checkpoints,
    load_checkpoint,
    load_train_state,
    save_checkpoint,
)
from ..storage.files import write_text
from ..tasks.mixture import eval_lm_batch, row_loss, training_batch
from .loop import (
    RUN_FILE,
    append_metrics,
    check_configs,
    check_memory,
    check_out_dir,
    checkpoint_steps,
    eval_steps,
    evaluate,
    lr_at,
    resolve_device,
    truncate_metrics,
)

# fields a member may set on its own; every other field must be equal across the members
MODEL_MAY_DIFFER = ("window", "layout", "pos", "rope_base", "init_std", "max_seq_len", "attn_backend",
                    "recurrent_backend", "d_state", "chunk_size")
TRAIN_MAY_DIFFER = ("seed", "niah_fraction", "niah_variant", "haystack", "niah_haystack", "niah_context_weight",
                    "induction_fraction", "eval_every", "eval_samples", "save_every", "save_log_spaced", "compile")


# ----------------------------------------------------------------------------- checks
def check_members(members) -> None:
    """``ValueError`` (one line, naming the field) unless ``members`` can train as one ensemble."""
    if not isinstance(members, (list, tuple)) or not members:
        raise ValueError("members: expected a non-empty list of (ModelConfig, TrainConfig, out) tuples")
    for i, m in enumerate(members):
        if not (isinstance(m, (list, tuple)) and len(m) == 3 and isinstance(m[0], ModelConfig)
                and isinstance(m[1], TrainConfig)):
            raise ValueError(f"members[{i}]: expected a (ModelConfig, TrainConfig, out) tuple, got {m!r:.120}")
        rec = sorted({c for c in m[0].layout if c not in ATTENTION_KINDS})
        if rec:
            raise ValueError(f"layout: member {i} has {m[0].layout!r}, with recurrent layer(s) {''.join(rec)}; the "
                             "ensemble trainer supports attention-only layouts (F, S): train it with train()")
    mc0, tc0 = members[0][0].to_dict(), members[0][1].to_dict()
    for i, (mc, tc, _) in enumerate(members[1:], 1):
        for what, ref, cur, free in (("model", mc0, mc.to_dict(), MODEL_MAY_DIFFER),
                                     ("train", tc0, tc.to_dict(), TRAIN_MAY_DIFFER)):
            for k, v in cur.items():
                if k not in free and v != ref[k]:
                    raise ValueError(f"{k}: members of one ensemble must share it ({what} config: member 0 has "
                                     f"{ref[k]!r}, member {i} has {v!r}); only "
                                     f"{', '.join(free)} may differ")
    outs = [Path(m[2]).resolve() for m in members]
    dup = sorted({str(o) for o in outs if outs.count(o) > 1})
    if dup:
        raise ValueError(f"out: members must write to different folders; {dup[0]} is given more than once")


# ----------------------------------------------------------------------------- the batched model
@dataclass
class EnsemblePlan:
    """What varies per member inside the forward: per layer, the windows (runs of members with
    equal window share one kernel call) and the RoPE rotation."""

    cfgs: list  # ModelConfig per member
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    n_layers: int
    norm_eps: float
    tied: bool
    _rope: dict = field(default_factory=dict)

    @classmethod
    def of(cls, cfgs: list[ModelConfig]) -> EnsemblePlan:
        c = cfgs[0]
        return cls(list(cfgs), c.d_model, c.n_heads, c.n_kv_heads, c.d_head, c.n_layers, c.norm_eps,
                   c.tie_embeddings)

    def window_runs(self, layer: int, T: int) -> list[tuple[int, int, int | None]]:
        """[(first member, end member, window or None)] covering the members in order."""
        runs = []
        for k, cfg in enumerate(self.cfgs):
            w = cfg.layer_window(layer)
            w = None if w is None or w >= T else w
            if runs and runs[-1][2] == w:
                runs[-1] = (runs[-1][0], k + 1, w)
            else:
                runs.append((k, k + 1, w))
        return runs

    def rope(self, layer: int, positions: torch.Tensor):
        """(cos, sin) of shape (K or 1, 1, T, 1, d_head/2), or None when no member rotates."""
        key = (layer, tuple(positions.tolist()), str(positions.device))
        if key not in self._rope:
            specs = []
            for cfg in self.cfgs:
                kind = cfg.layer_kind(layer)
                specs.append(cfg.rope_base[kind] if cfg.pos[kind] == "rope" else None)
            if all(s is None for s in specs):
                val = None
            elif len(set(specs)) == 1:
                cos, sin = rope_angles(positions, self.d_head, specs[0])
                val = cos[None, None, :, None, :], sin[None, None, :, None, :]
            else:
                half = self.d_head // 2
                one = torch.ones(len(positions), half, device=positions.device)
                cs = [rope_angles(positions, self.d_head, s) if s is not None else (one, torch.zeros_like(one))
                      for s in specs]
                val = (torch.stack([c for c, _ in cs])[:, None, :, None, :],
                       torch.stack([s for _, s in cs])[:, None, :, None, :])
            if len(self._rope) > 64:
                self._rope.clear()
            self._rope[key] = val
        return self._rope[key]


def _linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (K, N, in) @ w (K, out, in)^T -> (K, N, out): one nn.Linear per member."""
    return torch.matmul(x, w.mT)


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last axis with a weight (K, D) per member; x (K, N, D)."""
    return F.rms_norm(x, (x.shape[-1],), eps=eps) * w[:, None, :]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``attention.apply_rope`` with a model axis: x (K, B, T, H, D), cos/sin (K|1, 1, T, 1, D/2)."""
    d2 = x.shape[-1] // 2
    x1, x2 = x[..., :d2], x[..., d2:]
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)


def _attention(plan: EnsemblePlan, p: dict, pre: str, h: torch.Tensor, layer: int, positions, B: int, T: int):
    K = h.shape[0]
    H, Hkv, D = plan.n_heads, plan.n_kv_heads, plan.d_head
    q = _linear(h, p[pre + "W_Q.weight"]).view(K, B, T, H, D)
    k = _linear(h, p[pre + "W_K.weight"]).view(K, B, T, Hkv, D)
    v = _linear(h, p[pre + "W_V.weight"]).view(K, B, T, Hkv, D)
    rope = plan.rope(layer, positions)
    if rope is not None:
        q, k = _rotate(q, *rope), _rotate(k, *rope)
    qh, kh, vh = q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3)  # (K, B, H, T, D)
    if H != Hkv:
        kh, vh = kh.repeat_interleave(H // Hkv, dim=2), vh.repeat_interleave(H // Hkv, dim=2)
    outs = []
    for a, b, w in plan.window_runs(layer, T):  # one kernel call per run of equal windows
        z = kernels.fast_attention(qh[a:b].flatten(0, 1), kh[a:b].flatten(0, 1), vh[a:b].flatten(0, 1), w,
                                   "auto")  # ((b-a)·B, H, T, D)
        outs.append(z.view(b - a, B, H, T, D))
    z = outs[0] if len(outs) == 1 else torch.cat(outs)  # (K, B, H, T, D)
    z = z.transpose(2, 3).reshape(K, B * T, H * D)
    return _linear(z, p[pre + "W_O.weight"])


def ensemble_forward(plan: EnsemblePlan, params: dict, tokens: torch.Tensor) -> torch.Tensor:
    """``HybridLM.forward`` of every member at once: tokens (K, B, T) -> logits (K, B, T, vocab),
    with ``params`` the members' ``named_parameters`` stacked as ``{name: (K, ...)}``."""
    K, B, T = tokens.shape
    positions = torch.arange(T, device=tokens.device)
    emb = params["embed.weight"]  # (K, V, D)
    x = emb[torch.arange(K, device=tokens.device)[:, None, None], tokens].reshape(K, B * T, -1)
    for l in range(plan.n_layers):
        pre = f"blocks.{l}."
        x = x + _attention(plan, params, pre + "attn.", _rms(x, params[pre + "ln1.weight"], plan.norm_eps), l,
                           positions, B, T)
        h = _rms(x, params[pre + "ln2.weight"], plan.norm_eps)
        g = F.silu(_linear(h, params[pre + "mlp.W_gate.weight"])) * _linear(h, params[pre + "mlp.W_in.weight"])
        x = x + _linear(g, params[pre + "mlp.W_out.weight"])
    x = _rms(x, params["ln_final.weight"], plan.norm_eps)
    unembed = params["embed.weight" if plan.tied else "unembed.weight"]
    return _linear(x, unembed).view(K, B, T, -1)


# ----------------------------------------------------------------------------- members and state
def _member_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    """``train()``'s optimizer: AdamW, weight decay on matrices only (loop._optimizer)."""
    decay = [p for _, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for _, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)


@dataclass
class _Member:
    index: int  # position in the caller's list
    model_cfg: ModelConfig
    cfg: TrainConfig
    out: Path
    model: torch.nn.Module  # a HybridLM holding this member's weights at save/eval time
    rng: dict  # torch RNG state right after initialisation (what train() saves)
    ckpt_at: set = field(init=False)
    eval_at: set = field(init=False)
    tokens_seen: int = 0
    running: list = field(default_factory=lambda: [0.0, 0, 0.0, 0])  # loss, n, needle loss, needle rows
    line: list = field(default_factory=lambda: [0.0, 0])
    last_metrics: dict = field(default_factory=dict)

    def __post_init__(self):
        self.ckpt_at, self.eval_at = set(checkpoint_steps(self.cfg)), set(eval_steps(self.cfg))


class _Ensemble:
    """Stacked parameters (leaves), one AdamW over them, and the members (in window order)."""

    def __init__(self, members: list[_Member], device: torch.device):
        self.members, self.device = members, device
        self.K = len(members)
        self.plan = EnsemblePlan.of([m.model_cfg for m in members])
        names = [n for n, _ in members[0].model.named_parameters()]
        with torch.no_grad():
            self.params = {n: torch.stack([dict(m.model.named_parameters())[n] for m in members]).detach()
                           .requires_grad_(True) for n in names}
        cfg = members[0].cfg
        decay = [p for p in self.params.values() if p.dim() >= 3]  # member matrices
        no_decay = [p for p in self.params.values() if p.dim() < 3]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)
        self.data_keys = [json.dumps(m.cfg.to_dict(), sort_keys=True) for m in members]

    # --- member <-> stack
    def sync_member(self, m: _Member) -> None:
        """Copy the member's slice of the stack into its ``HybridLM``."""
        k = self.members.index(m)
        with torch.no_grad():
            for n, p in m.model.named_parameters():
                p.copy_(self.params[n][k])

    def member_optimizer_state(self, m: _Member, lr: float) -> dict:
        """Member ``m``'s AdamW state dict, as ``train()`` would have saved it."""
        k = self.members.index(m)
        opt = _member_optimizer(m.model, m.cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        for n, p in m.model.named_parameters():
            st = self.opt.state.get(self.params[n])
            if st:
                opt.state[p] = {key: (v.clone() if key == "step" else v[k].clone()) for key, v in st.items()}
        return opt.state_dict()

    def load_member(self, m: _Member, ckpt: Path) -> dict:
        """Put a checkpoint's weights and AdamW state into member ``m``'s slice; returns its train state."""
        k = self.members.index(m)
        saved = load_train_state(ckpt)
        m.model.load_state_dict(load_checkpoint(ckpt).state_dict())
        opt = _member_optimizer(m.model, m.cfg)
        opt.load_state_dict(saved["optimizer"])
        with torch.no_grad():
            for n, p in m.model.named_parameters():
                self.params[n][k].copy_(p)
                st = opt.state.get(p)
                if not st:
                    continue
                big = self.opt.state[self.params[n]]
                for key, v in st.items():
                    if key == "step":
                        big[key] = v.clone()
                    else:
                        if key not in big:
                            big[key] = torch.zeros_like(self.params[n])
                        big[key][k].copy_(v)
        return saved

    # --- one step
    def batch(self, step: int, rows: range):
        """Stacked (tokens, targets, weights, is_needle) of every member: (K, rows, T) / (K, rows)."""
        built = {}
        for m, key in zip(self.members, self.data_keys):
            if key not in built:
                built[key] = training_batch(m.cfg, step, rows=rows)
        bs = [built[key] for key in self.data_keys]
        return tuple(torch.stack([getattr(b, f) for b in bs]).to(self.device)
                     for f in ("tokens", "targets", "weights", "is_needle"))

    def train_step(self, step: int, autocast) -> torch.Tensor:
        """One optimizer step for every member; returns (K, 3): mean row loss, needle-row loss sum, needle rows."""
        cfg, K = self.members[0].cfg, self.K
        for g in self.opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        mb = cfg.batch_size // cfg.grad_accum
        sums = torch.zeros(K, 3, device=self.device)
        for micro in range(cfg.grad_accum):
            tokens, targets, weights, needle = self.batch(step, range(micro * mb, (micro + 1) * mb))
            with autocast:
                logits = ensemble_forward(self.plan, self.params, tokens)  # (K, mb, T, V)
            losses = row_loss(logits.flatten(0, 1), targets.flatten(0, 1), weights.flatten(0, 1)).view(K, mb)
            (losses.sum() / cfg.batch_size).backward()
            d = losses.detach()
            sums += torch.stack([d.sum(1), (d * needle).sum(1), needle.sum(1).to(d.dtype)], 1)
        if cfg.grad_clip > 0:
            self.clip(cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        sums[:, 0] /= cfg.batch_size
        return sums.cpu()

    def clip(self, max_norm: float) -> None:
        """``clip_grad_norm_`` per member: each member's global 2-norm over its own gradients."""
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), 2, dim=1) for g in grads])  # (n, K)
        total = torch.linalg.vector_norm(norms, 2, dim=0)  # (K,)
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, *[1] * (g.dim() - 1)).to(g.dtype))

    @torch.no_grad()
    def lm_losses(self, n_of) -> list[float]:
        """Held-out LM loss of every member (``full_eval=False``), through its own model."""
        out = []
        for m in self.members:
            lm = eval_lm_batch(m.cfg, n_of(m))
            was = m.model.training
            m.model.eval()
            logits = m.model(lm.tokens.to(self.device))
            out.append(row_loss(logits, lm.targets.to(self.device), lm.weights.to(self.device)).mean().item())
            m.model.train(was)
        return out


# ----------------------------------------------------------------------------- folders
def _prepare_folder(m: _Member, mode: str, start: int) -> None:
    if mode == "overwrite":
        shutil.rmtree(m.out)
    m.out.mkdir(parents=True, exist_ok=True)
    clean_partial_checkpoints(m.out)
    write_text(m.out / RUN_FILE, json.dumps({"model": m.model_cfg.to_dict(), "train": m.cfg.to_dict()},
                                            indent=2, sort_keys=True))
    truncate_metrics(m.out, start if mode == "resume" else -1)


def _resume_step(members: list[_Member]) -> int:
    """The newest step at which every member has a checkpoint with ``train_state.pt``."""
    common = None
    for m in members:
        steps = {int(p.name[5:]) for p in list_checkpoints(m.out) if (p / "train_state.pt").exists()}
        common = steps if common is None else common & steps
    if not common:
        raise ValueError("resume: the members have no checkpoint step with train_state.pt in common; "
                         "resume them one by one with train(..., resume=True) or pass overwrite=True")
    return max(common)


# ----------------------------------------------------------------------------- the trainer
def train_ensemble(members, *, log=print, progress: bool = False, stop_at: int | None = None,
                   resume: bool = False, overwrite: bool = False, full_eval: bool = True,
                   log_every: int | None = None) -> list[dict]:
    """Train ``members`` = ``[(ModelConfig, TrainConfig, out), ...]`` as one batched ensemble.

    Each member's run folder, checkpoints and weights are those ``train(model_cfg, train_cfg,
    out)`` would write (up to float summation order; see the module docstring for what members
    may differ in). ``stop_at`` stops every member after that step (with a checkpoint);
    ``resume`` continues all members from their newest common checkpoint; ``overwrite``
    replaces runs in the folders; ``full_eval=False`` leaves the NIAH evaluation out of the
    metrics rows; ``log_every=N`` logs a line of every member's mean loss every N steps.
    Returns one dict per member, in the given order, with ``train()``'s keys: ``out``, ``step``,
    ``tokens_seen``, ``wall_s`` (the ensemble's training time), ``tokens_per_s`` (this member's),
    ``final`` (its last metrics row), ``model`` (its ``HybridLM``)."""
    from ..model import HybridLM

    check_members(members)
    mc0, tc0 = members[0][0], members[0][1]
    K = len(members)
    device = resolve_device(tc0.device)
    check_memory(mc0, tc0.replace(batch_size=tc0.batch_size * K), 1, device)
    for mc, tc, _ in members:
        check_configs(mc, tc, 1)
    modes = [check_out_dir(Path(out), mc, tc, resume=resume, overwrite=overwrite) for mc, tc, out in members]
    if resume and len(set(modes)) > 1:
        raise ValueError("resume: some members' folders hold runs and others do not "
                         f"({', '.join(f'{Path(o).name}: {md}' for (_, _, o), md in zip(members, modes))}); "
                         "resume them one by one with train(..., resume=True)")
    if stop_at is not None and not 0 <= stop_at <= tc0.steps:
        raise ValueError(f"stop_at: must lie in [0, steps={tc0.steps}], got {stop_at}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                if device.type == "cuda" and tc0.dtype in ("auto", "bfloat16") else contextlib.nullcontext())

    built = []
    for i, (mc, tc, out) in enumerate(members):
        torch.manual_seed(tc.seed)  # exactly train()'s initialisation
        model = HybridLM(mc).to(device)
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        built.append(_Member(i, mc, tc, Path(out), model, rng))
    order = sorted(built, key=lambda m: tuple(
        (w if w is not None and w < tc0.context_len else tc0.context_len)
        for w in (m.model_cfg.layer_window(l) for l in range(mc0.n_layers))))
    ens = _Ensemble(order, device)

    start = 0
    if modes[0] == "resume":
        start = _resume_step(order)
        for m in order:
            saved = ens.load_member(m, m.out / f"step_{start:06d}")
            m.tokens_seen, m.running = int(saved["tokens_seen"]), list(saved.get("running", m.running))
            m.rng = saved.get("rng", m.rng)
        log(f"resuming {K} ensemble members from step {start}")
    for m, mode in zip(built, modes):
        _prepare_folder(m, mode, start)

    tok_per_step = tc0.batch_size * tc0.context_len
    end = tc0.steps if stop_at is None else stop_at
    clock = {"train_time": 0.0, "t_call": time.time()}

    def tokens_per_s(step):
        return (step - start) * tok_per_step / clock["train_time"] if clock["train_time"] else None

    def evaluate_member(m: _Member, step: int, lm_loss=None):
        metrics = evaluate(m.model, m.cfg) if full_eval else {"lm_loss": lm_loss}
        loss_sum, loss_n, niah_sum, niah_n = m.running
        m.last_metrics = {"step": step, "tokens_seen": m.tokens_seen, "lr": lr_at(m.cfg, max(step - 1, 0)),
                          "train_loss": loss_sum / loss_n if loss_n else None,
                          "train_niah_loss": niah_sum / niah_n if niah_n else None, **metrics,
                          "tokens_per_s": tokens_per_s(step), "time_s": round(clock["train_time"], 3)}
        append_metrics(m.out, m.last_metrics)
        m.running = [0.0, 0, 0.0, 0]

    def after_step(step: int, fresh_start: bool = False) -> None:
        due_eval = [m for m in order if step in m.eval_at]
        due_save = [m for m in order if step in m.ckpt_at or (step == end and not fresh_start)]
        for m in {id(m): m for m in due_eval + due_save}.values():
            ens.sync_member(m)
        lm = ens.lm_losses(lambda m: m.cfg.eval_samples) if due_eval and not full_eval else None
        for m in due_eval:
            evaluate_member(m, step, None if lm is None else lm[order.index(m)])
        lr = lr_at(tc0, step - 1) if step else tc0.lr  # the learning rate train()'s optimizer holds then
        for m in due_save:
            state = {"optimizer": ens.member_optimizer_state(m, lr), "step": step, "tokens_seen": m.tokens_seen,
                     "rng": m.rng, "world_size": 1, "running": list(m.running)}
            save_checkpoint(m.out, step, m.model, train_cfg=m.cfg, tokens_seen=m.tokens_seen, data_seed=m.cfg.seed,
                            train_state=state)

    if start == 0 and modes[0] != "resume":
        after_step(0, fresh_start=True)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=end, initial=start, desc=f"ensemble x{K}", unit="step", dynamic_ncols=True)
    step = start
    try:
        while step < end:
            t0 = time.perf_counter()
            sums = ens.train_step(step, autocast)
            clock["train_time"] += time.perf_counter() - t0
            step += 1
            for m, (loss, niah_sum, niah_n) in zip(order, sums.tolist()):
                m.tokens_seen += tok_per_step
                m.running = [m.running[0] + loss, m.running[1] + 1, m.running[2] + niah_sum, m.running[3] + niah_n]
                m.line = [m.line[0] + loss, m.line[1] + 1]
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(sums[:, 0].mean()):.3f}", refresh=False)
            after_step(step)
            if log_every and bar is None and (step % log_every == 0 or step == end):
                losses = " ".join(f"{m.line[0] / max(m.line[1], 1):.2f}" for m in built)
                log(f"step {step}/{end}  loss {losses}  {format_duration(time.time() - clock['t_call'])}")
                for m in built:
                    m.line = [0.0, 0]
    except KeyboardInterrupt:
        if step > start:  # as train(): save the step reached (a re-save is atomic)
            for m in order:
                ens.sync_member(m)
                state = {"optimizer": ens.member_optimizer_state(m, lr_at(tc0, step - 1)), "step": step,
                         "tokens_seen": m.tokens_seen, "rng": m.rng, "world_size": 1, "running": list(m.running)}
                save_checkpoint(m.out, step, m.model, train_cfg=m.cfg, tokens_seen=m.tokens_seen,
                                data_seed=m.cfg.seed, train_state=state)
            log(f"interrupted: saved step {step} of {K} ensemble members; continue with resume=True")
        raise
    finally:
        if bar is not None:
            bar.close()
    for m in order:
        ens.sync_member(m)
    return [{"out": str(m.out), "step": step, "tokens_seen": m.tokens_seen, "wall_s": clock["train_time"],
             "tokens_per_s": tokens_per_s(step), "final": m.last_metrics, "model": m.model} for m in built]


__all__ = ["train_ensemble", "ensemble_forward", "EnsemblePlan", "check_members", "MODEL_MAY_DIFFER",
           "TRAIN_MAY_DIFFER"]
