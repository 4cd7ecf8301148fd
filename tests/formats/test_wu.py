"""Wu et al.'s head_score JSON: ``retrieval-heads export RUN --format wu`` writes it per scanned
checkpoint; ``rh.detect.load_wu_scores`` reads it back equal to the scan's per-sample copy scores,
whose means are the scan's ``copy`` values; the example file in ``data/`` reads."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import retrieval_heads as rh
from retrieval_heads.cli import main
from retrieval_heads.detect.wu import load_wu_scores, wu_mean_scores, wu_top_heads
from retrieval_heads.pipeline import ScanSettings

DATA = Path(__file__).resolve().parents[2] / "data"
TINY_DEEP = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_deep"


def test_export_reads_back_equal_to_the_scans_per_sample_scores(tmp_path, capsys):
    run = tmp_path / "run"
    (run).mkdir()
    import shutil
    shutil.copytree(TINY_DEEP / "step_001600", run / "step_001600")
    args = ["--context-lens", "160", "--depths", "0.3,0.7", "--n-per-cell", "2", "--no-progress", "--no-report"]
    with pytest.raises(SystemExit) as e:
        main(["scan", str(run), *args])
    assert e.value.code in (0, None)
    with pytest.raises(SystemExit) as e:
        main(["export", str(run), "--format", "wu", "--out", str(tmp_path / "wu")])
    assert e.value.code in (0, None), capsys.readouterr().err
    got = load_wu_scores(tmp_path / "wu" / "step_001600.json")
    # the scan's own per-sample scores: the scan's settings and needle set, scored directly
    state = json.loads((run / "scan" / "scan.json").read_text())
    settings = ScanSettings(**state["settings"])
    model = rh.load_checkpoint(run / "step_001600")
    res = rh.detect.HeadScores.merge([rh.detect.score_heads(model, b, methods=("copy",)) for b in settings.batches()])
    assert res.n_counted > 0
    per = res.per_sample["copy"][res.counted]
    assert set(got) == {(l, h) for l in res.scored_layers for h in range(model.cfg.n_heads)}
    for (l, h), v in got.items():
        assert v == per[:, l, h].tolist()
    scores = pd.read_parquet(run / "scan" / "scores.parquet").query("metric == 'copy'")
    means = wu_mean_scores(got)
    for r in scores.itertuples():
        assert means[(r.layer, r.head)] == pytest.approx(r.value, abs=1e-6)
    assert wu_top_heads(got, 1)[0][2] == pytest.approx(scores["value"].max(), abs=1e-6)


def test_example_head_score_file_and_bad_files(tmp_path):
    s = load_wu_scores(DATA / "wu_head_score.json")
    assert all(isinstance(k, tuple) and len(k) == 2 for k in s) and all(s.values())
    (tmp_path / "bad.json").write_text(json.dumps({"3.1": [0.5]}))
    with pytest.raises(ValueError, match=r"bad.json: key '3.1' is not \"layer-head\""):
        load_wu_scores(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text(json.dumps({"3-1": 0.5}))
    with pytest.raises(ValueError, match=r"bad2.json: 3-1: expected a list of numbers"):
        load_wu_scores(tmp_path / "bad2.json")
    assert rh.detect.load_wu_scores is load_wu_scores


def test_export_without_a_scan_says_so(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", str(tmp_path), "--format", "wu", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "scan.json: missing; scan the run first" in capsys.readouterr().err
    torch.manual_seed(0)
