"""The training loop: AdamW, linear warm-up + cosine decay, gradient clipping and
accumulation, bf16 autocast on CUDA, periodic NIAH / LM-loss evaluation, checkpoints on a
log-spaced + regular schedule, exact resume, and torchrun DDP.

How to run (a tiny CPU example; a few minutes on 2 cores)::

    retrieval-heads train --preset tiny --out runs/tiny
    retrieval-heads train --preset tiny --out runs/tiny --resume          # continue it
    torchrun --nproc_per_node 2 -m retrieval_heads.train --preset tiny --out runs/tiny2

Batch semantics (DDP and accumulation): ``TrainConfig.batch_size`` is the **global** batch
of one optimizer step. It is split into ``world_size × grad_accum`` micro-batches of
``batch_size / (world_size × grad_accum)`` rows; rank ``r`` runs micro-batches
``m·world_size + r``. The data of a step does not depend on how it is split, so 2 processes,
1 process with ``grad_accum=2`` and 1 process with ``grad_accum=1`` see the same rows and
follow the same trajectory: 2 CPU processes are bit-identical to 1 process with
``grad_accum=2`` (same rows per forward, same thread count), and equal to ``grad_accum=1`` up
to float summation order (tested in tests/train/test_train.py). The progress bar, evaluation,
metrics and checkpoints are rank 0's.

Resume: the data of a step is a pure function of (config, step) and each checkpoint carries
the optimizer state, the RNG state and the running loss sums, so training N steps, stopping
(``stop_at``, Ctrl-C, a crash after a checkpoint) and resuming gives bit-identical weights on
CPU. ``--resume`` continues from the newest checkpoint that has ``train_state.pt``; it may
change ``RESUME_MAY_CHANGE`` (steps, device, evaluation/checkpoint cadence), anything else
makes it a different run, which is refused unless ``--overwrite``. A folder that holds no
run is never deleted.

Interruptions leave no trace: a resumed run ends with exactly the checkpoints (``step_*``
folders, weights) and metrics rows of an uninterrupted one. Ctrl-C at a step off the
checkpoint schedule saves into the hidden ``RUN/.resume/step_XXXXXX`` (``--resume`` reads it,
``list_checkpoints`` never shows it); ``stop_at`` off the schedule saves a visible checkpoint
marked ``extra.resume_only`` in its config.json. Both are removed once a later checkpoint is
saved. Ctrl-C inside an evaluation saves the step without its metrics row; ``--resume``
sees the row missing and runs that evaluation (fixed seeds: the same row) before going on.
SIGINT is held back while an optimizer step is applied, so a save never catches weights
half-updated.

Run folder::

    RUN/run.json            {"model": ModelConfig, "train": TrainConfig}
    RUN/metrics.jsonl       one JSON object per evaluation (step, tokens_seen, lr, train_loss,
                            lm_loss, niah_acc, tokens_per_s, time_s)
    RUN/step_XXXXXX/        checkpoints (weights after XXXXXX optimizer steps; step 0 = init)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ModelConfig, TrainConfig
from ..labels import format_duration
from ..storage.files import exclusive_lock, write_text
from ..tasks import TOKENIZER, niah_batch
from ..tasks.mixture import check_mixture, eval_lm_batch, row_loss, training_batch
from ..storage.checkpoint import (
    check_optimizer_state,
    clean_partial_checkpoints,
    list_checkpoints,
    load_checkpoint,
    load_train_state,
    read_meta,
    save_checkpoint,
    step_dir,
)

RUN_FILE = "run.json"
# TrainConfig fields a resumed run may change (the others would make it a different run);
# a new ``steps`` stretches the cosine schedule from the resume point on.
RESUME_MAY_CHANGE = ("steps", "device", "eval_every", "eval_samples", "save_every", "save_log_spaced",
                     "compile")
METRICS_FILE = "metrics.jsonl"
RESUME_DIR = ".resume"  # hidden: the checkpoints of interruptions at steps off the schedule
RESUME_ONLY = "resume_only"  # config.json "extra" key of a visible checkpoint off the schedule (stop_at)


# ----------------------------------------------------------------------------- schedules
def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of the update that turns step ``step`` into ``step + 1`` (0-based).

    A linear warmup over ``warmup_steps``, then ``lr_schedule``: ``"cosine"`` decays from
    ``lr`` to ``lr * min_lr_ratio`` over the remaining steps; ``"wsd"`` (warmup-stable-decay)
    holds ``lr`` and decays linearly to ``lr * min_lr_ratio`` over the last ``decay_fraction``
    of the steps (the first ``steps * (1 - decay_fraction)`` steps are those of a constant-LR
    run). ``min_lr_ratio = 1`` is a constant learning rate with either."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "wsd":
        start = max(cfg.warmup_steps, round(cfg.steps * (1 - cfg.decay_fraction)))
        if step < start:
            return cfg.lr
        progress = min((step - start + 1) / max(cfg.steps - start, 1), 1.0)
        return cfg.lr * (1 - (1 - cfg.min_lr_ratio) * progress)
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    ratio = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * ratio


def checkpoint_steps(cfg: TrainConfig) -> list[int]:
    """Steps that get a checkpoint: 0, every ``save_every``, the last step, and (when
    ``save_log_spaced``) round(2^(k/2)) below ``save_every`` (1, 2, 3, 4, 6, 8, 11, 16, ...)."""
    steps = {0, cfg.steps, *range(cfg.save_every, cfg.steps + 1, cfg.save_every)}
    if cfg.save_log_spaced:
        k = 0
        while (v := round(2 ** (k / 2))) < min(cfg.save_every, cfg.steps):
            steps.add(v)
            k += 1
    return sorted(steps)


def eval_steps(cfg: TrainConfig) -> list[int]:
    """Steps that get an evaluation: every ``eval_every``, every checkpoint step."""
    return sorted({*range(0, cfg.steps + 1, cfg.eval_every), *checkpoint_steps(cfg)})


# ----------------------------------------------------------------------------- devices, DDP
def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {name!r} requested but CUDA is not available; use --device cpu")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    elif dev.type != "cpu":
        raise ValueError(f"device: {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return dev


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (0, 1, 0 without it)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


# ----------------------------------------------------------------------------- checks
def check_configs(model_cfg: ModelConfig, cfg: TrainConfig, world_size: int = 1) -> None:
    """Raise ``ValueError`` for any combination that cannot train; called before writing."""
    if "S" in model_cfg.layout and model_cfg.window > cfg.context_len:
        raise ValueError(f"window: {model_cfg.window} is larger than the context length "
                         f"{cfg.context_len}; a sliding window cannot exceed the context")
    from ..tasks.mixture import answer_reserve

    need = cfg.context_len + answer_reserve(cfg.niah_variant)
    if model_cfg.max_seq_len < need:
        raise ValueError(f"max_seq_len: {model_cfg.max_seq_len} is too small for context_len "
                         f"{cfg.context_len} plus the generated answer; use >= {need}")
    split = world_size * cfg.grad_accum
    if cfg.batch_size % split:
        raise ValueError(f"batch_size: {cfg.batch_size} (the global batch) is not divisible by "
                         f"world_size × grad_accum = {world_size} × {cfg.grad_accum}")
    check_mixture(cfg)


def check_memory(model_cfg: ModelConfig, cfg: TrainConfig, world_size: int = 1,
                 device: torch.device | str = "cpu") -> None:
    """``ValueError`` when a micro-batch cannot fit in memory even by a generous lower bound
    (its logits and their gradient, one residual stream per layer): an absurd context length
    fails here, before anything is written, instead of in the middle of the first step."""
    device = torch.device(device)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):  # not available on this OS: no check
            return
    bytes_per = 2 if device.type == "cuda" else 4  # bf16 autocast at best
    rows = max(cfg.batch_size // max(world_size * cfg.grad_accum, 1), 1)
    per_token = 2 * model_cfg.vocab_size + 2 * model_cfg.n_layers * model_cfg.d_model
    need = bytes_per * cfg.context_len * max(rows * per_token, cfg.eval_samples * model_cfg.vocab_size)
    if need > total:
        raise ValueError(f"context_len: {cfg.context_len} tokens x {rows} rows per micro-batch need more than "
                         f"{need / 2**30:,.1f} GiB of activations, more than the {total / 2**30:,.1f} GiB of "
                         f"{device.type}; use a shorter --context-len, a smaller --batch-size or a larger "
                         "--grad-accum")


def _looks_like_run(path: Path) -> bool:
    return (path / RUN_FILE).exists() or (path / METRICS_FILE).exists() or any(
        p.name.startswith("step_") for p in path.iterdir())


def check_out_dir(out: Path, model_cfg: ModelConfig, cfg: TrainConfig, *, resume: bool,
                  overwrite: bool) -> str:
    """Decide what to do with ``out`` without touching it: 'new', 'resume' or 'overwrite'."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other; pick one")
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} exists and is not a folder")
    if not out.exists() or all(p.name.startswith((".tmp_", ".tmp-")) or p.name == LOCK_FILE for p in out.iterdir()):
        return "new"  # empty, or only what a process killed before its first write left
    if not _looks_like_run(out):
        raise ValueError(f"out: {out} is not empty and holds no retrieval-heads run; "
                         "choose another --out (it is never deleted)")
    if overwrite:
        return "overwrite"
    try:
        saved = json.loads((out / RUN_FILE).read_text())
        same_model = ModelConfig.from_dict(saved["model"]) == model_cfg
        saved_train = TrainConfig.from_dict(saved["train"])
    except (OSError, KeyError, ValueError, TypeError):
        raise ValueError(f"out: {out} holds a run whose {RUN_FILE} is missing or unreadable; "
                         "pass --overwrite to replace it") from None
    diff = [k for k, v in cfg.to_dict().items() if k not in RESUME_MAY_CHANGE and getattr(saved_train, k) != v]
    if not same_model or diff:
        what = ", ".join(["model"] * (not same_model) + diff)
        raise ValueError(f"out: {out} holds a different run (differs in: {what}); "
                         "pass --overwrite to replace it or choose another --out")
    if not resume:
        raise ValueError(f"out: {out} already holds this run; pass --resume to continue it "
                         "or --overwrite to start again")
    return "resume"


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, cfg: TrainConfig, n: int | None = None) -> dict:
    """NIAH accuracy (greedy decoding + string_match_all, ``eval.niah_scores``) on ``n`` prompts
    of ``cfg.context_len`` tokens at evenly spread depths, and the LM loss on held-out text."""
    from ..eval.niah import greedy_answers, niah_scores  # here: eval imports pandas, training needs it only here

    n = n or cfg.eval_samples
    was_training = model.training
    model.eval()
    batch = niah_batch(n=n, context_len=cfg.context_len, seed=10_000 + cfg.seed,
                       variant=cfg.niah_variant, haystack=cfg.niah_haystack)
    max_new = max(len(s.answer_tokens) for s in batch.samples) + 1
    acc = niah_scores(greedy_answers(model, batch, max_new, batch_size=n), batch.samples).accuracy
    tok_acc = _answer_token_accuracy(model, batch, max_new)
    lm = eval_lm_batch(cfg, n)
    dev = model.device
    logits = model(lm.tokens.to(dev))
    lm_loss = row_loss(logits, lm.targets.to(dev), lm.weights.to(dev)).mean().item()
    model.train(was_training)
    return {"niah_acc": acc, "niah_token_acc": tok_acc, "lm_loss": lm_loss}


def _answer_token_accuracy(model, batch, max_new: int) -> float:
    """Teacher-forced accuracy of every answer token (shows partial progress; EOS not counted)."""
    n, T = batch.tokens.shape
    dev = model.device
    ans = torch.full((n, max_new), TOKENIZER.PAD, dtype=torch.long)
    for i, s in enumerate(batch.samples):
        ans[i, : len(s.answer_tokens)] = torch.tensor(s.answer_tokens)
    logits = model(torch.cat([batch.tokens, ans], 1).to(dev))[:, T - 1: T - 1 + max_new]  # (n, A, V)
    mask = (ans != TOKENIZER.PAD).to(dev)
    return ((logits.argmax(-1) == ans.to(dev)) & mask).sum().item() / mask.sum().item()


# ----------------------------------------------------------------------------- training
def _optimizer(model, cfg: TrainConfig):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


@contextlib.contextmanager
def _sigint_deferred():
    """Hold a Ctrl-C back until the block is done (then raise ``KeyboardInterrupt``), so that
    what the block changes together (weights and step count, a metrics row and the loss sums)
    is never caught half done by the save that Ctrl-C makes. Only in the main thread, and only
    when SIGINT has Python's default handler."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *a: caught.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _metric_steps(out: Path) -> set[int]:
    """The steps that have a metrics row (a partial last line does not count)."""
    steps = set()
    with contextlib.suppress(OSError):
        for line in (out / METRICS_FILE).read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                steps.add(int(json.loads(line)["step"]))
    return steps


def _is_resume_only(ckpt: Path) -> bool:
    """Whether a visible checkpoint was saved off the schedule (``stop_at``), to be removed
    once the run has passed it."""
    try:
        return bool((json.loads((ckpt / "config.json").read_text()).get("extra") or {}).get(RESUME_ONLY))
    except (OSError, ValueError, AttributeError):
        return False


def _remove_checkpoint(ckpt: Path) -> None:
    """Take a checkpoint out of sight at once (a rename into a hidden ``.tmp_step_*`` folder,
    which ``clean_partial_checkpoints`` removes should this process die), then delete it."""
    trash = Path(tempfile.mkdtemp(prefix=f".tmp_{ckpt.name}_", dir=ckpt.parent))
    os.rename(ckpt, trash / "ckpt")
    shutil.rmtree(trash, ignore_errors=True)


def _drop_passed(out: Path, step: int, visible: bool) -> None:
    """Remove the resume-only checkpoints a run no longer needs, having a checkpoint at
    ``step`` (``visible``: a ``step_*`` one): hidden ``.resume/step_*`` ones before ``step``
    (and at it, when ``visible``) and visible ones marked ``resume_only`` before ``step``."""
    hidden = out / RESUME_DIR
    if hidden.is_dir():
        for ck in list_checkpoints(hidden):
            s = int(ck.name.split("_")[1])
            if s < step or (visible and s == step):
                _remove_checkpoint(ck)
        with contextlib.suppress(OSError):
            hidden.rmdir()  # only when empty
    for ck in list_checkpoints(out):
        if int(ck.name.split("_")[1]) < step and _is_resume_only(ck):
            _remove_checkpoint(ck)


def append_metrics(out: Path, row: dict) -> None:
    """Append one evaluation row to ``RUN/metrics.jsonl``."""
    with open(out / METRICS_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")


def truncate_metrics(out: Path, step: int) -> None:
    """Keep the rows up to ``step``; a partial last line (a process killed mid-append) is dropped."""
    f = out / METRICS_FILE
    if f.exists():
        rows = []
        for line in f.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    rows.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        write_text(f, "".join(r + "\n" for r in rows))


def progress_line(step: int, end: int, loss: float | None, niah: float | None, elapsed: float) -> str:
    """The periodic line of a run trained without a progress bar:
    ``step 400/2000  loss 2.31  niah 0.00  1m12s``."""
    loss_s = f"{loss:.2f}" if loss is not None else "-"
    niah_s = f"{niah:.2f}" if niah is not None else "-"
    return f"step {step}/{end}  loss {loss_s}  niah {niah_s}  {format_duration(elapsed)}"


LOCK_FILE = ".train.lock"  # held by the process training into a run folder


def train(model_cfg: ModelConfig, cfg: TrainConfig, out: str | Path, *, resume: bool = False,
          overwrite: bool = False, stop_at: int | None = None, progress: bool = True,
          log=print, log_every: int | None = None) -> dict:
    """Train ``HybridLM(model_cfg)`` with ``cfg`` into the run folder ``out``.

    ``resume`` continues from the last checkpoint of ``out`` holding optimizer state (a new
    run when ``out`` is empty); ``overwrite`` replaces a run in ``out``; ``stop_at`` stops
    after that step (with a checkpoint), as if interrupted. ``log_every=N`` (with the progress
    bar off) calls ``log`` every N steps and at the last one with ``progress_line``'s
    ``step 400/2000  loss 2.31  niah 0.00  1m12s`` (mean training loss since the previous line,
    NIAH accuracy of the latest evaluation, wall time since the call); for runs trained in
    worker processes, where a bar is unreadable. Under torchrun every rank calls
    this; rank 0 writes. Returns ``{"step", "tokens_seen", "wall_s" (training time, without
    evaluation and checkpoints), "tokens_per_s", "final": last eval metrics, "out", "model"}``.
    """
    out = Path(out)
    rank, world, local_rank = dist_env()
    device = resolve_device(cfg.device, local_rank)
    check_memory(model_cfg, cfg, world, device)  # first: the other checks build sample rows
    check_configs(model_cfg, cfg, world)
    mode = check_out_dir(out, model_cfg, cfg, resume=resume, overwrite=overwrite)
    if stop_at is not None and not 0 <= stop_at <= cfg.steps:
        raise ValueError(f"stop_at: must lie in [0, steps={cfg.steps}], got {stop_at}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    own_group = world > 1 and not torch.distributed.is_initialized()
    if own_group:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    busy = (f"out: another training process is writing {out} (it holds {out / LOCK_FILE}); wait for it "
            "to finish, or train into another folder")
    try:
        with exclusive_lock(out / LOCK_FILE, busy) if rank == 0 else contextlib.nullcontext():
            return _train(model_cfg, cfg, out, mode, rank, world, device, stop_at, progress, log, log_every)
    finally:
        if own_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # else gloo may abort the process at exit


@dataclass
class TrainerState:
    """What one ``train`` call updates as it goes (each rank its own; rank 0's is saved).

    ``loss_sum``/``loss_n`` (per-step mean training loss) and ``niah_sum``/``niah_n`` (needle-row
    loss, summed over rows) are the sums since the last evaluation; checkpoints carry them as
    ``running``, so a resumed run logs the same ``train_loss``. ``line_sum``/``line_n``: the
    training loss since the last progress line."""

    step: int = 0
    tokens_seen: int = 0
    start: int = 0  # the step this call began at
    loss_sum: float = 0.0
    loss_n: int = 0
    niah_sum: float = 0.0
    niah_n: float = 0
    train_time: float = 0.0  # seconds spent in training steps (no evaluation, no checkpoints)
    line_sum: float = 0.0
    line_n: int = 0
    last_metrics: dict = field(default_factory=dict)  # the latest evaluation's metrics row

    @property
    def running(self) -> list:
        """``[loss_sum, loss_n, niah_sum, niah_n]``, as ``train_state.pt`` stores them."""
        return [self.loss_sum, self.loss_n, self.niah_sum, self.niah_n]

    @running.setter
    def running(self, sums) -> None:
        self.loss_sum, self.loss_n, self.niah_sum, self.niah_n = sums

    def record_step(self, loss: float, niah_sum: float, niah_n: float, tokens: int, dt: float) -> None:
        """Count one optimizer step of mean loss ``loss`` over ``tokens`` tokens in ``dt`` seconds."""
        self.niah_sum, self.niah_n = self.niah_sum + niah_sum, self.niah_n + niah_n
        self.step += 1
        self.tokens_seen += tokens
        self.train_time += dt
        self.loss_sum, self.loss_n = self.loss_sum + loss, self.loss_n + 1

    def tokens_per_s(self, tok_per_step: int) -> float | None:
        return (self.step - self.start) * tok_per_step / self.train_time if self.train_time else None


@dataclass
class _Run:
    """What stays fixed during one ``train`` call: configs, folder, processes, model, optimizer."""

    model_cfg: ModelConfig
    cfg: TrainConfig
    out: Path
    rank: int
    world: int
    device: torch.device
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    end: int  # the step this call stops after
    net: torch.nn.Module = None  # the model, DDP-wrapped under torchrun
    fwd: object = None  # net, compiled when cfg.compile
    autocast: object = None
    resumed_from: Path | None = None  # the checkpoint a resume loaded
    ckpt_at: set = field(init=False)
    eval_at: set = field(init=False)

    def __post_init__(self):
        self.ckpt_at, self.eval_at = set(checkpoint_steps(self.cfg)), set(eval_steps(self.cfg))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def micro_rows(self) -> int:
        return self.cfg.batch_size // (self.world * self.cfg.grad_accum)

    @property
    def tok_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.context_len


def _train(model_cfg, cfg, out, mode, rank, world, device, stop_at, progress, log, log_every=None) -> dict:
    t_call = time.time()
    torch.manual_seed(cfg.seed)
    from ..model import HybridLM

    model = HybridLM(model_cfg).to(device)
    run = _Run(model_cfg, cfg, out, rank, world, device, model, _optimizer(model, cfg),
               end=cfg.steps if stop_at is None else stop_at)
    state, mode = _restore(run, mode, log)
    _barrier(world)
    if run.is_main:
        _prepare_folder(run, mode, state.start)
    _barrier(world)
    _wrap(run)
    _complete_start_step(run, state)
    _loop(run, state, _progress_bar(run, state, progress), log, log_every, t_call)
    _barrier(world)
    return {"out": str(out), "step": state.step, "tokens_seen": state.tokens_seen, "wall_s": state.train_time,
            "tokens_per_s": state.tokens_per_s(run.tok_per_step), "final": state.last_metrics, "model": model}


def _restore(run: _Run, mode: str, log) -> tuple[TrainerState, str]:
    """The state to start from, and the mode: on 'resume', the newest checkpoint holding
    ``train_state.pt`` is loaded into the model, optimizer and RNG (none: a 'new' run)."""
    state = TrainerState()
    ckpts = []
    if mode == "resume":  # the hidden ones of interruptions, then the visible ones (which win a tie)
        for d in (run.out / RESUME_DIR, run.out):
            if d.is_dir():
                ckpts += [p for p in list_checkpoints(d) if (p / "train_state.pt").exists()]
        ckpts.sort(key=lambda p: int(p.name.split("_")[1]))  # stable
    if not ckpts:
        return state, "new" if mode == "resume" else mode
    last = run.resumed_from = ckpts[-1]
    saved = load_train_state(last)  # its structure checked, before anything of the run is rewritten
    check_optimizer_state(last / "train_state.pt", saved["optimizer"], run.opt)
    run.model.load_state_dict(load_checkpoint(last).state_dict())
    run.opt.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"]["torch"])
    if "cuda" in saved["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    state.start = state.step = int(saved["step"])
    state.tokens_seen = int(saved["tokens_seen"])
    state.running = saved.get("running", state.running)
    if run.is_main:
        log(f"resuming {run.out} from step {state.start}")
    return state, mode


def _prepare_folder(run: _Run, mode: str, start: int) -> None:
    """Rank 0: make ``out`` hold this run (emptied on 'overwrite'), drop what a killed save left
    and the metrics rows past the resume point (all of them on a fresh start)."""
    if mode == "overwrite":
        shutil.rmtree(run.out)
    run.out.mkdir(parents=True, exist_ok=True)
    clean_partial_checkpoints(run.out)
    if (run.out / RESUME_DIR).is_dir():
        if mode == "resume":
            clean_partial_checkpoints(run.out / RESUME_DIR)
        else:
            shutil.rmtree(run.out / RESUME_DIR)
    if mode == "resume":
        _drop_passed(run.out, start, visible=run.resumed_from is not None and run.resumed_from.parent == run.out)
    write_text(run.out / RUN_FILE, json.dumps({"model": run.model_cfg.to_dict(), "train": run.cfg.to_dict()},
                                              indent=2, sort_keys=True))
    truncate_metrics(run.out, start if mode == "resume" else -1)  # a fresh start re-evaluates step 0


def _wrap(run: _Run) -> None:
    """DDP under torchrun, ``torch.compile`` when asked, bf16 autocast on CUDA."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    dev = run.device
    run.net = DDP(run.model, device_ids=[dev.index] if dev.type == "cuda" else None) if run.world > 1 else run.model
    run.fwd = torch.compile(run.net) if run.cfg.compile else run.net
    run.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                    if dev.type == "cuda" and run.cfg.dtype in ("auto", "bfloat16") else contextlib.nullcontext())


def _save(run: _Run, state: TrainerState, interrupted: bool = False) -> None:
    """Rank 0: checkpoint the current step with everything an exact resume needs. A step off
    the checkpoint schedule goes to the hidden ``.resume/`` folder (``interrupted``: Ctrl-C) or
    is marked ``resume_only`` (``stop_at``); either is removed once a later step is saved."""
    if not run.is_main:
        return
    step, scheduled = state.step, state.step in run.ckpt_at
    where = run.out / RESUME_DIR if interrupted and not scheduled else run.out
    train_state = {"optimizer": run.opt.state_dict(), "step": step, "tokens_seen": state.tokens_seen,
                   "rng": _rng_state(), "world_size": run.world, "running": state.running}
    save_checkpoint(where, step, run.model, train_cfg=run.cfg, tokens_seen=state.tokens_seen,
                    data_seed=run.cfg.seed, train_state=train_state,
                    extra=None if scheduled or interrupted else {RESUME_ONLY: True})
    _drop_passed(run.out, step, visible=where == run.out)


def _complete_start_step(run: _Run, state: TrainerState) -> None:
    """Rank 0, before the first step of this call: give the start step what an uninterrupted
    run gives it. Its metrics row, when missing (a fresh run's step 0, or Ctrl-C inside the
    step's evaluation: the checkpoint was saved, the row not), is evaluated now (fixed seeds:
    the same row); a row present means the loss sums restarted there. Its scheduled visible
    checkpoint, when missing, re-evaluated, or only a resume-only one, is saved now."""
    if not run.is_main:
        return
    evaluated = state.step in _metric_steps(run.out)
    if evaluated:
        state.running = [0.0, 0, 0.0, 0]
    elif state.step in run.eval_at:
        _maybe_evaluate(run, state)
    visible = step_dir(run.out, state.step)
    if state.step in run.ckpt_at and (not evaluated or not visible.is_dir() or _is_resume_only(visible)):
        _save(run, state)


def _maybe_evaluate(run: _Run, state: TrainerState) -> None:
    """Rank 0, at an evaluation step: evaluate, append the metrics row, restart the loss sums."""
    if not (run.is_main and state.step in run.eval_at):
        return
    step, m = state.step, evaluate(run.model, run.cfg)
    state.last_metrics = {"step": step, "tokens_seen": state.tokens_seen, "lr": lr_at(run.cfg, max(step - 1, 0)),
                          "train_loss": state.loss_sum / state.loss_n if state.loss_n else None,
                          "train_niah_loss": state.niah_sum / state.niah_n if state.niah_n else None, **m,
                          "tokens_per_s": state.tokens_per_s(run.tok_per_step),
                          "time_s": round(state.train_time, 3)}
    with _sigint_deferred():  # the row and the restart of the sums, together
        append_metrics(run.out, state.last_metrics)
        state.running = [0.0, 0, 0.0, 0]


def _progress_bar(run: _Run, state: TrainerState, progress: bool):
    if not (run.is_main and progress):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=run.end, initial=state.start, desc=f"train {run.out.name}", unit="step", dynamic_ncols=True)


def _loop(run: _Run, state: TrainerState, bar, log, log_every: int | None, t_call: float) -> None:
    """Train from ``state.step`` to ``run.end``: step, evaluate, checkpoint, report. Ctrl-C in a
    single process saves the step reached (when past the start) before re-raising."""
    lines = run.is_main and bar is None and bool(log_every) and log_every > 0
    run.model.train()
    try:
        while state.step < run.end:
            t0 = time.perf_counter()
            loss, niah_sum, niah_n = _train_step(run, state.step, lambda *r, t0=t0: state.record_step(
                *r, run.tok_per_step, time.perf_counter() - t0))
            dt = time.perf_counter() - t0
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{run.tok_per_step / dt:,.0f}", refresh=False)
            _maybe_evaluate(run, state)
            if state.step in run.ckpt_at or state.step == run.end:
                _save(run, state)
            if lines:
                _progress_line(run, state, loss, log, log_every, t_call)
    except KeyboardInterrupt:
        if run.world == 1 and state.step > state.start:
            _save(run, state, interrupted=True)
            log(f"interrupted: saved step {state.step} in {run.out}; continue with --resume")
        raise
    finally:
        if bar is not None:
            bar.close()


def _train_step(run: _Run, step: int, commit=None) -> tuple[float, float, float]:
    """One optimizer step (``step`` -> ``step + 1``) over the global batch, split into this rank's
    micro-batches. Returns (mean row loss, sum of needle-row losses, needle rows), all ranks',
    after passing them to ``commit`` (counts the step) while Ctrl-C is held back: the update
    of the weights and the step count are never seen apart."""
    cfg, world, mb = run.cfg, run.world, run.micro_rows
    lr = lr_at(cfg, step)
    for g in run.opt.param_groups:
        g["lr"] = lr
    step_loss = torch.zeros(3, device=run.device)  # sum of row losses, of needle-row losses, needle rows
    for micro in range(cfg.grad_accum):
        chunk = micro * world + run.rank
        b = training_batch(cfg, step, rows=range(chunk * mb, (chunk + 1) * mb))
        sync = (world == 1 or micro == cfg.grad_accum - 1)
        with (contextlib.nullcontext() if sync else run.net.no_sync()):
            with run.autocast:
                logits = run.fwd(b.tokens.to(run.device))  # (mb, T, vocab)
            losses = row_loss(logits, b.targets.to(run.device), b.weights.to(run.device))  # (mb,)
            (losses.sum() * world / cfg.batch_size).backward()
        nd = b.is_needle.to(run.device)
        step_loss += torch.stack([losses.detach().sum(), losses.detach()[nd].sum(), nd.sum()])
    with _sigint_deferred():
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
        run.opt.step()
        run.opt.zero_grad(set_to_none=True)
        if world > 1:
            torch.distributed.all_reduce(step_loss)
        result = step_loss[0].item() / cfg.batch_size, step_loss[1].item(), step_loss[2].item()
        if commit is not None:
            commit(*result)
    return result


def _progress_line(run: _Run, state: TrainerState, loss: float, log, log_every: int, t_call: float) -> None:
    """Add the step's loss to the line's sums; every ``log_every`` steps and at the end, log the line."""
    state.line_sum, state.line_n = state.line_sum + loss, state.line_n + 1
    if state.step % log_every == 0 or state.step == run.end:
        log(progress_line(state.step, run.end, state.line_sum / state.line_n, state.last_metrics.get("niah_acc"),
                          time.time() - t_call))
        state.line_sum, state.line_n = 0.0, 0


def read_metrics(run: str | Path) -> list[dict]:
    """The rows of ``RUN/metrics.jsonl``."""
    f = Path(run) / METRICS_FILE
    if not f.exists():
        raise FileNotFoundError(f"{f}: no metrics (is {run} a training run?)")
    return [json.loads(l) for l in f.read_text().splitlines() if l.strip()]


__all__ = ["train", "format_duration", "progress_line", "evaluate", "lr_at", "checkpoint_steps", "eval_steps",
           "check_configs", "check_memory", "check_out_dir", "read_metrics", "resolve_device", "read_meta"]
