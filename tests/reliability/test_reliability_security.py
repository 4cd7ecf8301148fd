"""Untrusted checkpoints through the CLI: nothing is ever unpickled. A pickle with a
code-executing payload (as ``train_state.pt`` or as a ``.bin``/``.pt`` weight file) is refused
by ``scan``, ``eval`` and ``train --resume``, and its payload never runs (a marker file it
would create stays absent). Also: the package source never calls an unsafe loader."""

import ast
import pickle
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from reliability_util import EVAL_ARGS, SCAN_ARGS, Payload, assert_one_line_error, cli, make_run, tree
from helpers import TC, write_preset

import retrieval_heads as rh

PKG = Path(rh.__file__).parent


def _calls(tree_):
    for node in ast.walk(tree_):
        if isinstance(node, ast.Call):
            f = node.func
            name = ast.unparse(f)
            yield node, name, {k.arg: k.value for k in node.keywords}


def test_source_never_unpickles():
    """No ``torch.load`` without ``weights_only=True``, no pickle/dill/joblib/marshal loads,
    no ``numpy.load(allow_pickle=True)``, HF ``from_pretrained`` models only with safetensors."""
    bad = []
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 20
    for f in files:
        src = f.read_text()
        where = lambda n, f=f: f"{f.relative_to(PKG.parent)}:{n.lineno}"
        for node, name, kw in _calls(ast.parse(src)):
            last = name.rsplit(".", 1)[-1]
            if name == "torch.load":
                v = kw.get("weights_only")
                if not (isinstance(v, ast.Constant) and v.value is True):
                    bad.append(f"{where(node)}: {name}( without weights_only=True")
            if name.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve") \
                    and last in ("load", "loads", "open", "Unpickler"):
                bad.append(f"{where(node)}: {name}(")
            if name in ("np.load", "numpy.load"):
                v = kw.get("allow_pickle")
                if isinstance(v, ast.Constant) and v.value is True:
                    bad.append(f"{where(node)}: {name}(allow_pickle=True)")
            if last == "from_pretrained" and "Model" in name:
                v = kw.get("use_safetensors")
                if not (isinstance(v, ast.Constant) and v.value is True):
                    bad.append(f"{where(node)}: {name}( without use_safetensors=True")
        # and the plain-text form, for calls ast would name differently (aliases)
        for i, line in enumerate(src.splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(s in code for s in ("pickle.load", "pickle.Unpickler", "from pickle import",
                                       "from torch import load")):
                bad.append(f"{f.relative_to(PKG.parent)}:{i}: {code.strip()}")
    assert not bad, "\n".join(bad)


# ---- train --resume ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-step training run (micro preset) with train_state.pt in each checkpoint."""
    d = tmp_path_factory.mktemp("trained")
    preset = write_preset(d / "p.json", tc=TC.replace(steps=2, save_every=2, eval_every=2))
    from retrieval_heads.train import load_preset, train

    train(*load_preset(preset), d / "run", progress=False, log=lambda *a: None)
    return preset, d / "run"


@pytest.mark.parametrize("where", ["train_state.pt", "pytorch_model.bin", "model.pt"])
def test_train_resume_refuses_a_pickle_payload(trained, tmp_path, capsys, where):
    preset, base = trained
    run = shutil.copytree(base, tmp_path / "run")
    last = rh.list_checkpoints(run)[-1]
    marker = tmp_path / "PWNED"
    if where == "train_state.pt":  # a torch.save zip holding an object whose unpickling runs code
        torch.save({"optimizer": Payload(marker), "step": 2}, last / where)
    else:
        with open(last / where, "wb") as f:
            pickle.dump(Payload(marker), f)
    before = tree(run)
    code, _, err = cli(["train", "--preset", preset, "--out", run, "--resume", "--steps", "4", "--no-progress"],
                       capsys)
    assert code == 2
    assert_one_line_error(err, str(last / where))
    assert not marker.exists()
    assert tree(run) == before  # nothing written


@pytest.mark.slow
def test_train_resume_refuses_a_payload_as_a_subprocess(trained, tmp_path):
    """The same through ``python -m retrieval_heads.train`` (the torchrun entry point)."""
    import subprocess
    import sys

    from reliability_util import ENV

    preset, base = trained
    run = shutil.copytree(base, tmp_path / "run")
    marker = tmp_path / "PWNED"
    torch.save({"optimizer": Payload(marker)}, rh.list_checkpoints(run)[-1] / "train_state.pt")
    p = subprocess.run([sys.executable, "-m", "retrieval_heads.train", "--preset", preset, "--out", str(run),
                        "--resume", "--no-progress"], capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode == 2, p.stderr
    assert_one_line_error(p.stderr, "train_state.pt", "refused")
    assert not marker.exists()


# ---- eval / scan --------------------------------------------------------------------------------
@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "run", steps=(0, 2))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth", "model.ckpt"])
def test_eval_refuses_pickle_weight_files(run, tmp_path, capsys, name):
    ck = rh.list_checkpoints(run)[-1]
    marker = tmp_path / "PWNED"
    with open(ck / name, "wb") as f:
        pickle.dump(Payload(marker), f)
    for target in (ck, run):  # a checkpoint folder, or a run (its last checkpoint)
        code, _, err = cli(["eval", target, *EVAL_ARGS], capsys)
        assert code == 2
        assert_one_line_error(err, str(ck / name), "pickle-format weight file refused")
    assert not marker.exists()


def test_scan_skips_a_checkpoint_with_a_pickle_payload(run, tmp_path, capsys):
    bad = rh.list_checkpoints(run)[-1]
    marker = tmp_path / "PWNED"
    with open(bad / "model.pt", "wb") as f:
        pickle.dump(Payload(marker), f)
    code, _, err = cli(["scan", run, *SCAN_ARGS], capsys)
    assert code == 1  # the others scanned, then non-zero
    assert "Traceback" not in err
    assert f"skipped {bad.name}" in err and "model.pt: pickle-format weight file refused" in err
    assert err.splitlines()[-1].startswith("error: 1 checkpoint(s) could not be read")
    ck = pd.read_parquet(run / "scan" / "checkpoints.parquet").set_index("step").status.to_dict()
    assert ck == {0: "ok", 2: "skipped"}
    assert not marker.exists()
    # every checkpoint poisoned: nothing to scan, exit 2
    with open(rh.list_checkpoints(run)[0] / "pytorch_model.bin", "wb") as f:
        pickle.dump(Payload(marker), f)
    code, _, err = cli(["scan", run, *SCAN_ARGS, "--force"], capsys)
    assert code == 2
    assert_one_line_error(err, "pickle-format weight file refused")
    assert not marker.exists()


def test_eval_and_scan_never_read_train_state(run, tmp_path, capsys):
    """``train_state.pt`` (optimizer state) is read only by ``train --resume``, and there with
    ``weights_only=True``: ``eval``/``scan`` use the weights and leave a poisoned one unread."""
    marker = tmp_path / "PWNED"
    for ck in rh.list_checkpoints(run):
        torch.save({"optimizer": Payload(marker)}, ck / "train_state.pt")
    code, _, err = cli(["eval", run, *EVAL_ARGS], capsys)
    assert code == 0, err
    code, _, err = cli(["scan", run, *SCAN_ARGS], capsys)
    assert code == 0, err
    assert not marker.exists()


# ---- Hugging Face checkpoints ----------------------------------------------------------------
HF_SCAN = ["--context-lens", "80", "--depths", "0.5", "--n-per-cell", "1", "--no-progress", "--no-report",
           "--all-samples"]


@pytest.mark.parametrize("keep_safetensors", [False, True])
def test_hf_scan_never_unpickles(tmp_path, capsys, keep_safetensors):
    """An HF checkpoint offering ``pytorch_model.bin`` with a payload: refused when it is the
    only weights file; ignored (safetensors are loaded) when safetensors sit beside it."""
    from retrieval_heads.hf.testing import save_tiny

    ck = save_tiny("qwen3", tmp_path / "hf" / "checkpoint-10")
    marker = tmp_path / "PWNED"
    if not keep_safetensors:
        for f in ck.glob("*.safetensors"):
            f.unlink()
    with open(ck / "pytorch_model.bin", "wb") as f:
        pickle.dump(Payload(marker), f)
    code, _, err = cli(["scan", ck, *HF_SCAN], capsys)
    if keep_safetensors:
        assert code == 0, err
    else:
        assert code in (1, 2)
        assert "Traceback" not in err
        assert "pickle-format weights refused" in err or "no *.safetensors weights" in err, err
    assert not marker.exists()


# ---- issue 17, items 2 and 6: no file outside the checkpoint, no special files ---------------
def test_hf_weight_map_cannot_point_outside_the_checkpoint(tmp_path):
    """A ``weight_map`` entry ``../../outside/w.safetensors`` was followed when the scan read the
    reference's Q/K weights; now every name read from inside a file must stay inside its folder."""
    import json

    from retrieval_heads.hf import load_hf
    from retrieval_heads.hf.testing import save_tiny
    from retrieval_heads.hf.weights import read_qk_weights

    ck = save_tiny("qwen3", tmp_path / "ck")
    model = load_hf(ck)
    outside = tmp_path / "outside"
    outside.mkdir()
    for f in ck.glob("*.safetensors"):
        shutil.copy(f, outside / "w.safetensors")
    keys = list(read_qk_weights(ck, model).values())
    assert keys  # the folder's own weights are read
    names = {}
    from safetensors import safe_open
    with safe_open(str(next(ck.glob("*.safetensors"))), "pt") as h:
        names = {k: "../outside/w.safetensors" for k in h.keys()}
    (ck / "model.safetensors.index.json").write_text(json.dumps({"weight_map": names}))
    with pytest.raises(ValueError, match=r"weight_map\[.*'\.\./outside/w\.safetensors' is not a file inside"):
        read_qk_weights(ck, model)


@pytest.mark.parametrize("what", ["fifo_config", "fifo_weights", "dev_zero_weights", "folder_weights"])
def test_special_files_are_refused_not_read(tmp_path, capsys, what):
    """A FIFO config.json or model.safetensors blocked eval; model.safetensors -> /dev/zero made
    a scan hash forever. Only regular files are opened: one error line, exit 2, promptly."""
    import os

    run = make_run(tmp_path / "run", steps=(0,))
    ck = run / "step_000000"
    target = ck / ("config.json" if what == "fifo_config" else "model.safetensors")
    target.unlink()
    if what.startswith("fifo"):
        os.mkfifo(target)
    elif what == "dev_zero_weights":
        target.symlink_to("/dev/zero")
    else:
        target.mkdir()
    code, _, err = cli(["eval", ck, *EVAL_ARGS], capsys)
    assert code == 2, err
    assert_one_line_error(err, str(target))
    assert "not a regular file" in err or (what == "folder_weights" and "folder" in err)


def test_scan_skips_weights_linked_to_dev_zero(tmp_path, capsys):
    run = make_run(tmp_path / "run", steps=(0, 2))
    w = run / "step_000002" / "model.safetensors"
    w.unlink()
    w.symlink_to("/dev/zero")
    code, out, err = cli(["scan", run, *SCAN_ARGS], capsys)
    assert code == 1, err  # the readable checkpoint is scanned, the other skipped and named
    assert f"skipped step_000002: {w}: a device, not a regular file; refused" in err


# ---- issue 17, item 9 -----------------------------------------------------------------------
def test_a_newer_checkpoint_format_is_refused(tmp_path):
    import json

    from retrieval_heads.storage.checkpoint import CheckpointError, read_meta

    ck = make_run(tmp_path / "run", steps=(0,)) / "step_000000"
    meta = json.loads((ck / "config.json").read_text())
    meta["format"] = 999
    (ck / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"format 999; this version of retrieval-heads reads format 1"):
        read_meta(ck)


def test_checkpoints_get_the_users_umask_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        # the module reads the umask at import; save a checkpoint with the usual 022
        import retrieval_heads.storage.checkpoint as ck_mod

        saved = ck_mod._UMASK
        ck_mod._UMASK = 0o022
        try:
            ck = make_run(tmp_path / "run", steps=(0,)) / "step_000000"
        finally:
            ck_mod._UMASK = saved
    finally:
        os.umask(old)
    assert stat.S_IMODE(ck.stat().st_mode) == 0o755  # was 0700 from mkdtemp whatever the umask
    assert stat.S_IMODE((ck / "model.safetensors").stat().st_mode) == 0o644


def test_pickled_train_state_refusal_keeps_torchs_whole_advice(tmp_path):
    from retrieval_heads.storage.checkpoint import CheckpointError, load_train_state

    ck = make_run(tmp_path / "run", steps=(0,)) / "step_000000"
    marker = tmp_path / "PWNED"
    torch.save({"optimizer": Payload(marker)}, ck / "train_state.pt")
    with pytest.raises(CheckpointError) as e:
        load_train_state(ck)
    msg = str(e.value)
    assert "\n" not in msg and "not plain tensors" in msg
    assert "trust the source" in msg  # torch's advice, cut off at 200 characters before
    assert not marker.exists()


def test_resume_removes_the_leftovers_of_killed_run_json_and_metrics_writes(tmp_path):
    from retrieval_heads.storage.checkpoint import clean_partial_checkpoints

    run = make_run(tmp_path / "run", steps=(0,))
    for name in (".tmp-run.json-abc123", ".tmp-metrics.jsonl-x9"):
        (run / name).write_text("{half")
    removed = clean_partial_checkpoints(run)
    assert sorted(p.name for p in removed) == [".tmp-metrics.jsonl-x9", ".tmp-run.json-abc123"]
    assert not list(run.glob(".tmp-*"))


def test_two_trainings_into_one_folder_the_second_is_refused(tmp_path, capsys):
    from retrieval_heads.storage.files import exclusive_lock
    from retrieval_heads.train.loop import LOCK_FILE

    preset = write_preset(tmp_path / "p.json", tc=TC.replace(steps=2, save_every=2, eval_every=2))
    out = tmp_path / "run"
    with exclusive_lock(out / LOCK_FILE, "held by the test"):  # as another process would hold it
        code, _, err = cli(["train", "--preset", preset, "--out", out, "--no-progress"], capsys)
    assert code == 2
    assert_one_line_error(err, f"out: another training process is writing {out}")
    assert not rh.list_checkpoints(out)
    code, _, err = cli(["train", "--preset", preset, "--out", out, "--no-progress"], capsys)
    assert code == 0, err  # the lock went with its holder
