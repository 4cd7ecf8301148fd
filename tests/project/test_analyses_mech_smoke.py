"""The mechanism / design analysis scripts run end to end in --smoke mode on a micro-trained
tiny checkpoint and write their tables, figures and a results.json with the documented keys."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from helpers import load_analysis
import pytest

import retrieval_heads as rh

ANALYSES = Path(__file__).resolve().parents[2] / "analyses"


load = load_analysis


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    """The tiny preset (SSSF, NoPE F), 2 steps at context 160: a real checkpoint in seconds."""
    model_cfg, train_cfg = rh.train.presets.load_preset("tiny")
    train_cfg = train_cfg.replace(steps=2, context_len=160, batch_size=4, eval_every=2, eval_samples=2,
                                  save_every=2, save_log_spaced=False, device="cpu")
    out = tmp_path_factory.mktemp("micro") / "run"
    rh.train.loop.train(model_cfg, train_cfg, out, progress=False, log=lambda *a: None)
    return out


def common_keys(res, name, mode="smoke"):
    assert res["analysis"] == name and res["mode"] == mode
    assert {"command", "machine", "wall_s", "files"} <= set(res)
    assert res["machine"]["device"] == "cpu"


def check_files(out: Path, res):
    for f in res["files"]:
        assert (out / f).is_file(), f
    assert any(f.endswith(".html") for f in res["files"])
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(res))


def test_mechanism_smoke(micro_run, tmp_path):
    out = tmp_path / "mech"
    res = load("mechanism").main(["--smoke", "--run", str(micro_run), "--out", str(out)])
    common_keys(res, "mechanism")
    check_files(out, res)
    assert res["step"] == 2 and res["layout"] == "SSSF" and res["n_F_heads"] == 4
    assert len(res["scores"]["mass"]) == 4 and len(res["scores"]["copy"][0]) == 4
    abl = pd.read_csv(out / "ablation.csv")
    assert {"condition", "k", "heads", "context_len", "accuracy", "answer_loss", "long_loss", "method"} <= set(abl)
    assert {"none", "top_full", "swa", "random_any"} <= set(abl["condition"])
    assert abl["accuracy"].between(0, 1).all() and (abl["long_loss"] > 0).all()
    k = str(res["ks"][0])
    assert "none" in res["ablation"]["zero"][k] and "top_full" in res["ablation"]["zero"][k]
    rf = pd.read_csv(out / "receptive_field.csv")
    assert set(rf["module"]) == {"none", "full", "efficient"}
    assert {"window", "context_len", "accuracy", "long_loss"} <= set(rf)
    sc = pd.read_csv(out / "scores.csv")
    assert set(sc["metric"]) == {"mass", "copy"} and len(sc) == 2 * 4 * 4


def test_probing_smoke(micro_run, tmp_path):
    out = tmp_path / "probe"
    res = load("probing").main(["--smoke", "--run", str(micro_run), "--out", str(out)])
    common_keys(res, "probing")
    check_files(out, res)
    hard = res["values"]["hard"]
    assert len(hard) == 8 and len({v[:-1] for v in hard}) == 1 and len(set(hard)) == 8
    df = pd.read_csv(out / "probes.csv")
    assert set(df["task"]) == {"hard", "easy"}
    assert set(df["hook"]) == {"hook_embed"} | {f"blocks.{l}.hook_resid_post" for l in range(4)}
    assert df["test_acc"].between(0, 1).all() and (df["chance"] == 0.125).all()
    assert set(res["final_test_acc"]) == {"hard", "easy"}
    assert {"niah_acc", "attn_value_span", "attn_first_token"} <= set(df)
    assert df["attn_first_token"].between(0, 1).all() and (df["attn_first_token"] <= df["attn_value_span"] + 1e-6).all()


def test_probe_fits_separable_data():
    import torch

    probing = load("probing")
    g = torch.Generator().manual_seed(0)
    y = torch.arange(160) % 8
    X = torch.randn(160, 16, generator=g) * 0.3 + torch.nn.functional.one_hot(y, 16).float() * 3
    tr, te = probing.split(y, 0.3, 0)
    assert len(set(tr.tolist()) & set(te.tolist())) == 0 and len(tr) + len(te) == 160
    pred = probing.fit_probe(X[tr], y[tr], 8, 1e-3)
    assert float((pred(X[te]) == y[te]).float().mean()) == 1.0


def test_gradient_influence_smoke(micro_run, tmp_path):
    out = tmp_path / "gi"
    mod = load("gradient_influence")
    res = mod.main(["--smoke", "--runs", str(micro_run), f"{micro_run}@0", "--out", str(out)])
    common_keys(res, "gradient_influence")
    check_files(out, res)
    df = pd.read_csv(out / "influence.csv")
    assert {"run", "source", "objective", "distance", "grad_norm", "grad_norm_rel"} <= set(df)
    assert df["run"].nunique() == 2 and set(df["objective"]) == {"logit_sum", "nll"}
    assert (df["grad_norm"] >= 0).all() and df["distance"].max() == 159
    s = res["summary"][0]
    assert 0 <= s["beyond_window_share"] <= 1 and 0 <= s["d50"] <= s["d90"] <= 159
    assert abs(sum(s["share_by_distance"].values()) - 1) < 1e-3 and "[0,20)" in s["share_by_distance"]


def test_nope_smoke(micro_run, tmp_path):
    out = tmp_path / "nope"
    res = load("nope").main(["--smoke", "--out", str(out)])  # trains two 2-step runs itself
    common_keys(res, "nope")
    check_files(out, res)
    assert set(res["runs"]) == {"rope", "nope"}
    assert "F=rope" in res["info"]["rope"]["model"] and "F=nope" in res["info"]["nope"]["model"]
    assert set(res["short_context_loss"]) == {"rope", "nope"}
    assert all(len(v) == 2 for v in res["niah_acc"].values())  # 1x and 2x in smoke mode
    niah = pd.read_csv(out / "niah.csv")
    assert {"pos_F", "context_len", "depth", "accuracy"} <= set(niah)
