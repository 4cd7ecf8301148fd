"""map_in_processes: results in input order from spawned workers, and workers that do not
outlive a caller killed outright (SIGKILL: no chance to terminate them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from retrieval_heads.pipeline.runs import map_in_processes

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def test_results_in_input_order_from_two_workers():
    assert map_in_processes(abs, [-3, 1, -2, 5], workers=2) == [3, 1, 2, 5]
    with pytest.raises(ValueError, match="workers: must be at least 1"):
        map_in_processes(abs, [1], workers=0)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc (Linux)")
def test_workers_exit_when_the_caller_is_killed(tmp_path):
    pids = tmp_path / "pids"
    script = tmp_path / "caller.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from retrieval_heads.pipeline.runs import map_in_processes

        def job(i):
            with open({str(pids)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            time.sleep(120)  # a long job: the worker must not finish it for a dead caller
            return i

        if __name__ == "__main__":
            map_in_processes(job, [0, 1], workers=2)
    """))
    caller = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path)
    deadline = time.time() + 60
    while time.time() < deadline and not (pids.exists() and len(pids.read_text().split()) == 2):
        time.sleep(0.2)
    workers = [int(p) for p in pids.read_text().split()]
    assert len(workers) == 2 and all(_alive(p) for p in workers)
    caller.send_signal(signal.SIGKILL)
    caller.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    left = [p for p in workers if _alive(p)]
    for p in left:  # leave nothing behind even when the test fails
        os.kill(p, signal.SIGKILL)
    assert left == [], "workers outlived their killed caller"
