"""Issue 17, item 3: a ``train_state.pt`` of the wrong structure is refused in one line before
the run is touched; a failing ``torch.save`` of it (full disk) is one line and leaves no
partial checkpoint; ``report`` / ``compare`` on damaged scan tables say to re-run the scan."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import MC, TC, write_preset
from reliability_util import SCAN_ARGS, assert_one_line_error, cli, make_run

from retrieval_heads.cli import main
from retrieval_heads.train import train

TC3 = TC.replace(steps=3, save_every=3, eval_every=3, eval_samples=2)  # checkpoints 0 and 3


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("state") / "run"
    train(MC, TC3, out, progress=False, log=lambda *a: None)
    return out


def _damage(sd: dict, how: str):
    if how == "plain_dict":
        return {"a": 1}
    if how == "list":
        return [1, 2, 3]
    if how == "no_rng":
        sd.pop("rng")
    elif how == "step_not_int":
        sd["step"] = "three"
    elif how == "optimizer_not_a_dict":
        sd["optimizer"] = [1, 2]
    elif how == "wrong_shape":
        st = next(iter(sd["optimizer"]["state"].values()))
        st["exp_avg"] = torch.zeros(7, 5)
    elif how == "extra_group":
        sd["optimizer"]["param_groups"].append({"params": [999]})
    elif how == "rng_not_bytes":
        sd["rng"]["torch"] = torch.zeros(3)
    elif how == "running_bad":
        sd["running"] = [1.0]
    return sd


CASES = {  # how -> fragment of the one-line error
    "plain_dict": "missing key(s) ['optimizer', 'step', 'tokens_seen', 'rng']",
    "list": "expected a dict with keys",
    "no_rng": "missing key(s) ['rng']",
    "step_not_int": "step: expected a non-negative integer",
    "optimizer_not_a_dict": "optimizer: expected an optimizer state dict",
    "wrong_shape": "exp_avg has shape (7, 5), the model's parameter has shape",
    "extra_group": "optimizer: parameter groups of sizes",
    "rng_not_bytes": "rng: expected",
    "running_bad": "running: expected 4 finite numbers",
}


@pytest.mark.parametrize("how", sorted(CASES))
def test_bad_train_state_is_one_line_and_leaves_the_run_unchanged(base_run, tmp_path, capsys, how):
    out = shutil.copytree(base_run, tmp_path / "run")
    f = out / "step_000003" / "train_state.pt"
    torch.save(_damage(torch.load(f, weights_only=True), how), f)
    preset = write_preset(tmp_path / "p.json", tc=TC3.replace(steps=6))
    (out / "run.json").write_text((out / "run.json").read_text() + "\n")  # a byte a rewrite would drop
    before = {p: (out / p).read_bytes() for p in ("run.json", "metrics.jsonl")}
    names = sorted(p.name for p in out.iterdir())
    code, _, err = cli(["train", "--preset", preset, "--out", out, "--resume", "--no-progress"], capsys)
    assert code == 2, err
    assert_one_line_error(err, str(f), CASES[how])
    assert {p: (out / p).read_bytes() for p in before} == before
    assert sorted(p.name for p in out.iterdir()) == names


def test_load_train_state_accepts_what_train_saves(base_run):
    from retrieval_heads.storage.checkpoint import load_train_state

    sd = load_train_state(base_run / "step_000003")
    assert sd["step"] == 3 and set(sd) >= {"optimizer", "step", "tokens_seen", "rng"}


def test_full_disk_writing_train_state_is_one_line_and_leaves_no_partial(tmp_path, capsys, monkeypatch):
    import retrieval_heads.storage.checkpoint as ck_mod

    out = tmp_path / "run"
    preset = write_preset(tmp_path / "p.json", tc=TC3)

    def full(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 torn")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed\nNo space left on device")

    monkeypatch.setattr(ck_mod.torch, "save", full)
    code, _, err = cli(["train", "--preset", preset, "--out", out, "--no-progress"], capsys)
    assert code == 2, err
    assert_one_line_error(err, str(out / "step_000000" / "train_state.pt"), "could not be written",
                          "No space left on device", "inline_container.cc:672")
    assert not [p for p in out.iterdir() if p.name.startswith((".tmp_step_", "step_"))]


# ------------------------------------------------------------------ report / compare
@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("scan") / "run")
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in ["scan", run, *SCAN_ARGS]])
    assert e.value.code == 0
    return run


def _scanned_copy(scanned, tmp_path, capsys):
    capsys.readouterr()
    return shutil.copytree(scanned, tmp_path / "run")


@pytest.mark.parametrize("what", ["empty_object", "no_model", "no_settings", "model_not_object", "not_json", "list",
                                  "reference_no_step"])
@pytest.mark.parametrize("cmd", ["report", "compare"])
def test_report_and_compare_on_a_bad_formation_json(scanned, tmp_path, capsys, what, cmd):
    run = _scanned_copy(scanned, tmp_path, capsys)
    f = run / "scan" / "formation.json"
    meta = json.loads(f.read_text())
    if what == "empty_object":
        f.write_text("{}")
        frag = "key(s) ['model'] missing"
    elif what == "no_model":
        meta.pop("model")
        f.write_text(json.dumps(meta))
        frag = "key(s) ['model'] missing"
    elif what == "no_settings":
        meta.pop("settings")
        f.write_text(json.dumps(meta))
        if cmd == "compare":
            pytest.skip("compare does not read the settings")
        frag = "key(s) ['settings'] missing"
    elif what == "model_not_object":
        meta["model"] = 3
        f.write_text(json.dumps(meta))
        frag = "model: expected a JSON object"
    elif what == "not_json":
        f.write_text('{"model": ')
        frag = "unreadable (JSONDecodeError"
    elif what == "list":
        f.write_text("[]")
        frag = "expected a JSON object, got list"
    else:
        if cmd == "compare":  # compare does not read the reference
            pytest.skip("compare reads only model / run")
        meta["reference"] = {}
        f.write_text(json.dumps(meta))
        frag = "reference: key 'step' missing"
    argv = [cmd, run] + (["--out", tmp_path / "c.html"] if cmd == "compare" else [])
    code, _, err = cli(argv, capsys)
    assert code == 2, err
    assert_one_line_error(err, str(f), frag, "re-run `retrieval-heads scan")


@pytest.mark.parametrize("what", ["missing", "garbage", "no_column"])
@pytest.mark.parametrize("cmd", ["report", "compare"])
def test_report_and_compare_on_missing_or_bad_tables(scanned, tmp_path, capsys, what, cmd):
    run = _scanned_copy(scanned, tmp_path, capsys)
    f = run / "scan" / "checkpoints.parquet"
    if what == "missing":
        f.unlink()
        frags = ("checkpoints.parquet missing", "retrieval-heads scan")
    elif what == "garbage":
        f.write_bytes(b"not parquet")
        frags = (str(f), "unreadable scan table", "re-run `retrieval-heads scan")
    else:
        import pandas as pd
        pd.read_parquet(f).drop(columns=["status"]).to_parquet(f)
        frags = (str(f), "column(s) ['status'] missing", "re-run `retrieval-heads scan")
    argv = [cmd, run] + (["--out", tmp_path / "c.html"] if cmd == "compare" else [])
    code, _, err = cli(argv, capsys)
    assert code == 2, err
    assert_one_line_error(err, *frags)
