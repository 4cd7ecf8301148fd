"""analyses/seeds.py: the seed aggregation on synthetic numbers whose results are worked out by
hand in the comments (issue 20)."""

from __future__ import annotations

import math

import pytest

from helpers import load_analysis

seeds = load_analysis("seeds")


def test_values_mean_interval_and_n():
    s = seeds.summarize_values({0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 4: 5.0}, n_boot=500)
    # mean 3; sample std sqrt(10 / 4); the interval is stats.bootstrap_ci's doctest (500 resamples, seed 0)
    assert s["mean"] == 3.0 and s["n"] == 5 and s["n_missing"] == 0
    assert s["std"] == pytest.approx(math.sqrt(2.5))
    assert (s["ci_low"], s["ci_high"]) == (2.0, 4.2)
    assert s["per_seed"] == {"0": 1.0, "1": 2.0, "2": 3.0, "3": 4.0, "4": 5.0}


def test_values_interval_of_three_accuracies():
    # seeds 0 / 1 / 1: a resampled mean is 0 with probability (1/3)^3 = 0.037 > 0.025 and 1 with
    # probability (2/3)^3 = 0.30 > 0.025, so the 95% percentile interval is exactly (0, 1)
    s = seeds.summarize_values([0.0, 1.0, 1.0])
    assert s["mean"] == pytest.approx(2 / 3)
    assert (s["ci_low"], s["ci_high"]) == (0.0, 1.0)
    # the same numbers give the same interval (seeded), identical values a point interval
    assert seeds.summarize_values([0.0, 1.0, 1.0]) == s
    same = seeds.summarize_values({7: 0.5, 8: 0.5, 9: 0.5})
    assert (same["ci_low"], same["mean"], same["ci_high"], same["std"]) == (0.5, 0.5, 0.5, 0.0)


def test_values_missing_are_listed_not_averaged():
    s = seeds.summarize_values({0: 1.0, 1: None, 2: float("nan"), 3: 3.0})
    assert s["n"] == 2 and s["n_missing"] == 2 and s["mean"] == 2.0
    assert s["per_seed"]["1"] is None and s["per_seed"]["2"] is None
    empty = seeds.summarize_values({0: None})
    assert empty["n"] == 0 and empty["mean"] is None and empty["ci_low"] is None
    assert seeds.format_summary(empty) == "- (n=0)"
    assert seeds.format_summary(seeds.summarize_values([0.5, 0.5])) == "0.500 [0.500, 0.500] (n=2)"


def test_learning_counts_km_median_and_shares():
    r = seeds.summarize_learning({0: 1000, 1: None, 2: 1500}, 2000)
    # KM: S(1000) = 2/3, seed 1 censored at 2000, S(1500) = 2/3 * 1/2 = 1/3 <= 0.5 -> median 1500
    assert r["learned"] == 2 and r["n"] == 3 and r["learned_text"] == "2/3"
    assert r["km_median"] == 1500.0 and r["km_median_text"] == "step 1500"
    # shares 0.5 and 0.75: one seed within 70% of the budget
    assert r["within_share"] == 1 and r["largest_share"] == 0.75 and r["mean_learned"] == 1250.0
    assert r["per_seed"]["1"] == {"learned": False, "step": None, "censored_at": 2000.0, "share_of_budget": None,
                                  "text": "not learned by step 2000"}
    assert r["per_seed"]["0"]["text"] == "step 1000 (50% of 2000)"


def test_learning_median_not_reached():
    # one of three learns: S stays at 2/3 > 0.5, so the median is not reached (never the budget)
    r = seeds.summarize_learning({0: 1000, 1: None, 2: None}, 2000)
    assert r["km_median"] is None and r["km_median_text"] == "not reached by step 2000"
    assert r["learned_text"] == "1/3"
    none = seeds.summarize_learning({0: None, 1: None}, 500)
    assert none["learned"] == 0 and none["largest_share"] is None and none["mean_learned"] is None


def test_learning_censored_early_is_not_an_event():
    # seed 0 stopped at step 500 without learning (its own budget); seeds 1-3 learned at 600/700/800.
    # KM: 500 censored; S(600) = 2/3, S(700) = 1/3 -> median 700. Counting the censored run as
    # learning at 500 would give S(500) = 3/4, S(600) = 1/2 -> 600: the test tells them apart.
    r = seeds.summarize_learning({0: None, 1: 600, 2: 700, 3: 800}, {0: 500, 1: 1000, 2: 1000, 3: 1000})
    assert r["km_median"] == 700.0
    assert r["per_seed"]["0"]["censored_at"] == 500.0 and r["per_seed"]["3"]["share_of_budget"] == 0.8
    with pytest.raises(ValueError, match="budget"):
        seeds.summarize_learning({0: 10}, 0)


def test_paired_relative_difference():
    # (b - a) / a per seed: 0.1, 0.0, -0.1 -> mean 0; seed 3 has no b and is left out
    r = seeds.paired_relative_difference({0: 2.0, 1: 4.0, 2: 5.0, 3: 1.0}, {0: 2.2, 1: 4.0, 2: 4.5})
    assert r["per_seed"] == {"0": 0.1, "1": 0.0, "2": -0.1} and r["seeds"] == ["0", "1", "2"]
    assert r["mean"] == pytest.approx(0.0) and r["n"] == 3
    assert -0.1 - 1e-12 <= r["ci_low"] < 0 < r["ci_high"] <= 0.1 + 1e-12
    # paired, not per arm: a constant +1% on every seed is +1% exactly, however far apart the seeds are
    r = seeds.paired_relative_difference({0: 2.0, 1: 3.0, 2: 9.0}, {0: 2.02, 1: 3.03, 2: 9.09})
    assert (r["ci_low"], r["mean"], r["ci_high"]) == pytest.approx((0.01, 0.01, 0.01))


def test_reproduced_verdict():
    assert seeds.reproduced({0: True, 1: False, 2: True})["verdict"] == "reproduced on 2 of 3 seeds"
    r = seeds.reproduced({0: True, 1: None, 2: False}, claim="NoPE-F")
    assert (r["k"], r["n"]) == (1, 2)
    assert r["verdict"] == "NoPE-F: reproduced on 1 of 2 seeds (not measurable on seed 1)"
    assert seeds.reproduced({5: True})["verdict"] == "reproduced on 1 of 1 seed"


def test_seed_arguments():
    assert seeds.parse_seeds("0,1,2") == [0, 1, 2] and seeds.parse_seeds("3-5,3") == [3, 4, 5]
    with pytest.raises(ValueError, match="--seeds"):
        seeds.parse_seeds("0,x")
    with pytest.raises(ValueError, match=">= 0"):
        seeds.parse_seeds("-1")
    jobs = seeds.seed_jobs("nope", ["--quick", "--seeds", "0,1", "--seed=4", "--jobs", "2", "--out", "o"], [0, 1], "o")
    assert [j["seed"] for j in jobs] == [0, 1]
    assert jobs[1]["argv"] == ["--quick", "--seed", "1", "--out", "o/seed_1"]
    # {seed} names one run per seed; a path without it is shared by every seed
    jobs = seeds.seed_jobs("probing", ["--run", "r/nope_seed{seed}", "--runs", "a@10", "b{seed}@20"], [2, 5], "o")
    assert jobs[0]["argv"][:5] == ["--run", "r/nope_seed2", "--runs", "a@10", "b2@20"]
    assert jobs[1]["argv"][:5] == ["--run", "r/nope_seed5", "--runs", "a@10", "b5@20"]

    class A:
        seeds, seed = None, 4

    assert seeds.seeds_from_args(A, ["--quick", "--seed", "4"], "quick") == [4]  # the single-seed alias
    assert seeds.seeds_from_args(A, ["--quick"], "quick") == [0, 1, 2]
    assert seeds.seeds_from_args(A, ["--smoke"], "smoke") == [4]
    A.seeds = "1,2"
    assert seeds.seeds_from_args(A, ["--smoke", "--seed", "4"], "smoke") == [1, 2]
    assert seeds.default_jobs(0, 3, "full") == 1 and seeds.default_jobs(0, 3, "smoke") == 1
    assert seeds.default_jobs(2, 3, "quick") == 2 and seeds.default_jobs(0, 1, "quick") == 1
    assert seeds.call_script({"script": "seeds", "fn": "parse_seeds", "argv": "0-1"}) == [0, 1]
