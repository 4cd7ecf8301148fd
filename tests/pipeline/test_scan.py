"""Checkpoint scans: table schemas, the incremental cache, unreadable checkpoints, parallel
and concurrent scans, formation steps, the CLI (scan, compare, report)."""

import os
import shutil
import threading

import pandas as pd
import pytest
import torch

import retrieval_heads as rh
from retrieval_heads.cli import main
from retrieval_heads.detect import formation_table, run_formation
from retrieval_heads.pipeline import scanner as scan_mod

FAST = dict(context_lens=(150,), depths=(0.3, 0.7), n_per_cell=1, progress=False)


def make_run(path, window=16, steps=(0, 2, 4), layout="SF"):
    """A tiny run: random init, saved, then a few Adam steps on random tokens between saves."""
    torch.manual_seed(0)
    cfg = rh.ModelConfig(layout=layout, d_model=32, n_heads=2, window=window, max_seq_len=256,
                         pos={"F": "nope", "S": "rope"})
    model = rh.HybridLM(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    done = 0
    for s in steps:
        while done < s:
            x = torch.randint(0, 256, (2, 32))
            loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
        rh.save_checkpoint(path, s, model, tokens_seen=64 * s)
    return path


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs") / "base")


@pytest.fixture
def run(base_run, tmp_path):
    return shutil.copytree(base_run, tmp_path / "run")


def test_scan_tables_have_the_schema(run):
    df = rh.scan(run, **FAST)
    d = run / "scan"
    scores = pd.read_parquet(d / "scores.parquet")
    assert list(scores.columns) == ["step", "tokens_seen", "layer", "head", "layer_type", "metric", "value"]
    pd.testing.assert_frame_equal(scores, df)
    assert {"copy", "mass", "entropy", "qk_distance"} <= set(scores.metric)
    assert sorted(scores.step.unique()) == [0, 2, 4]
    assert scores.groupby("step").tokens_seen.first().tolist() == [0, 128, 256]
    assert set(scores.layer_type) == {"S", "F"}
    qk = scores[scores.metric == "qk_distance"]
    assert (qk[qk.step == 0].value == 0).all() and (qk[qk.step == 4].value > 0).all()
    niah = pd.read_parquet(d / "niah.parquet")
    assert list(niah.columns)[:5] == ["step", "tokens_seen", "context_len", "depth", "accuracy"]
    assert len(niah) == 3 * 2 and set(niah.context_len) == {150}
    form = pd.read_parquet(d / "formation.parquet")
    assert {"layer", "head", "layer_type", "formation_step", "formation_tokens"} <= set(form.columns)
    assert len(form) == 4
    meta = __import__("json").loads((d / "formation.json").read_text())
    assert meta["model"]["layout"] == "SF" and meta["model"]["window"] == 16
    assert meta["run"]["step"] is None  # a random model forms no retrieval head
    html = (d / "report.html").read_text()
    assert "plotly" in html and "step" in html
    ck = pd.read_parquet(d / "checkpoints.parquet")
    assert (ck.status == "ok").all() and (ck.n_samples == 2).all() and "n_counted" in ck


def test_rescan_is_a_noop_and_only_new_checkpoints_are_scored(run, monkeypatch):
    rh.scan(run, **FAST)
    d = run / "scan"
    files = sorted(p for p in d.rglob("*") if p.is_file() and p.name != ".lock")
    before = {p: p.stat().st_mtime_ns for p in files}
    calls = []
    real = scan_mod.score_checkpoint
    monkeypatch.setattr(scan_mod, "score_checkpoint", lambda job: calls.append(job) or real(job))
    df = rh.scan(run, **FAST)
    assert calls == [] and df.attrs["scan"]["n_scored"] == 0 and df.attrs["scan"]["unchanged"]
    assert {p: p.stat().st_mtime_ns for p in files} == before
    # a new checkpoint: only it is scored
    model = rh.load_checkpoint(run / "step_000004")
    with torch.no_grad():
        model.blocks[1].attn.W_Q.weight.mul_(1.5)
    rh.save_checkpoint(run, 6, model, tokens_seen=384)
    df = rh.scan(run, **FAST)
    assert [os.path.basename(j["path"]) for j in calls] == ["step_000006"]
    assert sorted(df.step.unique()) == [0, 2, 4, 6]
    # other settings: a separate cache entry, everything rescored
    calls.clear()
    rh.scan(run, **dict(FAST, seed=1))
    assert len(calls) == 4


def test_corrupted_checkpoint_is_skipped_with_nonzero_exit(run, capsys):
    (run / "step_000002" / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(SystemExit) as e:
        main(["scan", str(run), "--context-lens", "150", "--depths", "0.5", "--n-per-cell", "1",
              "--no-progress"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "skipped step_000002" in err and "model.safetensors" in err
    scores = pd.read_parquet(run / "scan" / "scores.parquet")
    assert sorted(scores.step.unique()) == [0, 4]
    ck = pd.read_parquet(run / "scan" / "checkpoints.parquet")
    assert ck.set_index("step").status.to_dict() == {0: "ok", 2: "skipped", 4: "ok"}
    assert "Skipped checkpoints" in (run / "scan" / "report.html").read_text()


def test_first_checkpoint_unreadable_reference_moves_on(run):
    (run / "step_000000" / "config.json").write_text("{not json")
    df = rh.scan(run, **FAST)
    assert df.attrs["scan"]["n_skipped"] == 1
    qk = df[(df.metric == "qk_distance") & (df.step == 2)]
    assert (qk.value == 0).all()  # step 2 became the reference


@pytest.mark.parametrize("ctx", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_workers_give_the_same_tables(base_run, tmp_path, ctx):
    # tests run torch single-threaded (conftest), so forking is safe and quick here; the
    # default "spawn" pays a library import per worker
    a = shutil.copytree(base_run, tmp_path / "a")
    b = shutil.copytree(base_run, tmp_path / "b")
    serial = rh.scan(a, **FAST, report=False)
    parallel = rh.scan(b, **FAST, report=False, workers=2, mp_context=ctx)
    assert parallel.attrs["scan"]["n_scored"] == 3
    pd.testing.assert_frame_equal(serial, parallel)
    for t in ("niah", "formation"):
        pd.testing.assert_frame_equal(pd.read_parquet(a / "scan" / f"{t}.parquet"),
                                      pd.read_parquet(b / "scan" / f"{t}.parquet"))


def test_concurrent_scans_do_not_corrupt(run):
    msgs, results, errors = [], [], []

    def go():
        try:
            results.append(rh.scan(run, **FAST, echo=msgs.append))
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    pd.testing.assert_frame_equal(results[0], results[1])
    assert sorted(r.attrs["scan"]["n_scored"] for r in results) == [0, 3]  # the second waited
    pd.testing.assert_frame_equal(pd.read_parquet(run / "scan" / "scores.parquet"), results[0])
    assert not [p for p in (run / "scan").rglob(".tmp-*")]


def test_formation_steps():
    rows = []
    series = {(0, 0, "F"): [0.0, 0.2, 0.05, 0.3, 0.4], (0, 1, "F"): [0.0, 0.0, 0.0, 0.0, 0.05],
              (1, 0, "S"): [0.5, 0.5, 0.5, 0.5, 0.5], (1, 1, "F"): [float("nan"), 0.2, 0.3, 0.3, 0.3]}
    for (l, h, t), vals in series.items():
        for i, v in enumerate(vals):
            rows.append((i * 10, i * 1000, l, h, t, "copy", v))
    df = pd.DataFrame(rows, columns=["step", "tokens_seen", "layer", "head", "layer_type", "metric", "value"])
    f = formation_table(df, threshold=0.1).set_index(["layer", "head"])
    assert f.loc[(0, 0), "formation_step"] == 30  # dipped below at step 20
    assert not f.loc[(0, 1), "formed"]
    assert f.loc[(1, 0), "formation_step"] == 0
    assert f.loc[(1, 1), "formation_step"] == 10  # NaN counts as not formed
    r = run_formation(f.reset_index(), "F")
    assert (r["step"], r["layer"], r["head"], r["tokens_seen"]) == (10, 1, 1, 1000)
    assert formation_table(df, threshold=0.35).set_index(["layer", "head"]).loc[(0, 0), "formation_step"] == 40


def test_compare_and_report_cli(base_run, tmp_path, capsys):
    a = shutil.copytree(base_run, tmp_path / "w16")
    b = make_run(tmp_path / "w64", window=64, steps=(0, 2))
    for r in (a, b):
        rh.scan(r, **FAST, report=False)
    with pytest.raises(SystemExit) as e:
        main(["report", str(a)])
    assert e.value.code == 0 and (a / "scan" / "report.html").exists()
    out = tmp_path / "cmp.html"
    with pytest.raises(SystemExit) as e:
        main(["compare", str(a), str(b), "--out", str(out)])
    assert e.value.code == 0
    s = pd.read_parquet(tmp_path / "cmp.parquet")
    assert sorted(s.window) == [16, 64] and set(s.layout) == {"SF"}
    assert "Large-Window Laziness" in out.read_text()
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path / "nope")])
    assert e.value.code == 2 and "no scan tables" in capsys.readouterr().err


def test_scan_recurrent_option(tmp_path):
    r = make_run(tmp_path / "rec", layout="MDLF", steps=(0, 1))
    off = rh.scan(r, **FAST, report=False)
    assert set(off.layer_type) == {"F"}  # recurrent layers are not scored by default
    on = rh.scan(r, **FAST, report=False, recurrent=True)
    assert set(on.layer_type) == {"M", "D", "L", "F"}
    qk = on[on.metric == "qk_distance"]
    assert set(qk.layer_type) == {"D", "L", "F"}  # Mamba's shared B/C have no per-head Q/K
    m = on[(on.metric == "mass")]
    assert m.value.between(0, 1).all()
