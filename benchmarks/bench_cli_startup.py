"""Start-up time of the command line: how long a person waits for `--help`.

    python benchmarks/bench_cli_startup.py               # 15 runs of each command
    python benchmarks/bench_cli_startup.py --repeats 5 --out /tmp/startup.json

Each command runs in a fresh interpreter (``python -c "from retrieval_heads.cli import main;
main()" ARGS``, what the console script does); the figure is the median wall time over
``--repeats`` runs, beside a bare ``python -c pass`` (the interpreter's own start-up) and
``import torch`` (what every command would pay if the entry point imported the library).
Target (issue 13): ``--help`` under 0.5 s on an idle machine. The load average is printed:
on a busy 2-core machine every number here grows.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import write_result  # noqa: E402

ENTRY = "from retrieval_heads.cli import main; main()"
CASES = {
    "python -c pass": ["-c", "pass"],
    "import torch": ["-c", "import torch"],
    "retrieval-heads --help": ["-c", ENTRY, "--help"],
    "retrieval-heads --version": ["-c", ENTRY, "--version"],
    "retrieval-heads scan --help": ["-c", ENTRY, "scan", "--help"],
    "retrieval-heads train --help": ["-c", ENTRY, "train", "--help"],
}
TARGET_S = 0.5


def time_once(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cli_startup.json"))
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    rows = {}
    for name, cmd in CASES.items():
        time_once(cmd)  # warm the file cache
        times = [time_once(cmd) for _ in range(args.repeats)]
        rows[name] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"({os.cpu_count()} cores); {args.repeats} runs each")
    print(f"{'command':32s} {'median':>8s} {'min':>8s} {'max':>8s}")
    for name, r in rows.items():
        print(f"{name:32s} {r['median_s']:8.3f} {r['min_s']:8.3f} {r['max_s']:8.3f}")
    help_s = rows["retrieval-heads --help"]["median_s"]
    verdict = "met" if help_s < TARGET_S else "MISSED"
    print(f"target: --help under {TARGET_S} s: {verdict} ({help_s:.3f} s; "
          f"{rows['import torch']['median_s'] / help_s:.1f}x faster than importing torch)")
    res = {"rows": rows, "target_s": TARGET_S, "help_median_s": help_s, "target_met": help_s < TARGET_S,
           "load_before": load_before, "load_after": load_after, "cpu_count": os.cpu_count(),
           "python": sys.version.split()[0], "machine": platform.machine(), "repeats": args.repeats,
           "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.out:
        write_result(args.out, res)
    return res


if __name__ == "__main__":
    main()
