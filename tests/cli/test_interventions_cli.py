"""`retrieval-heads eval / ablate / patch` on a small saved checkpoint; one-line errors."""

import json

import pytest
import torch

import retrieval_heads as rh
from retrieval_heads.cli import main
from retrieval_heads.storage.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = rh.ModelConfig(layout="SSF", d_model=32, n_heads=2, window=16, max_seq_len=320)
    d = tmp_path_factory.mktemp("run")
    save_checkpoint(d, 10, rh.HybridLM(cfg), train_cfg=rh.TrainConfig(context_len=128), tokens_seen=1280)
    return d


def _run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_eval_cli(run_dir, tmp_path, capsys):
    code, out, err = _run(["eval", str(run_dir), "--context-lens", "128,256", "--depths", "0.5", "--n", "1",
                           "--loss-rows", "2", "--out", str(tmp_path), "--no-progress"], capsys)
    assert code == 0, err
    assert "NIAH accuracy" in out and "short-context loss (128 tokens)" in out
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["step"] == 10 and s["long_len"] == 256
    assert (tmp_path / "niah.csv").exists() and (tmp_path / "loss.csv").exists()
    code, out, err = _run(["eval", str(run_dir / "step_000010"), "--context-lens", "128", "--depths", "0.5",
                           "--n", "1", "--loss-rows", "1", "--full-window", "8", "--efficient-window", "4",
                           "--no-progress"], capsys)
    assert code == 0, err


def test_ablate_and_patch_cli(run_dir, tmp_path, capsys):
    code, out, err = _run(["ablate", str(run_dir), "--top-k", "1", "--context-lens", "128", "--depths", "0.5",
                           "--n", "1", "--n-random", "1", "--out", str(tmp_path), "--no-progress"], capsys)
    assert code == 0, err
    for cond in ("none", "top", "random_same_kind", "swa"):
        assert cond in out
    assert (tmp_path / "ablation.html").exists()
    code, out, err = _run(["patch", str(run_dir), "--kind", "resid", "--n", "1", "--out", str(tmp_path),
                           "--no-progress"], capsys)
    assert code == 0, err
    assert "logit difference" in out and (tmp_path / "patching.html").exists()


def test_cli_errors_are_one_line(run_dir, tmp_path, capsys):
    code, _, err = _run(["eval", str(tmp_path / "nope")], capsys)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1
    code, _, err = _run(["eval", str(run_dir), "--context-lens", "400", "--no-progress"], capsys)
    last = err.strip().splitlines()[-1]  # after the 'checkpoint ...' note
    assert code == 2 and last.startswith("error:") and "max_seq_len=320" in last
    (tmp_path / "empty").mkdir()
    code, _, err = _run(["ablate", str(tmp_path / "empty")], capsys)
    assert code == 2 and err.startswith("error:")


def test_ablate_refuses_a_missing_scores_path_and_an_impossible_top_k(run_dir, tmp_path, capsys):
    """Issue 17, item 5: a --scores path that does not exist was silently ignored (re-scored,
    exit 0), and --top-k 1000 skipped every condition yet exited 0."""
    args = ["--context-lens", "128", "--depths", "0.5", "--n", "1", "--n-random", "1", "--no-progress"]
    code, out, err = _run(["ablate", str(run_dir), "--scores", str(tmp_path / "missing.parquet"), *args], capsys)
    assert code == 2 and out == ""
    assert err.strip() == f"error: --scores: {tmp_path / 'missing.parquet'}: no such scan table or run folder"
    code, out, err = _run(["ablate", str(run_dir), "--top-k", "1000", *args], capsys)
    assert code == 2 and "NIAH accuracy" not in out
    assert err.strip().splitlines()[-1] == ("error: --top-k: 1000 heads asked for, but the model has 6 attention "
                                            "heads (3 attention layers x 2)")


def test_ablation_under_run_interventions_appears_in_the_run_report(tmp_path, capsys):
    torch.manual_seed(1)
    cfg = rh.ModelConfig(layout="SSF", d_model=32, n_heads=2, window=16, max_seq_len=320)
    run = tmp_path / "run"
    save_checkpoint(run, 10, rh.HybridLM(cfg), train_cfg=rh.TrainConfig(context_len=128), tokens_seen=1280)
    code, _, err = _run(["ablate", str(run), "--top-k", "1", "--context-lens", "128", "--depths", "0.5",
                         "--n", "1", "--n-random", "2", "--out", str(run / "interventions" / "k1_zero"),
                         "--no-progress"], capsys)
    assert code == 0, err
    saved = (run / "interventions" / "k1_zero")
    assert {"ablation.csv", "ablation_summary.csv", "ablation.html"} <= {p.name for p in saved.iterdir()}
    from retrieval_heads.pipeline import build_report

    rh.scan(run, context_lens=(128,), depths=(0.5,), n_per_cell=1, progress=False)
    html = build_report(run).read_text()
    assert "Head ablation (k1_zero)" in html and "K random SWA heads" in html
    # a broken table is reported in the page, not fatal
    bad = run / "interventions" / "broken"
    bad.mkdir()
    (bad / "ablation.csv").write_text("nothing,useful\n1,2\n")
    (run / "interventions" / "odd").mkdir()
    (run / "interventions" / "odd" / "ablation.csv").write_text("condition,draw,accuracy,heads\n1,0,high,\n")
    html = build_report(run).read_text()
    assert html.count("unreadable ablation table") == 2 and "Head ablation (k1_zero)" in html
    # the ablation figure carries plotly.js when the scan has no figure of its own
    from retrieval_heads.pipeline.report import _ablation_sections

    alone = "".join(_ablation_sections(run, first_fig=True))
    assert len(alone) > 1_000_000  # the embedded plotly.js bundle (several MB)
    assert len("".join(_ablation_sections(run, first_fig=False))) < 100_000  # figure only, no bundle


def test_ablation_figure_has_a_bar_per_condition_and_dots_per_draw():
    import pandas as pd

    df = pd.DataFrame({"condition": ["none", "top_full", "swa", "swa", "swa"], "draw": [0, 0, 0, 1, 2],
                       "accuracy": [1.0, 0.0, 0.9, 0.8, 1.0], "heads": ["", "5.2", "1.0", "2.3", "3.1"]})
    fig = rh.plots.ablation_figure(df)
    bar = fig.data[0]
    assert list(bar.x) == ["nothing ablated", "top-K full-attention heads", "K random SWA heads"]
    assert [round(v, 3) for v in bar.y] == [1.0, 0.0, 0.9]
    assert len(fig.data) == 2 and list(fig.data[1].y) == [0.9, 0.8, 1.0]  # only swa has several draws
