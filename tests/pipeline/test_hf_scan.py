"""Scanning Hugging Face checkpoints: ``rh.scan`` / ``retrieval-heads scan PATH`` on one HF
checkpoint or a series (checkpoint-*, step*), in training order, with the native tables."""

import json

import pandas as pd
import pytest

import retrieval_heads as rh
from retrieval_heads.cli import main
from retrieval_heads.hf.testing import save_tiny, tiny_tokenizer

FAST = dict(context_lens=(80,), depths=(0.3, 0.7), n_per_cell=1, progress=False, report=False)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A Gemma3 series saved out of order, with trainer_state token counts."""
    root = tmp_path_factory.mktemp("gemma3_series")
    tok = tiny_tokenizer()
    for step in (20, 5, 10):
        save_tiny("gemma3_text", root / f"checkpoint-{step}", seed=step, tokenizer=tok,
                  extra={"global_step": step, "num_input_tokens_seen": 1000 * step})
    return root


def test_scan_series_in_training_order(series):
    df = rh.scan(series, only_correct=False, **FAST)
    info = df.attrs["scan"]
    assert info["n_checkpoints"] == 3 and info["n_scored"] == 3 and info["n_skipped"] == 0
    assert info["layout"] == "SSSF" and "layer 3: F rope" in info["describe"]
    assert sorted(df.step.unique()) == [5, 10, 20]
    assert sorted(df.tokens_seen.unique()) == [5000, 10000, 20000]
    assert set(df.layer_type) == {"S", "F"}
    copy = df[df.metric == "copy"]
    assert len(copy) == 3 * 4 * 4 and copy.value.notna().all()  # every attention head scored
    qk = df[(df.metric == "qk_distance") & (df.step == 5)]
    assert (qk.value == 0).all()  # the first checkpoint is the reference
    ck = pd.read_parquet(series / "scan" / "checkpoints.parquet")
    assert list(ck.step) == [5, 10, 20] and (ck.n_needle_errors == 0).all()
    again = rh.scan(series, only_correct=False, **FAST)
    assert again.attrs["scan"]["n_cached"] == 3 and again.attrs["scan"]["unchanged"]
    pd.testing.assert_frame_equal(df, again)


def test_scan_recurrent_layers_are_nan_and_errors_counted(tmp_path):
    sp = tiny_tokenizer("metaspace")  # some values cannot be located exactly: counted, not scored
    one = save_tiny("qwen3_next", tmp_path / "qwen3next", tokenizer=sp)
    df = rh.scan(one, context_lens=(120,), depths=(0.2, 0.4, 0.6, 0.8), n_per_cell=2, seed=5, progress=False,
                 report=False)  # seed 5: two of the eight values end in "3"
    info = df.attrs["scan"]
    assert info["layout"] == "DDDF" and sorted(df.layer.unique()) == [3]  # only the F layer has heads
    mass = df[df.metric == "mass"]
    assert mass.value.notna().all()
    ck = pd.read_parquet(one / "scan" / "checkpoints.parquet")
    n_err = int(ck.n_needle_errors.iloc[0])
    assert n_err == info["needle_errors"] and n_err == 2 and int(ck.n_samples.iloc[0]) == 8
    state = json.loads((one / "scan" / "scan.json").read_text())
    assert state["model"]["source"] == "huggingface" and state["model"]["pos"] == ["-", "-", "-", "rope"]


def test_cli_scan_and_info(series, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["scan", str(series), "--context-lens", "80", "--depths", "0.5", "--n-per-cell", "1",
              "--no-progress", "--no-report", "--all-samples"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "layout SSSF" in out and "3 checkpoint(s)" in out
    with pytest.raises(SystemExit) as e:
        main(["info", "--hf", str(series)])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "layers 0-2: S window=8 rope" in out and "3 checkpoints, steps 5 .. 20" in out
    # --trust-remote-code makes no sense for our own runs; a remote-code HF config needs it
    with pytest.raises(SystemExit) as e:
        main(["scan", str(tmp_path), "--trust-remote-code"])
    assert e.value.code == 2
    p = save_tiny("smollm3", tmp_path / "remote")
    cfg = json.loads((p / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.M"}
    (p / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit) as e:
        main(["scan", str(p), "--no-progress"])
    assert e.value.code == 2 and "--trust-remote-code" in capsys.readouterr().err


def test_broken_checkpoint_is_skipped(tmp_path):
    tok = tiny_tokenizer()
    for step in (1, 2):
        save_tiny("smollm3", tmp_path / f"step{step}", seed=step, tokenizer=tok)
    (tmp_path / "step2" / "model.safetensors").write_bytes(b"not a safetensors file")
    df = rh.scan(tmp_path, only_correct=False, **FAST)
    info = df.attrs["scan"]
    assert info["n_skipped"] == 1 and info["skipped"][0]["step"] == 2
    assert sorted(df.step.unique()) == [1]


def test_cli_scan_out_leaves_the_hf_folder_alone(series, tmp_path, capsys):
    """`scan --out DIR` on HF checkpoints: tables, report, cache and lock in DIR, nothing in the model's folder."""
    before = sorted(p.relative_to(series) for p in series.rglob("*"))
    dest = tmp_path / "hf_scan"
    with pytest.raises(SystemExit) as e:
        main(["scan", str(series), "--context-lens", "80", "--depths", "0.5", "--n-per-cell", "1",
              "--no-progress", "--all-samples", "--out", str(dest)])
    assert e.value.code == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"tables: {dest}"
    for f in ("scores.parquet", "niah.parquet", "checkpoints.parquet", "formation.json", "report.html", ".lock"):
        assert (dest / f).exists(), f
    assert list((dest / "cache").glob("scores-*.json"))
    assert sorted(p.relative_to(series) for p in series.rglob("*")) == before
    df = rh.scan(series, only_correct=False, context_lens=(80,), depths=(0.5,), n_per_cell=1, progress=False,
                 report=False, out=dest)
    assert df.attrs["scan"]["n_cached"] == 3 and df.attrs["scan"]["scan_dir"] == str(dest)


# ---- one scan loop for both sources: the drifts between the two copies are gone ------------
def test_hf_scan_refuses_workers_instead_of_ignoring_them(series, tmp_path):
    with pytest.raises(ValueError, match="workers: HF checkpoints are scored one at a time"):
        rh.scan(series, only_correct=False, workers=2, out=tmp_path / "w", **FAST)
    assert not (tmp_path / "w").exists()  # refused before anything was written


def test_hf_bad_settings_write_nothing(series, tmp_path):
    with pytest.raises(ValueError, match="context_lens"):
        rh.scan(series, only_correct=False, out=tmp_path / "o", **dict(FAST, context_lens=(10**6,)))
    assert not (tmp_path / "o").exists()


def test_hf_damaged_table_is_rewritten_not_trusted(series, tmp_path):
    out = tmp_path / "scan"
    first = rh.scan(series, only_correct=False, out=out, **FAST)
    (out / "niah.parquet").write_bytes(b"PAR1 torn")  # same scan.json, damaged table
    again = rh.scan(series, only_correct=False, out=out, **FAST)
    assert not again.attrs["scan"]["unchanged"]
    assert len(pd.read_parquet(out / "niah.parquet")) == 2 * 3  # rewritten: 2 depths x 3 checkpoints
    pd.testing.assert_frame_equal(first, again)
