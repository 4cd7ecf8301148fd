"""Several seeds per analysis: running them, and summarising what they give (issue 20).

An analysis run on one seed shows one draw of its result; these helpers report every seed and
the spread, and never average away an arm that did not learn.

Aggregation (pure numpy / pandas through :mod:`retrieval_heads.stats`; no model code):

- :func:`summarize_values`: per arm and metric, every seed's value, the mean, a seeded 95%
  percentile bootstrap interval of the mean (``stats.bootstrap_ci``) and ``n``;
- :func:`summarize_learning`: "step at which the arm learned" where an arm may not learn: the
  count that learned (``k/n``), the Kaplan-Meier median (``stats.km_median``; a seed that never
  learned is censored at its budget, never given a made-up step), each seed's share of its
  budget, and "not learned by step N" for the censored ones;
- :func:`paired_relative_difference`: ``(b - a) / a`` per seed (paired: both arms of a seed see
  the same data and prompts), the mean and its bootstrap interval;
- :func:`reproduced`: a verdict string, "reproduced on k of n seeds".

Running: :func:`parse_seeds`, :func:`seeds_from_args` (``--seeds`` with ``--seed`` kept as a
single-seed alias), :func:`seed_jobs` (the per-seed output folders and argument lists; ``{seed}`` in an argument,
e.g. ``--run runs/nope_seed{seed}``, becomes each seed: :func:`fill_seed`) and
:func:`run_in_processes` (each seed in its own spawned process of one torch thread, through
``map_in_processes``; the worker :func:`call_script` imports ``analyses.<script>`` there).

With 3 seeds a bootstrap interval of the mean is crude (it resamples three numbers: its ends are
at most the smallest and largest seed); it is reported with ``n`` so that nobody reads more
into it. The tests are in ``tests/project/test_seed_aggregation.py``.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from retrieval_heads.stats import bootstrap_ci, km_median

LEVEL = 0.95
N_BOOT = 2000
BOOT_SEED = 0
SHARE_LIMIT = 0.7  # issue 20: an arm that should learn does so by at most 70% of its budget


# ----------------------------------------------------------------------------- parsing seeds
def parse_seeds(spec) -> list[int]:
    """``"0,1,2"`` (or ``"0-2"``, or a list) -> ``[0, 1, 2]``; duplicates dropped, order kept.

        >>> parse_seeds("0,1,2"), parse_seeds("3-5"), parse_seeds([2, 2, 1])
        ([0, 1, 2], [3, 4, 5], [2, 1])
    """
    if spec is None:
        return []
    items = spec if isinstance(spec, (list, tuple)) else str(spec).split(",")
    out: list[int] = []
    for it in items:
        it = str(it).strip()
        if not it:
            continue
        lo, dash, hi = it.partition("-")
        try:
            vals = range(int(lo), int(hi) + 1) if dash and lo else [int(it)]
        except ValueError:
            raise ValueError(f"--seeds: expected integers such as 0,1,2 or 0-2, got {it!r}") from None
        for v in vals:
            if v < 0:
                raise ValueError(f"--seeds: seeds must be >= 0, got {v}")
            if v not in out:
                out.append(v)
    return out


def seeds_from_args(a, argv, mode_name: str, quick_default: Sequence[int] = (0, 1, 2),
                    full_default: Sequence[int] = (0, 1, 2)) -> list[int]:
    """The seeds a script runs: ``--seeds`` when given; else ``--seed S`` when given on the
    command line (the single-seed alias); else the mode's default (``quick_default`` in
    ``--quick``, ``full_default`` in the full mode, ``[--seed]`` = ``[0]`` in ``--smoke``)."""
    if getattr(a, "seeds", None):
        seeds = parse_seeds(a.seeds)
        if not seeds:
            raise ValueError("--seeds: no seed given")
        return seeds
    tokens = [str(t) for t in (argv if argv is not None else __import__("sys").argv[1:])]
    if any(t == "--seed" or t.startswith("--seed=") for t in tokens):
        return [int(a.seed)]
    if mode_name == "quick":
        return list(quick_default)
    if mode_name == "full":
        return list(full_default)
    return [int(a.seed)]


def strip_options(argv: Sequence[str], names: Iterable[str]) -> list[str]:
    """``argv`` without the options ``names`` (each taking one value: ``--x V`` or ``--x=V``).

        >>> strip_options(["--quick", "--seeds", "0,1", "--out=o", "--k", "1"], ["--seeds", "--out"])
        ['--quick', '--k', '1']
    """
    names = set(names)
    out, skip = [], False
    for t in argv:
        t = str(t)
        if skip:
            skip = False
            continue
        if t in names:
            skip = True
            continue
        if any(t.startswith(n + "=") for n in names):
            continue
        out.append(t)
    return out


def default_jobs(jobs: int, n_items: int, mode_name: str) -> int:
    """``--jobs``: 0 means one process per item up to the CPU count in ``--quick`` (one torch
    thread each), one at a time in this process in ``--smoke`` (seconds of work: spawning would
    cost more) and in the full mode (one GPU)."""
    if jobs < 0:
        raise ValueError("--jobs must be >= 0 (0 = one per core)")
    if jobs:
        return jobs
    if mode_name != "quick":
        return 1
    return max(1, min(n_items, os.cpu_count() or 1))


def seed_out(out: str | Path, seed: int) -> Path:
    """The output folder of one seed of a multi-seed run: ``OUT/seed_S``."""
    return Path(out) / f"seed_{seed}"


SEED_FIELD = "{seed}"


def fill_seed(text, seed: int) -> str:
    """``text`` with every ``{seed}`` replaced by ``seed``: one command can name a run folder
    per seed, e.g. ``--run runs/nope_seed{seed}`` (a path without ``{seed}`` is every seed's).

        >>> fill_seed("runs/nope_seed{seed}@2000", 2)
        'runs/nope_seed2@2000'
    """
    return str(text).replace(SEED_FIELD, str(int(seed)))


def seed_jobs(script: str, argv: Sequence[str], seeds: Sequence[int], out: str | Path,
              fn: str = "main") -> list[dict]:
    """One job per seed for :func:`call_script`: the script's ``argv`` without ``--seeds``,
    ``--seed``, ``--out`` and ``--jobs``, with ``{seed}`` filled in (:func:`fill_seed`), plus
    ``--seed S --out OUT/seed_S``."""
    base = strip_options(argv, ["--seeds", "--seed", "--out", "--jobs"])
    return [{"script": script, "fn": fn, "seed": int(s),
             "argv": [*(fill_seed(t, s) for t in base), "--seed", str(s), "--out", str(seed_out(out, s))]}
            for s in seeds]


def call_script(job: dict):
    """Worker: ``analyses.<script>.<fn>(job["argv"])`` (``fn`` given the whole job when
    ``job["pass_job"]``). Module-level, so spawned processes can unpickle it."""
    mod = importlib.import_module(f"analyses.{job['script']}")
    f = getattr(mod, job.get("fn", "main"))
    return f(job) if job.get("pass_job") else f(job["argv"])


def run_in_processes(jobs: list[dict], workers: int, what: str, on_result=None) -> list:
    """:func:`call_script` over ``jobs`` in ``workers`` spawned processes of one torch thread
    each (in this process when ``workers`` is 1), results in the order of ``jobs``."""
    from retrieval_heads.pipeline.runs import map_in_processes

    return map_in_processes(call_script, jobs, workers=workers, threads=1, what=what, on_result=on_result)


def run_per_seed(script: str, argv, seeds: Sequence[int], out: str | Path, jobs: int, mode_name: str,
                 main, log=print) -> tuple[list, int]:
    """Run ``analyses/<script>.py`` once per seed, as a one-seed run into ``out/seed_S``: in this
    process through ``main`` when one job at a time, else in spawned processes. Returns the
    one-seed results (in the order of ``seeds``) and the number of processes used."""
    import sys

    args = list(argv) if argv is not None else sys.argv[1:]
    todo = seed_jobs(script, args, seeds, out)
    workers = default_jobs(jobs, len(todo), mode_name)
    log(f"{mode_name}: seeds {list(seeds)}, {workers} at once; each into {Path(out)}/seed_S")
    done = run_in_processes(todo, workers, f"{script} worker") if workers > 1 else [main(j["argv"]) for j in todo]
    return done, workers


# ----------------------------------------------------------------------------- aggregation
def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _as_mapping(values) -> dict:
    if isinstance(values, Mapping):
        return dict(values)
    return dict(enumerate(values))


def summarize_values(values, *, level: float = LEVEL, n_boot: int = N_BOOT, boot_seed: int = BOOT_SEED,
                     digits: int | None = None) -> dict:
    """Every seed's value, the mean over seeds, its percentile bootstrap interval and ``n``.

    ``values``: ``{seed: value}`` (or a sequence, keyed 0..n-1). Missing values (None / NaN)
    are listed per seed but left out of the mean and interval; ``n`` counts the others and
    ``n_missing`` the rest. ``ci_low``/``ci_high`` come from ``stats.bootstrap_ci`` (``n_boot``
    resamples, seeded with ``boot_seed``, so the same numbers give the same interval); all are
    None when no value is present. ``std`` is the sample standard deviation (None for n < 2).

        >>> s = summarize_values({0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 4: 5.0}, n_boot=500)
        >>> s["mean"], (s["ci_low"], s["ci_high"]), s["n"]
        (3.0, (2.0, 4.2), 5)
    """
    vals = _as_mapping(values)
    per_seed = {str(k): (float(v) if _finite(v) else None) for k, v in vals.items()}
    x = np.array([v for v in per_seed.values() if v is not None], dtype=float)
    out = {"per_seed": per_seed, "n": int(x.size), "n_missing": len(per_seed) - int(x.size),
           "mean": None, "ci_low": None, "ci_high": None, "std": None, "level": level}
    if x.size:
        lo, hi = bootstrap_ci(x, np.mean, n=n_boot, level=level, seed=boot_seed)
        out.update(mean=float(x.mean()), ci_low=lo, ci_high=hi,
                   std=float(x.std(ddof=1)) if x.size > 1 else None)
    if digits is not None:
        for k in ("mean", "ci_low", "ci_high", "std"):
            if out[k] is not None:
                out[k] = round(out[k], digits)
    return out


def format_summary(s: dict, fmt: str = "{:.3f}") -> str:
    """``"0.933 [0.800, 1.000] (n=3)"``; ``"- (n=0)"`` when nothing was measured."""
    if s.get("mean") is None:
        return f"- (n={s.get('n', 0)})"
    return (f"{fmt.format(s['mean'])} [{fmt.format(s['ci_low'])}, {fmt.format(s['ci_high'])}] "
            f"(n={s['n']})")


def summarize_learning(steps, budget, *, share_limit: float = SHARE_LIMIT, unit: str = "step") -> dict:
    """The step at which an arm learned, per seed, where some seeds may not have learned.

    ``steps``: ``{seed: step}`` with None (or NaN) for a seed that did not learn within its
    budget; ``budget``: the budget (a number, or ``{seed: budget}``): the step a seed that did
    not learn is censored at. Returns:

    - ``per_seed``: ``{seed: {"learned", "step", "censored_at", "share_of_budget", "text"}}``
      (``text`` "step 1200 (48% of 2500)" or "not learned by step 2500");
    - ``learned`` (k), ``n``, ``learned_text`` ("k/n"), ``within_share`` (seeds that learned by
      ``share_limit`` of their budget), ``share_limit``, ``largest_share`` (None if none learned);
    - ``km_median``: the Kaplan-Meier median step (``stats.km_median``, censored seeds at their
      budget); None when fewer than half are estimated to learn, with ``km_median_text``
      "not reached by step N" then;
    - ``mean_learned``: the mean over the seeds that learned only (a lower bound of the
      mean when some are censored; None if none learned).

        >>> r = summarize_learning({0: 1000, 1: None, 2: 1500}, 2000)
        >>> r["learned_text"], r["km_median"], r["per_seed"]["1"]["text"]
        ('2/3', 1500.0, 'not learned by step 2000')
    """
    vals = _as_mapping(steps)
    if not vals:
        raise ValueError("summarize_learning: no seeds given")
    budgets = {k: float(budget[k] if isinstance(budget, Mapping) else budget) for k in vals}
    per_seed, times, observed = {}, [], []
    for k, v in vals.items():
        b = budgets[k]
        if not math.isfinite(b) or b <= 0:
            raise ValueError(f"summarize_learning: budget of seed {k} must be a positive number, got {b}")
        if _finite(v):
            v = float(v)
            share = v / b
            per_seed[str(k)] = {"learned": True, "step": v, "censored_at": None, "share_of_budget": share,
                                "text": f"{unit} {v:g} ({share:.0%} of {b:g})"}
            times.append(v)
            observed.append(True)
        else:
            per_seed[str(k)] = {"learned": False, "step": None, "censored_at": b, "share_of_budget": None,
                                "text": f"not learned by {unit} {b:g}"}
            times.append(b)
            observed.append(False)
    k_learned = int(sum(observed))
    n = len(observed)
    med = km_median(times, observed)
    shares = [p["share_of_budget"] for p in per_seed.values() if p["learned"]]
    return {"per_seed": per_seed, "learned": k_learned, "n": n, "learned_text": f"{k_learned}/{n}",
            "within_share": int(sum(s <= share_limit + 1e-12 for s in shares)), "share_limit": share_limit,
            "largest_share": max(shares) if shares else None,
            "km_median": med if math.isfinite(med) else None,
            "km_median_text": (f"{unit} {med:g}" if math.isfinite(med)
                               else f"not reached by {unit} {max(times):g}"),
            "mean_learned": float(np.mean([t for t, o in zip(times, observed) if o])) if k_learned else None}


def paired_relative_difference(a, b, *, level: float = LEVEL, n_boot: int = N_BOOT,
                               boot_seed: int = BOOT_SEED) -> dict:
    """``(b - a) / a`` per seed present (finite) in both, its mean and bootstrap interval.

    ``a``, ``b``: ``{seed: value}`` for the two arms (``a`` the reference). The seeds are paired:
    the interval is over the per-seed relative differences, not over the two arms separately.
    Returns ``per_seed`` (relative differences), ``mean``, ``ci_low``, ``ci_high``, ``n``,
    ``std`` (as :func:`summarize_values`) and ``seeds`` (those paired).

        >>> r = paired_relative_difference({0: 2.0, 1: 4.0}, {0: 2.2, 1: 4.0})
        >>> r["per_seed"], r["mean"]
        ({'0': 0.1, '1': 0.0}, 0.05)
    """
    a, b = _as_mapping(a), _as_mapping(b)
    rel = {}
    for k in a:
        if k in b and _finite(a[k]) and _finite(b[k]) and float(a[k]) != 0.0:
            rel[k] = round((float(b[k]) - float(a[k])) / float(a[k]), 12)
    s = summarize_values(rel, level=level, n_boot=n_boot, boot_seed=boot_seed)
    s["seeds"] = [str(k) for k in rel]
    return s


def reproduced(flags, claim: str = "") -> dict:
    """``{seed: bool or None}`` -> ``{"k", "n", "per_seed", "verdict"}`` with ``verdict``
    "reproduced on k of n seeds" (``claim`` prefixed as "CLAIM: ..." when given). A None flag
    (not measurable on that seed) is not counted in n and is named in the verdict.

        >>> reproduced({0: True, 1: False, 2: True})["verdict"]
        'reproduced on 2 of 3 seeds'
    """
    vals = _as_mapping(flags)
    known = {str(k): bool(v) for k, v in vals.items() if v is not None}
    unknown = [str(k) for k, v in vals.items() if v is None]
    k, n = sum(known.values()), len(known)
    text = f"reproduced on {k} of {n} seed{'s' if n != 1 else ''}"
    if unknown:
        text += f" (not measurable on seed{'s' if len(unknown) > 1 else ''} {', '.join(unknown)})"
    if claim:
        text = f"{claim}: {text}"
    return {"k": int(k), "n": int(n), "per_seed": {str(s): (None if v is None else bool(v)) for s, v in vals.items()},
            "verdict": text}
