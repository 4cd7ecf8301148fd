"""Issue 17, item 3: checkpoints, references and scan tables of another model shape give a
clear message naming the field or both shapes (not a tensor-size RuntimeError or an IndexError)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

import retrieval_heads as rh
from tests.reliability_util import ABLATE_ARGS, SCAN_ARGS, TINY, assert_one_line_error, cli, make_run

WIDE = rh.ModelConfig(**{**TINY.to_dict(), "d_model": 32, "d_mlp": 64})
DEEP = rh.ModelConfig(**{**TINY.to_dict(), "layout": "SFF", "n_layers": None})


def _save(cfg, run, step, seed=1):
    torch.manual_seed(seed)
    rh.save_checkpoint(run, step, rh.HybridLM(cfg), tokens_seen=100 * step)
    return run / f"step_{step:06d}"


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("rel_shapes") / "run", steps=(0, 2))


@pytest.fixture
def run(base_run, tmp_path):
    return shutil.copytree(base_run, tmp_path / "run")


@pytest.mark.parametrize("cfg,field", [(WIDE, "d_model 32 differs from the run's 16 (step_000000)"),
                                       (DEEP, "layout 'SFF' differs from the run's 'SF' (step_000000)")])
def test_scan_skips_a_checkpoint_of_another_shape(run, capsys, cfg, field):
    other = _save(cfg, run, 4)
    code, stdout, err = cli(["scan", run, *SCAN_ARGS], capsys)
    assert code == 1
    assert "Traceback" not in err
    skipped = [l for l in err.splitlines() if l.startswith("skipped ")]
    assert skipped == [f"skipped step_000004: {other / 'config.json'}: {field}"], err
    assert err.splitlines()[-1] == "error: 1 checkpoint(s) could not be read and were skipped"
    assert "3 checkpoint(s): 2 scored, 0 cached, 1 skipped" in stdout
    assert sorted(pd.read_parquet(run / "scan" / "scores.parquet").step.unique()) == [0, 2]


def test_scan_reference_of_another_shape_is_refused_before_writing(run, tmp_path, capsys):
    other = _save(WIDE, tmp_path / "other", 0)
    code, _, err = cli(["scan", run, *SCAN_ARGS, "--reference", other], capsys)
    assert code == 2
    assert_one_line_error(err, f"reference: {other / 'config.json'}: d_model 32 differs from the run's 16 "
                               "(step_000000)")
    assert not (run / "scan").exists()


def test_ablate_with_scores_of_another_model(run, tmp_path, capsys):
    assert cli(["scan", run, *SCAN_ARGS], capsys)[0] == 0
    other = _save(DEEP, tmp_path / "deep", 2)
    code, _, err = cli(["ablate", other, *ABLATE_ARGS, "--scores", run, "--out", tmp_path / "out"], capsys)
    assert code == 2
    table = run / "scan" / "scores.parquet"
    assert_one_line_error(err, f"{table}: the scores are for 2 layers x 2 heads (layers 0..1, heads 0..1) but "
                               "the model has 3 layers x 2 heads")
    assert not (tmp_path / "out").exists()


def test_ablate_with_scores_out_of_range(run, tmp_path, capsys):
    """A bare table (no scan.json beside it) whose rows name a layer the model lacks."""
    assert cli(["scan", run, *SCAN_ARGS], capsys)[0] == 0
    df = pd.read_parquet(run / "scan" / "scores.parquet")
    df = pd.concat([df, df.assign(layer=df.layer + 2)])
    table = tmp_path / "t" / "scores.parquet"
    table.parent.mkdir()
    df.to_parquet(table)
    ck = rh.list_checkpoints(run)[-1]
    code, _, err = cli(["ablate", ck, *ABLATE_ARGS, "--scores", table, "--out", tmp_path / "out"], capsys)
    assert code == 2
    assert_one_line_error(err, f"{table}: the scores are for 4 layers x 2 heads (layers 0..3, heads 0..1) but "
                               "the model has 2 layers x 2 heads")
