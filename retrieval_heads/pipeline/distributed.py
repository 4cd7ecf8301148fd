"""A scan sharded over processes, on one machine or several (torch.distributed):

    torchrun --nproc_per_node 2 -m retrieval_heads.pipeline.distributed runs/x --device cpu
    torchrun --nproc_per_node 8 -m retrieval_heads.pipeline.distributed runs/x --device cuda --out scans/x
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-endpoint HOST:29500 -m retrieval_heads.pipeline.distributed runs/x

Rank 0 does everything ``rh.scan`` does (read and check the run, take the lock on the scan folder,
plan what is not cached, assemble and write the tables, the report) and hands the planned
checkpoints round-robin to the ranks (``jobs[rank::world]``); each rank scores its share on its
own device (``--device cuda``: ``cuda:LOCAL_RANK``, one GPU per rank; ``cpu``: one CPU process
per rank) and sends the cache entries back to rank 0, which writes them under its lock, as
the process pool of ``rh.scan(workers=N)`` does. No other rank writes a file, so the tables,
the cache and the lock rules are those of a serial scan and the tables equal its tables.
Every rank reads the checkpoints by path: across machines the run folder must be on a shared
file system. Objects travel over gloo (``--backend``), which needs no GPU; the ranks exchange
only the job list and the JSON cache entries. A rank that fails sends its error to rank 0,
which reports it (exit 2); a checkpoint that cannot be read is skipped as in a serial scan
(exit 1). Without torchrun (no ``WORLD_SIZE``) it is a serial scan.

The module is named ``pipeline.distributed``, not ``retrieval_heads.scan``: that name is the
``rh.scan`` function.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import traceback
from pathlib import Path

import torch

from . import scanner as S


def _ints(s: str) -> tuple:
    return tuple(int(x) for x in s.split(",") if x.strip())


def _floats(s: str) -> tuple:
    return tuple(float(x) for x in s.split(",") if x.strip())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchrun --nproc_per_node N -m retrieval_heads.pipeline.distributed",
                                description="Scan RUN with its checkpoints sharded over the torchrun ranks; "
                                            "rank 0 writes the tables (the same as `retrieval-heads scan RUN`).")
    p.add_argument("run", help="run folder (RUN/step_XXXXXX checkpoints)")
    p.add_argument("--out", default=None, help="tables, report, cache and lock here [default: RUN/scan]")
    p.add_argument("--variant", default="single_1")
    p.add_argument("--context-lens", type=_ints, default=None, help="comma-separated [default: training length]")
    p.add_argument("--depths", type=_floats, default=(0.1, 0.3, 0.5, 0.7, 0.9))
    p.add_argument("--n-per-cell", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--haystack", default=None)
    p.add_argument("--tasks", default=None, help="RULER-format .jsonl instead of generated needles")
    p.add_argument("--compat", choices=["ours", "thunlp", "wu"], default=None)
    p.add_argument("--recurrent", action="store_true")
    p.add_argument("--all-samples", action="store_true")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--reference", default="first")
    p.add_argument("--threshold", type=float, default=0.1)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--force", action="store_true")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu, cuda (cuda:LOCAL_RANK per rank) or auto [default: cpu]")
    p.add_argument("--dtype", default=None, help="float32 (default) or bf16")
    p.add_argument("--backend", default="gloo", help="torch.distributed backend of the object exchange")
    p.add_argument("--timeout-min", type=float, default=24 * 60,
                   help="longest wait of a rank for the others (a share of a long scan) [default: 1440]")
    return p


def _settings(a) -> S.ScanSettings:
    return S.ScanSettings(variant=a.variant, context_lens=a.context_lens, depths=a.depths, n_per_cell=a.n_per_cell,
                          seed=a.seed, haystack=a.haystack, tasks=a.tasks, compat=a.compat, recurrent=a.recurrent,
                          only_correct=not a.all_samples, max_new_tokens=a.max_new_tokens, dtype=a.dtype)


def _echo(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _RankFailed(Exception):
    """A rank's scoring raised (its traceback is the message)."""


def _score_share(jobs: list[dict], device: torch.device, rank: int) -> tuple[list[dict], str | None]:
    """Score this rank's jobs on its device; (results, the traceback of a failure or None)."""
    out = []
    for j in jobs:
        j = dict(j, device=str(device), deliver=True)
        try:
            out.append(S.score_checkpoint(j))
        except Exception:  # reported by rank 0; the collectives must still be met
            return out, f"rank {rank} ({device}), {Path(j['path']).name}:\n{traceback.format_exc()}"
        _echo(f"rank {rank}: {Path(j['path']).name} {'skipped' if out[-1]['error'] else 'done'}")
    return out, None


def _lead(a, device: torch.device, world: int) -> int:
    """Rank 0: the serial scan, with the scoring of the planned jobs shared by the ranks."""
    import torch.distributed as dist

    sent = [False]

    def executor(source, jobs):
        if world > 1:
            dist.broadcast_object_list([{"jobs": jobs}], src=0)
        sent[0] = True
        own = _score_share(jobs[0::world], device, 0)
        got = [own]
        if world > 1:  # every share is in before anything is written: no rank is left waiting
            got = [None] * world
            dist.gather_object(own, got, dst=0)
        for results, _ in got:  # written by the scan as they come, under its lock
            yield from results
        failures = [f for _, f in got if f]
        if failures:  # after the others' entries are written: a re-run scores only what is missing
            raise _RankFailed(failures[0])

    try:
        settings = _settings(a)
        df = S.run_scan(S.NativeRun(a.run, device=device), settings, reference=a.reference, threshold=a.threshold,
                        batch_size=a.batch_size, progress=False, force=a.force, report=not a.no_report, echo=_echo,
                        scan_dir=a.out, log_progress=True, causal=a.causal, executor=executor)
    except (ValueError, OSError) as e:
        _abort(sent, world, str(e))
        _echo(f"error: {' '.join(str(e).split())}")
        return 2
    except _RankFailed as e:
        _echo(f"error: scoring failed on a rank (the entries scored were cached; scan again): {e}")
        return 2
    except BaseException as e:
        _abort(sent, world, f"{type(e).__name__}: {e}")
        raise
    info = df.attrs["scan"]
    print(f"{info['n_checkpoints']} checkpoint(s): {info['n_scored']} scored on {world} rank(s), "
          f"{info['n_cached']} cached, {info['n_skipped']} skipped"
          + (" (tables unchanged)" if info["unchanged"] else ""))
    f = info["formation"]
    if f["step"] is not None:
        from ..labels import head_label

        print(f"first full-attention retrieval head: {head_label(f['layer'], f['head'])} at step {f['step']} "
              f"({f['tokens_seen']:,} tokens)")
    else:
        print(f"no full-attention retrieval head formed (copy >= {a.threshold})")
    print(f"tables: {info['scan_dir']}")
    if info["n_skipped"]:
        _echo(f"error: {info['n_skipped']} checkpoint(s) could not be read and were skipped")
        return 1
    return 0


def _abort(sent: list, world: int, why: str) -> None:
    """Rank 0 failed before handing out the jobs: tell the others, who are waiting for them."""
    if world > 1 and not sent[0]:
        import torch.distributed as dist

        sent[0] = True
        dist.broadcast_object_list([{"abort": why}], src=0)


def _follow(device: torch.device, rank: int, world: int) -> int:
    """Rank > 0: wait for the job list, score this rank's share, send the results to rank 0."""
    import torch.distributed as dist

    box = [None]
    dist.broadcast_object_list(box, src=0)
    if "abort" in box[0]:
        return 2  # rank 0 prints why
    results, failed = _score_share(box[0]["jobs"][rank::world], device, rank)
    dist.gather_object((results, failed), None, dst=0)
    return 2 if failed else 0


def main(argv=None) -> int:
    from ..train.loop import dist_env

    a = parser().parse_args(argv)
    rank, world, local_rank = dist_env()
    try:  # on every rank, before the group forms: a bad option fails everywhere, nothing waits
        device = S.scan_device(a.device, local_rank)
        S.scan_dtype(a.dtype)
    except ValueError as e:
        if rank == 0:
            _echo(f"error: {e}")
        return 2
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world == 1:
        return _lead(a, device, 1)
    import torch.distributed as dist

    dist.init_process_group(a.backend, timeout=datetime.timedelta(minutes=a.timeout_min))
    try:
        return _lead(a, device, world) if rank == 0 else _follow(device, rank, world)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
