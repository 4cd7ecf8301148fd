"""Property-based fuzz of checkpoint folders (issue 17), plus eval's atomic outputs and a FIFO
haystack.

A good tiny checkpoint (the last of a two-checkpoint run) is damaged by one random mutation:
a file truncated at a random offset, random bytes flipped, two tensors of the safetensors
swapped (their data only, or data and shape), a config.json value changed (number to string,
huge or negative int, float, nested object, ...) or deleted, or a file replaced by a symlink
(to /dev/zero, a missing path, a folder), a FIFO or a folder. Then ``eval CKPT --out OUT`` and
``scan RUN`` run, each in a forked process with a timeout (a FIFO or a device must never block
or hang a read). Asserted: no traceback; ``eval`` exits 2 with one ``error:`` line naming the
checkpoint (or 0 when the mutation left a checkpoint that still loads); ``scan`` exits 1 with one
``skipped`` line naming the checkpoint (or 0 for a still-valid one); nothing is created, changed
or deleted outside OUT and RUN/scan.

The default runs 25 examples (CI); a long run:

    RH_FUZZ_EXAMPLES=200 OMP_NUM_THREADS=1 pytest tests/reliability/test_reliability_fuzz.py -k fuzz
"""

import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from reliability_util import (EVAL_ARGS, SCAN_ARGS, assert_one_line_error, cli, cli_process, forked_cli,
                              make_run, running, wait_code)

import retrieval_heads as rh

FUZZ_EXAMPLES = int(os.environ.get("RH_FUZZ_EXAMPLES", "25"))
TIMEOUT = float(os.environ.get("RH_FUZZ_TIMEOUT", "120"))  # per command; a hang fails the example
FILES = ["config.json", "model.safetensors"]
SPECIAL = ["symlink_dev_zero", "symlink_missing", "symlink_folder", "fifo", "folder"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """Two good checkpoints, already scanned: a fuzzed scan reuses the good one's cached scores,
    so only the mutated checkpoint costs time."""
    run = make_run(tmp_path_factory.mktemp("rel_fuzz") / "run", steps=(0, 2))
    code = cli_process(["scan", run, *SCAN_ARGS]).returncode
    assert code == 0
    return run


# ---- mutations ---------------------------------------------------------------------------------
json_values = st.one_of(
    st.integers(-2**70, 2**70), st.sampled_from([10**30, -1, -(2**63), 2**31, 2**63, 0]),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(), st.text(max_size=6),
    st.recursive(st.integers(-5, 5) | st.text(max_size=3),
                 lambda v: st.lists(v, max_size=3) | st.dictionaries(st.text(max_size=4), v, max_size=3),
                 max_leaves=5))

mutations = st.one_of(
    st.tuples(st.just("truncate"), st.sampled_from(FILES), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("flip"), st.sampled_from(FILES),
              st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4)),
    st.tuples(st.just("swap_tensors"), st.integers(0, 10**6), st.integers(0, 10**6), st.booleans()),
    st.tuples(st.just("config_set"), st.sampled_from(["model", "top"]), st.integers(0, 10**6), json_values),
    st.tuples(st.just("config_to_string"), st.sampled_from(["model", "top"]), st.integers(0, 10**6)),
    st.tuples(st.just("config_delete"), st.sampled_from(["model", "top"]), st.integers(0, 10**6)),
    st.tuples(st.just("special"), st.sampled_from(FILES), st.sampled_from(SPECIAL)),
)


def _pick(d: dict, i: int) -> str:
    keys = sorted(d)
    return keys[i % len(keys)]


def mutate(ck: Path, outside: Path, m) -> Path:
    """Apply mutation ``m`` to checkpoint folder ``ck``; returns the file it damaged.
    ``outside`` is a folder outside the checkpoint for symlink targets."""
    kind = m[0]
    cfg, w = ck / "config.json", ck / "model.safetensors"
    if kind == "truncate":
        f = ck / m[1]
        raw = f.read_bytes()
        f.write_bytes(raw[: int(m[2] * len(raw))])
        return f
    if kind == "flip":
        f = ck / m[1]
        raw = bytearray(f.read_bytes())
        for where, xor in m[2]:
            raw[int(where * len(raw))] ^= xor
        f.write_bytes(bytes(raw))
        return f
    if kind == "swap_tensors":  # rewrite the header: two tensors exchange their bytes (and shapes)
        raw = w.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        names = sorted(k for k in header if k != "__metadata__")
        a, b = names[m[1] % len(names)], names[m[2] % len(names)]
        fields = ["data_offsets", "shape"] if m[3] else ["data_offsets"]
        for k in fields:
            header[a][k], header[b][k] = header[b][k], header[a][k]
        hb = json.dumps(header).encode()
        hb += b" " * (-len(hb) % 8)
        w.write_bytes(len(hb).to_bytes(8, "little") + hb + raw[8 + n:])
        return w
    if kind in ("config_set", "config_to_string", "config_delete"):
        meta = json.loads(cfg.read_text())
        d = meta["model"] if m[1] == "model" else meta
        key = _pick(d, m[2])
        if kind == "config_set":
            d[key] = m[3]
        elif kind == "config_to_string":
            d[key] = json.dumps(d[key]) if not isinstance(d[key], str) else {"value": d[key]}
        else:
            del d[key]
        cfg.write_text(json.dumps(meta))  # NaN / Infinity: non-standard JSON tokens
        return cfg
    if kind == "special":
        f = ck / m[1]
        f.unlink()
        how = m[2]
        if how == "symlink_dev_zero":
            f.symlink_to("/dev/zero")
        elif how == "symlink_missing":
            f.symlink_to(outside / "no_such_file")
        elif how == "symlink_folder":
            f.symlink_to(outside)
        elif how == "fifo":
            os.mkfifo(f)
        else:
            f.mkdir()
        return f
    raise KeyError(kind)  # pragma: no cover


def still_loads(ck: Path, m) -> bool:
    """Whether the mutated checkpoint is still a valid one (then success is allowed)."""
    if m[0] == "special":  # never valid; and not read in this process (a FIFO would block it)
        return False
    try:
        rh.load_checkpoint(ck)
    except Exception:  # noqa: BLE001 -- any failure: the CLI must report it in one line
        return False
    return True


# ---- running and checking ----------------------------------------------------------------------
def snapshot(root: Path, skip: list[Path]) -> dict:
    """{relative path: (kind, content hash / link target)} below ``root``, without following
    symlinks or reading FIFOs; folders in ``skip`` (the allowed outputs) are left out."""
    skip = {str(p) for p in skip}
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st_ = os.lstat(p)
            if stat.S_ISLNK(st_.st_mode):
                v = ("link", os.readlink(p))
            elif stat.S_ISREG(st_.st_mode):
                v = ("file", hashlib.sha1(Path(p).read_bytes()).hexdigest())
            else:
                v = ("other", stat.S_IFMT(st_.st_mode))
            snap[os.path.relpath(p, root)] = v
    return snap


def run_forked(argv, log: Path) -> tuple[int | None, str]:
    """The CLI in a forked process, killed after TIMEOUT seconds: (exit code, stdout+stderr)."""
    pid = forked_cli(argv, log)
    t0 = time.monotonic()
    while running(pid):
        if time.monotonic() - t0 > TIMEOUT:
            os.kill(pid, signal.SIGKILL)
            wait_code(pid)
            pytest.fail(f"hang: {argv} still running after {TIMEOUT} s")
        time.sleep(0.02)
    return wait_code(pid), log.read_text(errors="replace")


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(m=mutations)
def test_fuzz_checkpoint_files(base_run, tmp_path_factory, m):
    root = tmp_path_factory.mktemp("fuzzck")
    logs = tmp_path_factory.mktemp("fuzzlog")
    run = shutil.copytree(base_run, root / "run", symlinks=True)
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "keep.txt").write_text("a file outside the run")
    ck = rh.list_checkpoints(run)[-1]
    damaged = mutate(ck, root / "elsewhere", m)
    valid = still_loads(ck, m)
    event(f"{m[0]} {m[2] if m[0] == 'special' else ''} -> {'still valid' if valid else 'broken'}")
    out = root / "out"
    before = snapshot(root, [out, run / "scan"])
    cwd = os.getcwd()
    os.chdir(root)  # a stray relative write would land in the snapshot
    try:
        code, text = run_forked(["eval", ck, *EVAL_ARGS, "--out", out], logs / "eval.log")
        assert "Traceback" not in text, (m, text)
        if valid and code == 0:
            assert (out / "niah.csv").is_file()
        else:
            assert code == 2, (m, code, text)
            assert_one_line_error(text)
            if not valid:  # the line names the damaged checkpoint's file or folder
                assert str(ck) in _lines(text)[-1], (m, damaged, text)
                assert not out.exists(), m

        code, text = run_forked(["scan", run, *SCAN_ARGS], logs / "scan.log")
        assert "Traceback" not in text, (m, text)
        if valid and code == 0:
            assert "2 checkpoint(s): " in text
        else:
            assert code == 1, (m, code, text)
            skipped = [line for line in _lines(text) if line.startswith("skipped ")]
            errors = [line for line in _lines(text) if line.startswith("error: ")]
            assert len(skipped) == 1 and str(ck) in skipped[0], (m, text)
            assert errors == ["error: 1 checkpoint(s) could not be read and were skipped"], (m, text)
    finally:
        os.chdir(cwd)
    assert snapshot(root, [out, run / "scan"]) == before, m


def test_scan_cache_sees_a_changed_config(base_run, tmp_path, capsys):
    """Found by the fuzz: the scores cache was keyed on the weights only, so a config.json changed
    after a scan (the checkpoint no longer loads) was served from the cache with exit 0. The
    cache key now includes config.json."""
    run = shutil.copytree(base_run, tmp_path / "run")  # already scanned: its cache is filled
    ck = rh.list_checkpoints(run)[-1]
    meta = json.loads((ck / "config.json").read_text())
    del meta["model"]["d_mlp"]  # the default d_mlp no longer fits the weights
    (ck / "config.json").write_text(json.dumps(meta))
    code, _, err = cli(["eval", ck, *EVAL_ARGS], capsys)
    assert code == 2 and "has shape" in err  # eval refuses it...
    code, out, err = cli(["scan", run, *SCAN_ARGS], capsys)
    assert code == 1, out  # ...and so does the scan now (it was served from the cache before)
    assert f"skipped {ck.name}: " in err and "has shape" in err


# ---- eval --out: atomic outputs (issue 17, item 9) ---------------------------------------------
def test_eval_out_full_disk_leaves_no_partial_file(base_run, tmp_path, capsys, monkeypatch):
    """A write that fails (disk full) after the temporary file exists: no niah.csv, no temporary
    file, one error line."""
    import pandas as pd

    real = pd.DataFrame.to_csv

    def full_disk(self, path=None, *a, **kw):
        if path is not None:
            Path(path).write_bytes(b"step,")  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, path, *a, **kw)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    out = tmp_path / "out"
    ck = rh.list_checkpoints(base_run)[-1]
    code, _, err = cli(["eval", ck, *EVAL_ARGS, "--out", out], capsys)
    assert code == 2
    assert_one_line_error(err, os.strerror(errno.ENOSPC))
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert left == [], left  # neither niah.csv (0-byte or partial) nor a .tmp-niah.csv-* file


def test_eval_out_writes_whole_files(base_run, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = cli(["eval", rh.list_checkpoints(base_run)[-1], *EVAL_ARGS, "--out", out], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["loss.csv", "niah.csv", "summary.json"]
    assert json.loads((out / "summary.json").read_text())["step"] == 2
    assert oct((out / "niah.csv").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    u = os.umask(0)
    os.umask(u)
    return u


# ---- --haystack as a FIFO (issue 17, item 6) ---------------------------------------------------
def test_train_haystack_fifo_is_refused(tmp_path):
    from helpers import TC, write_preset

    preset = write_preset(tmp_path / "micro.json", tc=TC.replace(steps=1, save_every=1, eval_every=1,
                                                                  eval_samples=1))
    fifo = tmp_path / "haystack.txt"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    p = cli_process(["train", "--preset", preset, "--out", out, "--haystack", fifo, "--no-progress"],
                    timeout=60)  # before the fix: blocked on the FIFO for ever
    assert p.returncode == 2, p.stderr
    assert_one_line_error(p.stderr, str(fifo), "a FIFO, not a regular file")
    assert not out.exists()


def _alarm(signum, frame):
    raise TimeoutError("blocked reading a haystack")


def test_haystack_special_files_are_refused(tmp_path):
    from retrieval_heads.tasks.haystack import load_haystack

    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    dev = tmp_path / "zero.txt"
    dev.symlink_to("/dev/zero")
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("Good text here. " * 20)
    os.mkfifo(folder / "b.txt")  # a FIFO inside a haystack folder
    old = signal.signal(signal.SIGALRM, _alarm)  # a regression blocks on the FIFO: fail, not hang
    signal.alarm(30)
    try:
        with pytest.raises(ValueError, match="haystack: .*fifo.txt: a FIFO, not a regular file"):
            load_haystack(str(fifo))
        with pytest.raises(ValueError, match="haystack: .*zero.txt: a device, not a regular file"):
            load_haystack(str(dev))
        with pytest.raises(ValueError, match="b.txt: a FIFO"):
            load_haystack(str(folder))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
