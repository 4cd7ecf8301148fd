"""Head selection for ablation: scores (detector, scan table), top-k, controls."""

import math

import pandas as pd
import pytest
import torch

import retrieval_heads as rh
from retrieval_heads.interventions import head_sets, scores_from_scan, top_heads
from retrieval_heads.interventions.scores import retrieval_head_scores


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return rh.HybridLM(rh.ModelConfig(layout="SSDF", d_model=32, n_heads=4, window=16)).eval()


def test_ablation_scores_are_the_detectors(model):
    batch = rh.tasks.niah_batch(n=3, context_len=140, seed=2)
    mine = retrieval_head_scores(model, batch, method="mass")
    theirs = rh.retrieval_scores(model, batch, method="mass")
    assert mine.dtype == torch.float32 and mine.device.type == "cpu"
    assert torch.isnan(mine[2]).all() and torch.isfinite(mine[[0, 1, 3]]).all()  # D layer: no heads
    torch.testing.assert_close(mine, theirs.float(), equal_nan=True)


def test_top_heads_and_control_sets(model):
    S = torch.full((4, 4), math.nan)
    S[0] = torch.tensor([0.9, 0.0, 0.1, 0.2])
    S[1] = torch.tensor([0.0, 0.3, 0.0, 0.0])
    S[3] = torch.tensor([0.5, 0.8, 0.05, 0.7])
    assert top_heads(S, 3) == [(0, 0), (3, 1), (3, 3)]
    assert top_heads(S, 2, model, kinds="F") == [(3, 1), (3, 3)]
    assert top_heads(S, 2, model, kinds="S") == [(0, 0), (1, 1)]
    sets, skipped = head_sets(model, S, 2, n_random=3, seed=0)
    by = {}
    for cond, _, heads in sets:
        by.setdefault(cond, []).append(heads)
    assert by["none"] == [[]] and by["top"] == [[(0, 0), (3, 1)]]
    for h in by["random_same_kind"]:  # one S head and one F head, never a top head
        assert sorted(model.cfg.layer_kind(l) for l, _ in h) == ["F", "S"]
        assert not set(h) & {(0, 0), (3, 1)}
    for h in by["swa"]:
        assert all(model.cfg.layer_kind(l) == "S" for l, _ in h) and (0, 0) not in h
    assert not skipped
    _, skipped = head_sets(model, S, 5)
    assert "top_full" in skipped  # only 4 F heads are scored
    with pytest.raises(ValueError, match="unknown"):
        head_sets(model, S, 1, conditions=("nope",))


def test_scores_from_scan(tmp_path):
    rows = [{"step": s, "tokens_seen": 10 * s, "layer": l, "head": h, "layer_type": "SF"[l], "metric": m,
             "value": float(s + l + h / 10)} for s in (1, 2) for l in (0, 1) for h in (0, 1) for m in ("copy", "mass")]
    (tmp_path / "scan").mkdir()
    pd.DataFrame(rows).to_parquet(tmp_path / "scan" / "scores.parquet")
    S = scores_from_scan(tmp_path, step=1, metric="mass")
    torch.testing.assert_close(S, torch.tensor([[1.0, 1.1], [2.0, 2.1]]))
    assert scores_from_scan(tmp_path)[0, 0] == 2.0  # last step by default
    with pytest.raises(ValueError, match="step 7"):
        scores_from_scan(tmp_path, step=7)
    with pytest.raises(FileNotFoundError):
        scores_from_scan(tmp_path / "nothing")
