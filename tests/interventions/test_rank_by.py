"""`retrieval-heads ablate --rank-by`: heads ranked by a causal or an attention score, the chosen
heads and scores printed and written to ablation.csv, and the tie a ranking had to break
reported. On the trained fixture ``tests/fixtures/tiny_deep`` (see its README)."""

from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from retrieval_heads.cli import cli
from retrieval_heads.interventions import top_heads, top_ties

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_deep" / "step_001600"
FAST = ["--context-lens", "160", "--n", "2", "--n-random", "1", "--no-progress"]


def _ablate(*args):
    return CliRunner().invoke(cli, ["ablate", str(FIXTURE), *args, *FAST])


@pytest.mark.slow  # about 20 s: exact causal scores on 16 prompts, then NIAH under 6 conditions
def test_rank_by_ablation_top1_removes_a_head_that_breaks_retrieval(tmp_path):
    r = _ablate("--rank-by", "ablation", "--top-k", "1", "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert "top by ablation: L4H3 (S)" in r.output  # the head the answer needs most (measured 33 nats)
    df = pd.read_csv(tmp_path / "ablation.csv")
    top = df[df["condition"] == "top"].iloc[0]
    base = df[df["condition"] == "none"].iloc[0]
    assert top["rank_by"] == "ablation" and top["head_scores"].startswith("L4H3=")
    assert base["accuracy"] >= 0.9 and top["accuracy"] <= 0.2, df[["condition", "heads", "accuracy"]]
    # the best full-attention head by ablation breaks retrieval too
    full = df[df["condition"] == "top_full"].iloc[0]
    assert full["heads"] == "L5H2" and full["accuracy"] <= 0.2


def test_rank_by_copy_reports_the_tie_it_broke():
    r = _ablate("--rank-by", "copy", "--top-k", "1")
    assert r.exit_code == 0, r.output
    assert "tie: 5 heads score copy 1.000 (L5H2, L5H3, L5H5, L5H6, L5H7) for 1 place(s)" in r.output
    assert "took L5H2" in r.output


def test_tie_break_is_by_layer_then_head_and_is_deterministic():
    s = torch.tensor([[0.25, 0.5], [0.5, 0.5]])
    assert top_heads(s, 2) == [(0, 1), (1, 0)]
    assert top_ties(s, 2) == {"value": 0.5, "tied": [(0, 1), (1, 0), (1, 1)], "chosen": [(0, 1), (1, 0)],
                              "places": 2}
    assert top_ties(s, 3) is None  # all three 0.5 heads fit: nothing was decided by the tie-break


@pytest.mark.parametrize("args, msg", [
    (["--rank-by", "nonsense"], "Invalid value for '--rank-by'"),
    (["--rank-by", "copy", "--metric", "mass"], "disagree"),
])
def test_bad_rank_by_is_a_one_line_error(args, msg):
    r = _ablate(*args)
    assert r.exit_code != 0 and msg in r.output
