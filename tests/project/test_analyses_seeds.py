"""Several seeds in the analysis scripts (issue 20): 2-seed --smoke runs of nope.py and
mechanism.py (per-seed rows and the aggregate schema), and their aggregation on hand-made
per-seed numbers."""

from __future__ import annotations

import json

import pandas as pd

from helpers import load_analysis

SUMMARY = {"per_seed", "n", "n_missing", "mean", "ci_low", "ci_high", "std", "level"}


def test_nope_set_overrides_both_arms_and_refuses_unknown_fields(tmp_path):
    import pytest

    nope = load_analysis("nope")
    with pytest.raises(SystemExit, match=r"--set: unknown model field\(s\) \['n_head'\]"):
        nope.main(["--smoke", "--set", "model.n_head=8", "--out", str(tmp_path / "bad")])
    res = nope.main(["--smoke", "--set", "train.batch_size=2", "--out", str(tmp_path / "ok")])
    assert res["train_config"]["batch_size"] == 2


def test_nope_two_seeds_smoke(tmp_path):
    out = tmp_path / "nope"
    # --jobs 2: the (seed, arm) runs go through the process pool (spawned workers import analyses.nope)
    res = load_analysis("nope").main(["--smoke", "--seeds", "0,1", "--jobs", "2", "--out", str(out)])
    assert res["seeds"] == [0, 1] and res["seed_scope"] == "training data and evaluation prompts"
    assert json.loads((out / "results.json").read_text()) == res
    for f in res["files"]:
        assert (out / f).is_file(), f
    assert "niah_acc" not in res  # the single-seed keys only for one seed: never one seed shown alone
    assert set(res["per_seed"]) == {"0", "1"}
    for s in ("0", "1"):
        p = res["per_seed"][s]
        assert set(p["niah_acc"]) == {"rope", "nope"} and all(len(v) == 2 for v in p["niah_acc"].values())
        assert set(p["short_context_loss"]) == {"rope", "nope"}
        assert p["learned_niah_1x"]["rope"]["text"] == "not learned by step 2"
    assert res["per_seed"]["1"]["runs"]["nope"].endswith("nope_seed1")
    assert res["per_seed"]["0"]["runs"]["nope"].endswith("runs/nope_seed0")  # every seed: ARM_seedS
    # existing runs of every seed through {seed}: evaluated, not trained again
    again = load_analysis("nope").main(["--smoke", "--seeds", "0,1", "--rope", str(out / "runs" / "rope_seed{seed}"),
                                        "--nope", str(out / "runs" / "nope_seed{seed}"), "--out", str(tmp_path / "n2")])
    assert again["seed_scope"] == "evaluation prompts only (given runs)"
    assert again["per_seed"]["1"]["runs"] == res["per_seed"]["1"]["runs"]
    assert again["per_seed"]["1"]["niah_acc"] == res["per_seed"]["1"]["niah_acc"]
    assert not (tmp_path / "n2" / "runs").exists()
    # every table carries the seed: one row per (seed, arm[, length, depth])
    niah = pd.read_csv(out / "niah.csv")
    assert sorted(niah.groupby(["seed", "pos_F"]).size().index.tolist()) == [
        (0, "nope"), (0, "rope"), (1, "nope"), (1, "rope")]
    learned = pd.read_csv(out / "learned.csv")
    assert len(learned) == 4 and not learned["learned"].any() and (learned["budget"] == 2).all()
    assert (learned["rule"] == "mean").all() and learned["learned_step_every"].isna().all()
    assert res["learned_rule"]["name"] == "mean"
    assert set(pd.read_csv(out / "loss.csv")["seed"]) == {0, 1}
    agg = res["aggregate"]
    assert agg["seeds"] == [0, 1]
    for arm in ("rope", "nope"):
        assert list(agg["niah_acc"][arm]) == ["1x (160)", "2x (320)"]
        assert set(agg["niah_acc"][arm]["1x (160)"]) == SUMMARY and agg["niah_acc"][arm]["1x (160)"]["n"] == 2
        assert agg["short_context_loss"][arm]["n"] == 2
        lr = agg["learned_niah_1x"][arm]
        assert lr["learned_text"] == "0/2" and lr["km_median"] is None
        assert lr["km_median_text"] == "not reached by step 2"
    rd = agg["short_loss_relative_difference"]
    assert rd["n"] == 2 and rd["seeds"] == ["0", "1"] and rd["ci_low"] <= rd["mean"] <= rd["ci_high"]
    loss = pd.read_csv(out / "loss.csv").set_index(["seed", "pos_F"])["short_context_loss"]
    assert abs(rd["per_seed"]["1"] - (loss[(1, "nope")] - loss[(1, "rope")]) / loss[(1, "rope")]) < 1e-9
    v = agg["verdicts"]
    assert set(v) == {"both_arms_learn_1x_within_70pct", "nope_better_at_longest", "short_cost_small", "claim"}
    assert v["both_arms_learn_1x_within_70pct"]["verdict"].endswith("reproduced on 0 of 2 seeds")


def test_nope_learned_step_rule():
    nope = load_analysis("nope")
    curve = pd.DataFrame({"step": [100, 200, 300, 400, 500], "niah_acc": [0.0, 0.95, 0.5, 0.92, 1.0]})
    # first hit of 0.9 at 200, but it falls back at 300: learned (stays >= 0.9) from 400
    assert nope.first_step(curve, 0.9) == 200 and nope.learned_step(curve, 0.9) == 400
    assert nope.learned_step(curve.iloc[:3], 0.9) is None  # ends below: censored
    assert nope.learned_step(curve.assign(niah_acc=1.0), 0.9) == 100
    assert nope.learned_step(curve, 0.9, "every") == 400
    # an isolated dip after learning: "every" waits past it, "mean" (the default) does not
    dip = pd.DataFrame({"step": [100, 200, 300, 400, 500, 600], "niah_acc": [0.0, 0.95, 0.85, 1.0, 1.0, 1.0]})
    assert nope.learned_step(dip, 0.9, "every") == 400 and nope.learned_step(dip, 0.9) == 200
    # a relapse that lasts to the end is not learned by either rule
    relapse = pd.DataFrame({"step": [100, 200, 300, 400, 500], "niah_acc": [0.0, 1.0, 1.0, 0.5, 0.5]})
    assert nope.learned_step(relapse, 0.9) is None and nope.learned_step(relapse, 0.9, "every") is None
    import pytest

    with pytest.raises(ValueError, match="learned rule: 'median'; use one of mean, every"):
        nope.learned_step(dip, 0.9, "median")


def test_mechanism_two_seeds_smoke(tmp_path):
    out = tmp_path / "mech"
    res = load_analysis("mechanism").main(["--smoke", "--seeds", "0,1", "--jobs", "1", "--out", str(out)])
    assert res["seeds"] == [0, 1] and set(res["per_seed"]) == {"0", "1"}
    assert json.loads((out / "results.json").read_text()) == res
    for s in (0, 1):  # each seed is a whole one-seed run in its own folder, trained with its seed
        one = json.loads((out / f"seed_{s}" / "results.json").read_text())
        assert one["mode"] == "smoke" and one["step"] == 2
        assert (out / f"seed_{s}" / "ablation.csv").is_file()
        assert json.loads((out / f"seed_{s}" / "run" / "run.json").read_text())["train"]["seed"] == s
        assert res["per_seed"][str(s)]["ablation"] == one["ablation"]
    table = pd.read_csv(out / "ablation_seeds.csv")
    assert list(table["seed"].astype(str)) == ["0", "1", "all"]
    agg = res["aggregate"]
    k = str(res["per_seed"]["0"]["ks"][0])
    assert set(agg["ablation"]["zero"][k]["top_full"]["accuracy"]) == SUMMARY
    assert agg["ablation"]["zero"][k]["top_full"]["accuracy"]["n"] == 2
    # 2-step models answer no needle: the contrast is not measurable on either seed, never a made-up 0
    assert agg["verdicts"]["zero"][k]["verdict"].endswith("reproduced on 0 of 0 seeds (not measurable on seeds 0, 1)")
    assert agg["contrast_swa_minus_top_full"]["zero"][k]["n"] == 0
    assert any(key.startswith("none @") for key in agg["receptive_field_accuracy"])


def test_mechanism_aggregate_hand_made():
    mech = load_analysis("mechanism")

    def seed(none, top, swa):
        rf = [{"module": "none", "window": None, "context_len": 160, "accuracy": none}]
        return {"ks": [1], "receptive_field": rf,
                "ablation": {"zero": {"1": {"none": {"accuracy": none, "long_loss": 2.0},
                                            "top_full": {"accuracy": top, "long_loss": 2.1},
                                            "swa": {"accuracy": swa, "long_loss": 2.2}}}}}

    # seed 0: F ablation costs 0.9, SWA nothing (contrast +0.9); seed 1: unablated 0.3 < 0.5, not
    # measurable; seed 2: the SWA heads cost more (contrast 0.5 - 0.8 = -0.3)
    agg = mech.aggregate({"0": seed(0.9, 0.0, 0.9), "1": seed(0.3, 0.0, 0.3), "2": seed(1.0, 0.8, 0.5)})
    v = agg["verdicts"]["zero"]["1"]
    assert v["verdict"].endswith("reproduced on 1 of 2 seeds (not measurable on seed 1)")
    assert v["per_seed"] == {"0": True, "1": None, "2": False}
    c = agg["contrast_swa_minus_top_full"]["zero"]["1"]
    assert c["n"] == 2 and abs(c["mean"] - 0.3) < 1e-9 and c["per_seed"]["1"] is None
    top = agg["ablation"]["zero"]["1"]["top_full"]["accuracy"]
    assert top["per_seed"] == {"0": 0.0, "1": 0.0, "2": 0.8} and abs(top["mean"] - 0.8 / 3) < 1e-4
    assert agg["unablated_niah"]["n"] == 3 and agg["receptive_field_accuracy"]["none @160"]["n"] == 3


def test_probing_two_seeds_smoke(tmp_path):
    out = tmp_path / "probe"
    res = load_analysis("probing").main(["--smoke", "--seeds", "0,1", "--out", str(out)])
    assert res["seeds"] == [0, 1] and set(res["per_seed"]) == {"0", "1"}
    assert json.loads((out / "results.json").read_text()) == res
    assert res["per_seed"]["0"]["values"] != res["per_seed"]["1"]["values"]  # the value sets follow the seed
    table = pd.read_csv(out / "probes_seeds.csv")
    assert set(table["seed"]) == {0, 1} and set(table["task"]) == {"hard", "easy"}
    agg = res["aggregate"]
    easy = agg["final_test_acc"]["easy"]
    assert set(easy) == {"hook_embed"} | {f"blocks.{l}.hook_resid_post" for l in range(4)}
    assert set(easy["hook_embed"]) == SUMMARY and easy["hook_embed"]["n"] == 2
    assert agg["final_niah"]["n"] == 2 and set(agg["verdicts"]) == {"hard", "easy"}
    # both seeds have a verdict: True / False, or None where no probe reaches twice chance
    assert set(agg["verdicts"]["easy"]["per_seed"]) == {"0", "1"}
    # the runs just trained, named per seed with {seed}: each seed probes its own run
    again = load_analysis("probing").main(["--smoke", "--seeds", "0,1", "--run", str(out / "seed_{seed}" / "run"),
                                           "--out", str(tmp_path / "given")])
    assert [again["per_seed"][s]["run"] for s in ("0", "1")] == [str(out / f"seed_{s}" / "run") for s in (0, 1)]
    assert again["seed_scope"] == "value sets, prompts and splits only (given --run)"
    assert again["per_seed"]["1"]["final_test_acc"] == res["per_seed"]["1"]["final_test_acc"]


def test_probing_only_f_verdict():
    probing = load_analysis("probing")
    acc = {"hook_embed": 0.12, "blocks.0.hook_resid_post": 0.2, "blocks.1.hook_resid_post": 0.1,
           "blocks.2.hook_resid_post": 0.95, "blocks.3.hook_resid_post": 0.9}
    assert probing.only_f_decodes(acc, "SSFS", 0.125) is True
    assert probing.only_f_decodes({**acc, "blocks.1.hook_resid_post": 0.25}, "SSFS", 0.125) is False  # 2x chance
    assert probing.only_f_decodes({**acc, "blocks.3.hook_resid_post": 0.99}, "SSFS", 0.125) is False  # best on S
    assert probing.only_f_decodes(acc, "SSSS", 0.125) is None
    # every probe near chance: not measurable (a tie at 0.135 would otherwise decide the verdict)
    near_chance = {"hook_embed": 0.125, "blocks.1.hook_resid_post": 0.135, "blocks.2.hook_resid_post": 0.135}
    assert probing.only_f_decodes(near_chance, "SSF", 0.125) is None
    assert probing._layer_kinds("layout=SSSF d_model=64 heads=4") == "SSSF"


def test_gradient_influence_two_seeds_smoke(tmp_path):
    out = tmp_path / "gi"
    res = load_analysis("gradient_influence").main(["--smoke", "--seeds", "0,1", "--objective", "nll",
                                                    "--out", str(out)])
    assert res["seeds"] == [0, 1] and json.loads((out / "results.json").read_text()) == res
    assert all(len(rows) == 2 for rows in res["per_seed"].values())  # text and needle, one objective
    agg = res["aggregate"]
    assert [(r["run_index"], r["source"], r["objective"]) for r in agg] == [(0, "needle", "nll"), (0, "text", "nll")]
    share = agg[1]["beyond_window_share"]
    want = [r["beyond_window_share"] for s in ("0", "1") for r in res["per_seed"][s] if r["source"] == "text"]
    assert share["n"] == 2 and abs(share["mean"] - round(sum(want) / 2, 4)) < 1e-9
    table = pd.read_csv(out / "summary_seeds.csv")
    assert list(table["seed"].astype(str)) == ["0", "0", "1", "1", "all", "all"]
    # each seed's own run through {seed}; the over-seeds rows are labelled by the template
    for s in (0, 1):
        (tmp_path / f"r{s}").symlink_to(out / f"seed_{s}" / "run")
    again = load_analysis("gradient_influence").main(["--smoke", "--seeds", "0,1", "--objective", "nll", "--runs",
                                                      str(tmp_path / "r{seed}"), "--out", str(tmp_path / "g2")])
    assert [again["per_seed"][s][0]["run"].split(":")[0] for s in ("0", "1")] == ["r0", "r1"]
    assert {r["run"].split(":")[0] for r in again["aggregate"]} == {"r{seed}"}

    def numbers(rows):
        return [{k: v for k, v in r.items() if k not in ("run", "checkpoint")} for r in rows]

    assert numbers(again["per_seed"]["1"]) == numbers(res["per_seed"]["1"])  # seed 1's run, seed 1's prompts


def test_emergence_two_seeds_smoke(tmp_path):
    out = tmp_path / "emg"
    res = load_analysis("emergence").main(["--smoke", "--seeds", "0,1", "--out", str(out)])
    assert res["seeds"] == [0, 1] and set(res["per_seed"]) == {"0", "1"}
    for s in (0, 1):  # every run of a seed trained with that seed
        assert {r["seed"] for r in res["per_seed"][str(s)]["runs"]} == {s}
        assert (out / f"seed_{s}" / "runs.parquet").is_file()
    lay = res["aggregate"]["layouts"]
    assert set(lay) == {"SF w=8", "MF", "FF"}
    assert lay["MF"]["final_niah_acc"]["n"] == 2 and set(lay["MF"]["final_long_loss"]) == SUMMARY
    assert lay["MF"]["niah50"]["learned_text"] == "0/2" and lay["MF"]["niah50"]["per_seed"]["1"]["censored_at"] == 3
    # F never learns in 3 steps: convergence is not measurable on either seed; F is the reference itself
    assert lay["MF"]["converged_to_F"]["verdict"].endswith("reproduced on 0 of 0 seeds (not measurable on seeds 0, 1)")
    assert lay["FF"]["converged_to_F"] is None
    assert res["aggregate"]["fits"]["F"]["alpha"]["n"] == 2
    table = pd.read_csv(out / "runs_seeds.csv")
    assert list(table["seed"].astype(str)).count("all") == 3 and len(table) == 9


def test_quick_recipe_is_shared_by_nope_probing_and_gradient_influence():
    """nope.py --quick's NoPE-F arm is the run probing.py / gradient_influence.py --quick train
    (common.QUICK_RECIPE), so 'OUT/runs/nope_seed{seed}' can stand in for their training."""
    import argparse

    from analyses.common import DEFAULT_TRAIN, QUICK_RECIPE, preset_configs

    nope = load_analysis("nope")
    a = argparse.Namespace(preset=None, device="cpu", steps=0, window=0, set=None)
    model_cfg, train_cfg = nope.base_configs(a, "quick")
    arm = model_cfg.replace(pos=dict(nope.POS["nope"]))
    for script in ("probing", "gradient_influence"):
        assert load_analysis(script).DEFAULT_TRAIN["quick"] is QUICK_RECIPE
    m2, t2 = preset_configs(DEFAULT_TRAIN["quick"], "cpu")
    assert arm == m2 and train_cfg == t2
    assert (t2.lr_schedule, t2.steps, t2.batch_size, m2.n_heads) == ("wsd", 3600, 8, 8)
    # --set still reaches both arms
    a.set = "train.steps=10"
    assert nope.base_configs(a, "quick")[1].steps == 10
