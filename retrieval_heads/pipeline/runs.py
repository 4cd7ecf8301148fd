"""Training runs end to end: train-then-scan, and many runs at once in worker processes.

    from retrieval_heads.pipeline.runs import train_and_scan, map_in_processes
    res = train_and_scan(model_cfg, train_cfg, "runs/w16", scan_kw={"depths": (0.5,)})
    out = map_in_processes(one_run, jobs, workers=2, threads=1)   # results in the order of jobs

The demo and the analyses share these: one way to train a run and scan it (with its
progress lines when no bar is shown), and one process pool that fails fast (the first
failure, or Ctrl-C, terminates the other workers; their runs resume from their last
checkpoint next time, since checkpoints are written atomically).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

PROGRESS_LINES = 20  # a run trained without a progress bar logs about this many "step k/N" lines


def progress_every(steps: int) -> int:
    """Steps between two ``step k/N  loss ..  niah ..  1m12s`` lines of a run trained without a bar."""
    return max(1, int(steps) // PROGRESS_LINES)


class RunLog:
    """Picklable ``log(msg)`` for worker processes: prints ``[prefix] msg``, flushed, so the
    lines of runs trained at once stay apart (``[window_16] step 400/2000  loss 2.31 ...``)."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def __call__(self, msg) -> None:
        print(f"[{self.prefix}] {msg}", flush=True)


def metrics_frame(run_dir):
    """``RUN/metrics.jsonl`` as a DataFrame (one row per evaluation)."""
    import pandas as pd

    from ..train.loop import read_metrics

    return pd.DataFrame(read_metrics(run_dir))


def train_and_scan(model_cfg, train_cfg, run_dir, *, scan: bool = True, scan_kw: dict | None = None,
                   stop_when_formed: int | None = None, max_steps: int | None = None, progress: bool = False,
                   log=print, log_every: int | None = None, report: bool = False,
                   stop_measure: str | None = None, stop_niah: float | None = None) -> dict:
    """Train (or resume / reuse a finished run in ``run_dir``) and optionally scan it.

    ``stop_when_formed=k`` trains in chunks of ``k`` checkpoints, scanning after each, and stops
    once the run's first full-attention retrieval head has formed and held for ``k`` further
    checkpoints: by the copy score (formation.json's ``run`` entry), or by the formation
    measure ``stop_measure`` ("mass", "copy_tf", "copy": formation.json's ``measures``); the
    schedule (``train_cfg.steps``) is unchanged, the run is
    just cut short (``stopped_early``). ``stop_niah=x`` also requires the trainer's NIAH
    accuracy at that checkpoint (``metrics.jsonl``) to be at least ``x``: an attention pattern
    that has formed but does not retrieve yet can fade again, and stopping on it would record
    a formation that the rest of the budget might have undone. ``max_steps`` stops every run
    after that step (the schedule is still that of ``train_cfg.steps``; a later call with a
    larger cap continues the same run exactly). Returns ``{"run_dir", "train_s", "scan_s", "formation":
    formation.json's "run" entry (or its ``stop_measure`` entry) or None, "stopped_early",
    "metrics": DataFrame}``. A finished
    run with the same configs is reused and the scan's cache makes a re-scan cheap. Without
    ``progress`` bars, training logs a ``step k/N  loss ..`` line every ``log_every`` steps
    (default ``progress_every(train_cfg.steps)``; 0 = none) and each scan ``scanning k/n
    checkpoints`` lines, all through ``log``. ``report`` also writes the run's report.html."""
    from ..train.loop import checkpoint_steps, train
    from .scanner import scan as rh_scan

    run_dir = Path(run_dir)
    res = {"run_dir": str(run_dir), "train_s": 0.0, "scan_s": 0.0, "formation": None, "stopped_early": False}
    if log_every is None:
        log_every = progress_every(train_cfg.steps)
    lines = None if progress else log_every

    def do_scan():
        t = time.time()
        log(f"scanning {run_dir.name}")
        rh_scan(run_dir, progress=progress, echo=(lambda m: None) if progress else log, report=report,
                log_progress=not progress, **(scan_kw or {}))
        res["scan_s"] += time.time() - t
        f = json.loads((run_dir / "scan" / "formation.json").read_text())
        if stop_measure is None:
            res["formation"] = f["run"]
        elif stop_measure in (f.get("measures") or {}):
            res["formation"] = f["measures"][stop_measure]
        else:
            raise ValueError(f"stop_measure: the scan has no formation measure {stop_measure!r}; it has "
                             f"{', '.join(f.get('measures') or {}) or 'none'}")

    def do_train(stop, what):
        t = time.time()
        log(what)
        train(model_cfg, train_cfg, run_dir, resume=True, stop_at=stop, progress=progress, log=log,
              log_every=lines)
        res["train_s"] += time.time() - t

    if not (scan and stop_when_formed):
        cap = min(max_steps, train_cfg.steps) if max_steps else None
        do_train(cap, f"training {run_dir.name}: {train_cfg.steps} steps" + (f" (stop at {cap})" if cap else ""))
        if scan:
            do_scan()
    else:
        ck = [s for s in checkpoint_steps(train_cfg) if s > 0 and (not max_steps or s <= max_steps)]
        if max_steps and max_steps < train_cfg.steps and ck[-1] != max_steps:
            ck.append(max_steps)
        stops = ck[stop_when_formed - 1::stop_when_formed]
        if not stops or stops[-1] != ck[-1]:
            stops.append(ck[-1])
        for stop in stops:
            do_train(stop, f"training {run_dir.name} to step {stop} of {train_cfg.steps}")
            do_scan()
            f = res["formation"]
            held = f.get("step") is not None and sum(1 for s in ck if f["step"] < s <= stop) >= stop_when_formed
            if held and stop_niah is not None:
                held = _last_niah_acc(run_dir) >= stop_niah
            if held:
                res["stopped_early"] = stop < train_cfg.steps
                break
    res["metrics"] = metrics_frame(run_dir)
    return res


def _last_niah_acc(run_dir: Path) -> float:
    """The trainer's NIAH accuracy at the newest evaluation of ``run_dir`` (-1.0 if none)."""
    m = metrics_frame(run_dir)
    if "niah_acc" not in m or m["niah_acc"].dropna().empty:
        return -1.0
    return float(m["niah_acc"].dropna().iloc[-1])


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _init_worker(threads: int | None, parent_pid: int, poll_s: float = 1.0) -> None:
    """A spawned worker's set-up: its torch threads, and a daemon thread that ends the worker
    once its parent is gone (a caller killed with SIGTERM/SIGKILL cannot terminate its workers,
    which would otherwise train on for nobody until their current job ends)."""
    import os
    import threading

    _set_threads(threads)

    def watch():
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def map_in_processes(fn, items, *, workers: int = 1, threads: int | None = None, on_result=None,
                     what: str = "worker") -> list:
    """``[fn(item) for item in items]``, in the order of ``items``.

    ``workers=1``: in this process, one after the other. ``workers=N``: in N spawned processes
    (``fn`` and the items must be picklable: a module-level function), each with ``threads``
    torch threads. ``on_result(result)`` is called as each result arrives (completion order).
    The first failure, or an interrupt, terminates the other workers at once and is re-raised
    here; a worker whose caller was killed outright exits within about a second. A script that
    uses ``workers > 1`` must run under ``if __name__ == "__main__":`` (spawned workers import it)."""
    items = list(items)
    if workers < 1:
        raise ValueError(f"workers: must be at least 1, got {workers}")
    if workers == 1 or len(items) <= 1:
        out = []
        for item in items:
            out.append(fn(item))
            if on_result is not None:
                on_result(out[-1])
        return out
    import multiprocessing as mp
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, as_completed, wait
    from concurrent.futures.process import BrokenProcessPool

    # spawn, not fork: forking a process that has run multi-threaded torch code can hang
    import os

    ex = ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=mp.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads, os.getpid()))
    try:
        futs = [ex.submit(fn, item) for item in items]
        for f in as_completed(futs):
            if f.exception() is not None:
                raise f.exception()
            if on_result is not None:
                on_result(f.result())
        wait(futs, return_when=FIRST_EXCEPTION)
        return [f.result() for f in futs]
    except BrokenProcessPool:
        _stop_workers(ex)
        raise RuntimeError(f"a {what} process died (out of memory, or the calling script lacks "
                           "`if __name__ == '__main__':`); retry with one process (--jobs 1)") from None
    except BaseException:
        _stop_workers(ex)
        raise
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _stop_workers(ex) -> None:
    """Cancel queued jobs and terminate running workers."""
    ex.shutdown(wait=False, cancel_futures=True)
    for p in list((getattr(ex, "_processes", None) or {}).values()):
        if p.is_alive():
            p.terminate()
