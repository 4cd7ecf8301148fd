"""One library logger, ``retrieval_heads``: quiet in library use (a NullHandler, no lastResort
output), ``-v`` / ``-q`` on the command line. Progress lines printed by commands are unchanged."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval_heads.cli import main

TINY_DEEP = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_deep" / "step_001600"
DATA = Path(__file__).resolve().parents[2] / "data"


def test_library_logger_is_quiet_by_default():
    code = ("import logging, retrieval_heads\n"
            "logging.getLogger('retrieval_heads.model.recurrence').warning('should not print')\n"
            "print([type(h).__name__ for h in logging.getLogger('retrieval_heads').handlers])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "" and r.stdout.strip() == "['NullHandler']"


@pytest.mark.parametrize("flags, shown", [((), False), (("-v",), True), (("-q",), False)])
def test_cli_verbose_shows_the_librarys_info_lines(tmp_path, capsys, flags, shown):
    f = tmp_path / "t.jsonl"
    recs = [json.loads(x) for x in (DATA / "ruler_niah_single_1.jsonl").read_text().splitlines()][:1]
    recs.append(dict(recs[0], index=1, outputs=["0000000"]))
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    try:
        with pytest.raises(SystemExit) as e:
            main([*flags, "eval", str(TINY_DEEP), "--tasks", str(f), "--loss-rows", "1", "--no-progress"])
        assert e.value.code in (0, None)
        out, err = capsys.readouterr()
        assert f"tasks {f}: accuracy" in out  # the command's own output, whatever the flags
        info = [x for x in err.splitlines() if x.startswith("INFO: ")]
        assert bool(info) == shown
        if shown:
            assert f"INFO: tasks {f}: 2 record(s), 1 with located answers, 1 not located" in err
    finally:
        logging.getLogger("retrieval_heads").setLevel(logging.NOTSET)
