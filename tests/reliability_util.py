"""Helpers of the reliability tests (tests/test_reliability*.py): tiny checkpoints, a pickle
payload that leaves a marker file when unpickled, the CLI run in-process or as a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import retrieval_heads as rh
from retrieval_heads.cli import main

TINY = rh.ModelConfig(layout="SF", d_model=16, n_heads=2, d_mlp=32, window=4, max_seq_len=256,
                      pos={"F": "nope", "S": "rope"})
# the smallest useful CLI workloads
EVAL_ARGS = ["--context-lens", "160", "--depths", "0.5", "--n", "1", "--loss-rows", "1", "--loss-len", "64",
             "--short-len", "64", "--no-progress"]
ABLATE_ARGS = ["--context-lens", "160", "--depths", "0.5", "--n", "1", "--n-random", "1", "--top-k", "1",
               "--no-progress"]
PATCH_ARGS = ["--context-len", "160", "--n", "1", "--no-progress"]
SCAN_ARGS = ["--context-lens", "160", "--depths", "0.5", "--n-per-cell", "1", "--no-progress", "--no-report"]
# a fixed, different hash seed: results must not depend on str-hash (set) ordering either
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "PYTHONHASHSEED": "12345"}


class Payload:
    """Unpickling this object creates ``marker``: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def make_run(path: Path, steps=(0, 2), seed: int = 0) -> Path:
    """A run folder of tiny checkpoints (random init, then perturbed weights per step)."""
    torch.manual_seed(seed)
    model = rh.HybridLM(TINY)
    for s in steps:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        rh.save_checkpoint(path, s, model, tokens_seen=100 * s)
    return path


def cli(argv, capsys) -> tuple[int, str, str]:
    """``retrieval-heads ARGV`` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def cli_process(argv, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """``retrieval-heads ARGV`` as a separate single-threaded process."""
    return subprocess.run([sys.executable, "-c", "from retrieval_heads.cli import main; main()",
                           *map(str, argv)], capture_output=True, text=True, env=ENV, timeout=timeout, **kw)


def forked_cli(argv, log) -> int:
    """``retrieval-heads ARGV`` in a forked child of this (single-threaded, already imported)
    test process, its stdout/stderr to the file ``log``: a real process to SIGKILL or to run
    beside another, without paying the imports again. Returns the pid (``os.waitpid`` it)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 3
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = sys.stderr = open(fd, "w", buffering=1)  # not pytest's capture
            main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            os._exit(code)
    return pid


def running(pid) -> bool:
    """Whether a forked child still runs, without reaping it (so its pid stays ours to kill)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


def wait_code(pid) -> int | None:
    """Exit code of a forked child (None when it was killed by a signal)."""
    status = os.waitpid(pid, 0)[1]
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else None


def assert_one_line_error(err: str, *needles: str) -> None:
    """stderr ends with exactly one ``error: ...`` line holding every needle; no traceback."""
    assert "Traceback" not in err, err
    lines = [l for l in err.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    for n in needles:
        assert n in errors[0], (n, errors[0])


def tree(path: Path) -> dict:
    """{relative path: bytes} of every file below ``path`` (to show nothing changed)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


def break_checkpoint(ck, how):
    """Damage checkpoint folder ``ck`` in the named way (config, JSON, weights, tensors)."""
    cfg, w = ck / "config.json", ck / "model.safetensors"
    meta = json.loads(cfg.read_text())

    def write_meta(**model):
        meta["model"].update(model)
        cfg.write_text(json.dumps(meta))

    def edit_weights(fn):
        sd = load_file(str(w))
        fn(sd)
        save_file(sd, str(w))

    if how == "empty_folder":
        for f in ck.iterdir():
            f.unlink()
    elif how == "no_config":
        cfg.unlink()
    elif how == "malformed_config":
        cfg.write_text('{"model": {"layout": "SF",')
    elif how == "config_not_utf8":
        cfg.write_bytes(b'{"model": "\xff\xfe"}')
    elif how == "config_not_an_object":
        cfg.write_text("[1, 2, 3]")
    elif how == "unknown_top_key":
        meta["optimizer"] = "adam"
        cfg.write_text(json.dumps(meta))
    elif how == "unknown_model_key":
        write_meta(n_experts=8)
    elif how == "wrong_type":
        write_meta(n_heads="two")
    elif how == "zero_size":
        write_meta(d_model=0)
    elif how == "unknown_layout_letter":
        write_meta(layout="SX")
    elif how == "step_not_int":
        meta["step"] = float("nan")
        cfg.write_text(json.dumps(meta))
    elif how == "tokens_negative":
        meta["tokens_seen"] = -5
        cfg.write_text(json.dumps(meta))
    elif how == "step_huge":  # issue 17: an OverflowError after scoring
        meta["step"] = 10**30
        cfg.write_text(json.dumps(meta))
    elif how == "tokens_huge":
        meta["tokens_seen"] = 10**25
        cfg.write_text(json.dumps(meta))
    elif how == "no_weights":
        w.unlink()
    elif how == "weights_empty_file":
        w.write_bytes(b"")
    elif how == "truncated_weights":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif how == "shape_mismatch":
        write_meta(d_model=32, d_mlp=64)
    elif how == "missing_tensor":
        edit_weights(lambda sd: sd.pop("blocks.0.attn.W_Q.weight"))
    elif how == "extra_tensor":
        edit_weights(lambda sd: sd.update({"blocks.9.extra": torch.zeros(2)}))
    elif how == "int_dtype":
        edit_weights(lambda sd: sd.update({k: sd[k].to(torch.int32) for k in list(sd)[:1]}))
    elif how in ("nan_weights", "inf_weights"):
        bad = float("nan") if how == "nan_weights" else float("inf")
        edit_weights(lambda sd: sd["blocks.1.attn.W_K.weight"].view(-1).__setitem__(3, bad))  # an F layer
    else:  # pragma: no cover
        raise KeyError(how)
