"""Bad checkpoints and bad arguments through the CLI: one ``error: ...`` line naming the file or
option and the problem, exit code 2, no traceback unless ``--debug``, nothing written. Inside
a scan a bad checkpoint is skipped and reported, the others are scanned, the exit code is 1.
The ``train`` options are fuzzed with hypothesis."""

import json
import shutil
import string

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_util import (ABLATE_ARGS, EVAL_ARGS, PATCH_ARGS, SCAN_ARGS, assert_one_line_error,
                              break_checkpoint, cli, make_run, tree)
from helpers import TC, write_preset

import retrieval_heads as rh
from retrieval_heads.storage.checkpoint import CheckpointError

# how to break a checkpoint -> what the error says (besides the file's path)
BREAKS = {
    "empty_folder": "empty folder",
    "no_config": "config.json: missing",
    "malformed_config": "malformed JSON",
    "config_not_utf8": "malformed JSON",
    "config_not_an_object": "no 'model' section",
    "unknown_top_key": "unknown key(s) ['optimizer']",
    "unknown_model_key": "unknown key(s) ['n_experts']",
    "wrong_type": "n_heads",
    "zero_size": "d_model",
    "unknown_layout_letter": "unknown letter",
    "step_not_int": "step: expected an integer in [0, 2147483647], got nan",
    "tokens_negative": "tokens_seen: expected an integer in [0, 9223372036854775807], got -5",
    "step_huge": "step: expected an integer in [0, 2147483647], got 100000000000... (31 characters)",
    "tokens_huge": "tokens_seen: expected an integer in [0, 9223372036854775807], got 100000000000... (26 characters)",
    "no_weights": "model.safetensors: missing",
    "weights_empty_file": "unreadable safetensors",
    "truncated_weights": "unreadable safetensors",
    "shape_mismatch": "has shape",
    "missing_tensor": "missing ['blocks.0.attn.W_Q.weight']",
    "extra_tensor": "unexpected ['blocks.9.extra']",
    "int_dtype": "dtype torch.int32",
    "nan_weights": "NaN or Inf",
    "inf_weights": "NaN or Inf",
}
# the path the message must name: the folder, config.json or model.safetensors
NAMES = {"empty_folder": "", "no_weights": "model.safetensors", "weights_empty_file": "model.safetensors",
         "truncated_weights": "model.safetensors", "shape_mismatch": "model.safetensors",
         "missing_tensor": "model.safetensors", "extra_tensor": "model.safetensors",
         "int_dtype": "model.safetensors", "nan_weights": "model.safetensors",
         "inf_weights": "model.safetensors"}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("rel_inputs") / "run", steps=(0, 2, 4))


@pytest.fixture
def run(base_run, tmp_path):
    return shutil.copytree(base_run, tmp_path / "run")


@pytest.mark.parametrize("how", list(BREAKS))
@pytest.mark.parametrize("command", ["eval", "ablate", "patch"])
def test_bad_checkpoint_one_line_error(run, tmp_path, capsys, how, command):
    ck = rh.list_checkpoints(run)[-1]
    break_checkpoint(ck, how)
    out = tmp_path / "out"
    extra = {"eval": EVAL_ARGS, "ablate": ABLATE_ARGS, "patch": PATCH_ARGS}[command]
    code, stdout, err = cli([command, ck, *extra, "--out", out], capsys)
    assert code == 2
    assert_one_line_error(err, str(ck / NAMES.get(how, "config.json")).rstrip("/"), BREAKS[how])
    assert not out.exists()


@pytest.mark.parametrize("how", ["malformed_config", "truncated_weights", "nan_weights"])
def test_debug_shows_the_traceback(run, how):
    from retrieval_heads.cli import main

    ck = rh.list_checkpoints(run)[-1]
    break_checkpoint(ck, how)
    with pytest.raises(CheckpointError):
        main(["--debug", "eval", str(ck), *EVAL_ARGS])


@pytest.mark.parametrize("how", list(BREAKS))
def test_scan_skips_a_bad_checkpoint_and_scans_the_others(run, capsys, how):
    bad = rh.list_checkpoints(run)[1]
    break_checkpoint(bad, how)
    code, stdout, err = cli(["scan", run, *SCAN_ARGS], capsys)
    assert code == 1
    assert "Traceback" not in err
    skipped = [l for l in err.splitlines() if l.startswith("skipped ")]
    assert len(skipped) == 1 and BREAKS[how] in skipped[0] and str(bad) in skipped[0], err
    assert err.splitlines()[-1] == "error: 1 checkpoint(s) could not be read and were skipped"
    assert "3 checkpoint(s): 2 scored, 0 cached, 1 skipped" in stdout
    scores = pd.read_parquet(run / "scan" / "scores.parquet")
    assert sorted(scores.step.unique()) == [0, 4]
    ck = pd.read_parquet(run / "scan" / "checkpoints.parquet").set_index("step")
    assert ck.status.to_dict() == {0: "ok", 2: "skipped", 4: "ok"}


def test_scan_with_every_checkpoint_bad_writes_nothing(run, capsys):
    for ck in rh.list_checkpoints(run):
        break_checkpoint(ck, "truncated_weights")
    code, _, err = cli(["scan", run, *SCAN_ARGS], capsys)
    assert code == 2
    assert_one_line_error(err, "none of the 3 checkpoint(s) can be loaded", "step_000000/model.safetensors",
                          "unreadable safetensors")
    assert not (run / "scan").exists()


# ---- bad arguments ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    return write_preset(tmp_path_factory.mktemp("rel_preset") / "micro.json",
                        tc=TC.replace(steps=1, save_every=1, eval_every=1, eval_samples=1))


def _files(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e. ".encode("latin-1") * 50)
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_text("  \n\t\n")
    (tmp_path / "nul.txt").write_bytes(b"text\x00" * 50)
    d = tmp_path / "folder"
    d.mkdir(exist_ok=True)
    (d / "a.txt").write_text("Good text. " * 50)
    (d / "b.md").write_bytes(b"\xff\xfe bad utf8 \x80")
    return tmp_path


TRAIN_BAD = {  # argv -> what the error says
    "steps_zero": (["--steps", "0"], "steps: must be >= 1"),
    "steps_negative": (["--steps", "-3"], "steps: must be >= 1"),
    "steps_not_int": (["--steps", "ten"], "'--steps': 'ten' is not a valid integer"),
    "window_zero": (["--window", "0"], "window: must be >= 1"),
    "window_float": (["--window", "2.5"], "'--window': '2.5' is not a valid integer"),
    "window_over_context": (["--window", "200", "--context-len", "150"], "larger than the context length 150"),
    "context_zero": (["--context-len", "0"], "context_len: must be >= 1"),
    "context_huge": (["--context-len", str(10**9)], "GiB of activations"),
    "batch_zero": (["--batch-size", "0"], "batch_size: must be >= 1"),
    "batch_indivisible": (["--grad-accum", "3"], "not divisible"),
    "lr_nan": (["--lr", "nan"], "lr: must be a finite number"),
    "lr_negative": (["--lr", "-0.1"], "lr: must be > 0"),
    "fraction_over_one": (["--niah-fraction", "1.5"], "niah_fraction: must lie in [0, 1]"),
    "save_every_zero": (["--save-every", "0"], "save_every: must be >= 1"),
    "stop_at_past_end": (["--stop-at", "5"], "stop_at: must lie in [0, steps=1]"),
    "seed_negative": (["--seed", "-1"], "seed: must be >= 0"),
    "seed_overflow": (["--seed", str(2**70)], "seed: must be < 2**63"),
    "layout_letter": (["--layout", "SSQF"], "unknown letter(s) 'Q'"),
    "layout_empty": (["--layout", " "], "layout: empty"),
    "layout_unicode": (["--layout", "\u017fF"], "unknown letter"),  # 'ſ'.upper() == 'S'
    "pos_kind": (["--pos", "M=rope"], "'M' is not an attention kind"),
    "pos_value": (["--pos", "F=alibi"], "use one of"),
    "variant": (["--variant", "single_9"], "variant: unknown 'single_9'"),
    "device": (["--device", "tpu"], "device: 'tpu'"),
    "haystack_latin1": (["--haystack", "{d}/latin1.txt"], "latin1.txt is not UTF-8 text"),
    "haystack_empty": (["--haystack", "{d}/empty.txt"], "empty.txt is empty"),
    "haystack_blank": (["--haystack", "{d}/blank.txt"], "blank.txt is empty"),
    "haystack_nul": (["--haystack", "{d}/nul.txt"], "nul.txt is not a text file"),
    "haystack_folder_bad_file": (["--haystack", "{d}/folder"], "b.md is not UTF-8 text"),
    "haystack_missing": (["--haystack", "{d}/missing.txt"], "neither a built-in haystack"),
    "haystack_no_name": (["--haystack", ""], "haystack: empty name"),
    "preset_missing": (["--preset", "nope"], "preset: unknown 'nope'"),
    "unknown_option": (["--stpes", "3"], "no such option: --stpes"),
}


@pytest.mark.parametrize("case", list(TRAIN_BAD))
def test_train_bad_argument(tmp_path, preset, capsys, case):
    argv, expect = TRAIN_BAD[case]
    d = _files(tmp_path)
    out = tmp_path / "out"
    argv = [a.replace("{d}", str(d)) for a in argv]
    if "--preset" not in argv:
        argv = ["--preset", preset, *argv]
    code, _, err = cli(["train", "--out", out, "--no-progress", *argv], capsys)
    assert code == 2
    assert_one_line_error(err, expect)
    assert not out.exists()


OTHER_BAD = {  # argv ({ck}: the last checkpoint, {run}, {d}: a folder of odd files) -> the error says
    "eval_context_over_model": (["eval", "{ck}", *EVAL_ARGS, "--context-lens", "100000"], "max_seq_len=256"),
    "eval_context_zero": (["eval", "{ck}", *EVAL_ARGS, "--context-lens", "0"], "context_len"),
    "eval_context_not_int": (["eval", "{ck}", *EVAL_ARGS, "--context-lens", "1e3"], "comma-separated integers"),
    "eval_context_empty": (["eval", "{ck}", *EVAL_ARGS, "--context-lens", ","], "comma-separated integers"),
    "eval_depth": (["eval", "{ck}", *EVAL_ARGS, "--depths", "1.5"], "depth: must lie in [0, 1]"),
    "eval_n_zero": (["eval", "{ck}", *EVAL_ARGS, "--n", "0"], "'--n': 0 is not in the range"),
    "eval_loss_rows_zero": (["eval", "{ck}", *EVAL_ARGS, "--loss-rows", "0"], "'--loss-rows'"),
    "eval_loss_len_zero": (["eval", "{ck}", *EVAL_ARGS, "--loss-len", "0"], "'--loss-len'"),
    "eval_window_zero": (["eval", "{ck}", *EVAL_ARGS, "--full-window", "0"], "receptive field"),
    "eval_text_latin1": (["eval", "{ck}", *EVAL_ARGS, "--text", "{d}/latin1.txt"], "not UTF-8 text"),
    "eval_text_empty": (["eval", "{ck}", *EVAL_ARGS, "--text", "{d}/empty.txt"], "empty.txt is empty"),
    "eval_out_is_file": (["eval", "{ck}", *EVAL_ARGS, "--out", "{d}/empty.txt"], "exists and is not a folder"),
    "eval_missing": (["eval", "{d}/nothing", *EVAL_ARGS], "no such checkpoint or run folder"),
    "eval_not_a_checkpoint": (["eval", "{d}/folder", *EVAL_ARGS], "folder/config.json: missing"),
    "ablate_top_k_zero": (["ablate", "{ck}", *ABLATE_ARGS, "--top-k", "0"], "'--top-k'"),
    "ablate_context_over_model": (["ablate", "{ck}", *ABLATE_ARGS, "--context-lens", "4096"], "max_seq_len=256"),
    "ablate_metric": (["ablate", "{ck}", *ABLATE_ARGS, "--metric", "magic"], "'--metric'"),
    "patch_context_over_model": (["patch", "{ck}", *PATCH_ARGS, "--context-len", "4096"], "max_seq_len=256"),
    "patch_depth": (["patch", "{ck}", *PATCH_ARGS, "--depth", "-1"], "depth"),
    "patch_kind": (["patch", "{ck}", *PATCH_ARGS, "--kind", "neurons"], "'--kind'"),
    "scan_context_over_model": (["scan", "{run}", *SCAN_ARGS, "--context-lens", "4096"], "max_seq_len=256"),
    "scan_context_zero": (["scan", "{run}", *SCAN_ARGS, "--context-lens", "0,160"], "context_lens"),
    "scan_depth": (["scan", "{run}", *SCAN_ARGS, "--depths", "0.5,2"], "depths"),
    "scan_n_zero": (["scan", "{run}", *SCAN_ARGS, "--n-per-cell", "0"], "n_per_cell"),
    "scan_workers_zero": (["scan", "{run}", *SCAN_ARGS, "--workers", "0"], "workers"),
    "scan_batch_zero": (["scan", "{run}", *SCAN_ARGS, "--batch-size", "0"], "batch_size"),
    "scan_max_new_zero": (["scan", "{run}", *SCAN_ARGS, "--max-new-tokens", "0"], "max_new_tokens"),
    "scan_threshold_nan": (["scan", "{run}", *SCAN_ARGS, "--threshold", "nan"], "threshold"),
    "scan_haystack_latin1": (["scan", "{run}", *SCAN_ARGS, "--haystack", "{d}/latin1.txt"], "not UTF-8 text"),
    "scan_haystack_empty": (["scan", "{run}", *SCAN_ARGS, "--haystack", "{d}/empty.txt"], "is empty"),
    "scan_variant": (["scan", "{run}", *SCAN_ARGS, "--variant", "x"], "variant: unknown 'x'"),
    "scan_reference_step": (["scan", "{run}", *SCAN_ARGS, "--reference", "7"], "no readable checkpoint at step 7"),
    "scan_reference_path": (["scan", "{run}", *SCAN_ARGS, "--reference", "{d}/empty.txt"], "not a checkpoint folder"),
    "scan_not_a_run": (["scan", "{d}/folder", *SCAN_ARGS], "no checkpoints"),
    "scan_missing": (["scan", "{d}/nothing", *SCAN_ARGS], "no such run directory"),
}


@pytest.mark.parametrize("case", list(OTHER_BAD))
def test_analysis_bad_argument(run, tmp_path, capsys, case):
    d = tmp_path / "files"
    d.mkdir()
    _files(d)
    argv, expect = OTHER_BAD[case]
    sub = {"{ck}": str(rh.list_checkpoints(run)[-1]), "{run}": str(run), "{d}": str(d)}
    for k, v in sub.items():
        argv = [a.replace(k, v) for a in argv]
    before, files = tree(run), tree(d)
    code, _, err = cli(argv, capsys)
    assert code == 2
    assert_one_line_error(err, expect)
    assert tree(run) == before and tree(d) == files and not (run / "scan").exists()  # nothing written


# ---- fuzz -------------------------------------------------------------------------------------
LETTERS = "FSMDLfsx ſ0-"
fuzz_int = st.one_of(st.integers(-3, 400), st.integers(-2**70, 2**70), st.text(string.printable, max_size=5))


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(layout=st.one_of(st.none(), st.sampled_from(["SF", "SSF", "sf", " S F ", "F", "MF", "SD", "LF"]),
                        st.text(LETTERS, max_size=6), st.text(max_size=4)),
       window=st.one_of(st.none(), st.integers(1, 160), fuzz_int),
       pos=st.one_of(st.none(), st.sampled_from(["F=nope", "S=rope,F=nope", "F=", "=", "F=rope,F=nope",
                                                 "X=rope", "f=NOPE", "F:nope", ""]), st.text(max_size=8)),
       context_len=st.one_of(st.none(), st.integers(130, 300), fuzz_int),
       steps=st.one_of(st.none(), st.integers(1, 5), fuzz_int))
def test_fuzz_train_options(tmp_path_factory, preset, capsys, layout, window, pos, context_len, steps):
    """Any option values: success, or exit 2 with one ``error:`` line and no --out folder.
    ``--stop-at 0`` keeps valid cases cheap (the run stops after its step-0 checkpoint)."""
    out = tmp_path_factory.mktemp("fuzz") / "out"
    argv = ["train", "--preset", preset, "--out", out, "--no-progress", "--stop-at", "0"]
    for flag, v in (("--layout", layout), ("--window", window), ("--pos", pos),
                    ("--context-len", context_len), ("--steps", steps)):
        if v is not None:
            argv += [flag, str(v)]
    if "\x00" in "".join(map(str, argv)):  # no OS passes a NUL inside an argument
        return
    code, _, err = cli(argv, capsys)
    assert "Traceback" not in err
    if code == 0:
        assert rh.list_checkpoints(out)[-1].name == "step_000000"
        rh.load_checkpoint(rh.list_checkpoints(out)[-1])
    else:
        assert code == 2, err
        assert_one_line_error(err)
        assert not out.exists()


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=6),
                           lambda v: st.lists(v, max_size=3) | st.dictionaries(st.text(max_size=6), v, max_size=3),
                           max_leaves=6)


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(section=st.sampled_from(["model", "model", "top", "top", "train"]),
       key=st.sampled_from(["layout", "d_model", "n_heads", "window", "pos", "max_seq_len", "vocab_size",
                            "rope_base", "tie_embeddings", "n_layers", "step", "tokens_seen", "data_seed",
                            "extra", "format", "new_key"]),
       value=json_values)
def test_fuzz_checkpoint_config(base_run, tmp_path_factory, capsys, section, key, value):
    """Any value in a checkpoint's config.json: ``eval`` loads it or fails with one line naming
    config.json or model.safetensors; never a traceback. (``--context-lens 0`` makes a loaded
    checkpoint fail right after loading, so no evaluation runs.)"""
    run = shutil.copytree(base_run, tmp_path_factory.mktemp("fuzzck") / "run")
    ck = rh.list_checkpoints(run)[-1]
    meta = json.loads((ck / "config.json").read_text())
    target = meta if section == "top" else meta.setdefault(section, {}) if section == "model" else meta
    if section == "train":
        meta["train"] = value if not isinstance(value, dict) else {key: value}
    else:
        target[key] = value
    (ck / "config.json").write_text(json.dumps(meta))  # NaN/Infinity become non-standard JSON tokens
    code, _, err = cli(["eval", ck, *EVAL_ARGS, "--context-lens", "0"], capsys)
    assert code == 2
    assert_one_line_error(err)
    line = err.strip().splitlines()[-1]
    assert str(ck / "config.json") in line or str(ck / "model.safetensors") in line \
        or line.startswith("error: context_len: must be a positive integer"), line
