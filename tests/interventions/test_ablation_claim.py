"""Issue #5's claim on a trained checkpoint: ablating the top retrieval heads of the
full-attention layer drops NIAH accuracy far more than ablating as many SWA heads.

The fast tests use the shipped checkpoint ``tests/fixtures/tiny_deep`` (the ``tiny-deep``
preset trained for 1600 steps; see its README). The slow test retrains that preset."""

from pathlib import Path

import pytest

import retrieval_heads as rh
from retrieval_heads.interventions import ablation_experiment, heads_of_kind, retrieval_head_scores, summarize

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_deep" / "step_001600"
DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)


@pytest.fixture(scope="module")
def model():
    return rh.load_checkpoint(FIXTURE)


def _claim(model, k, n_random, n=2):
    df = ablation_experiment(model, k=k, method="zero", context_lens=(160,), depths=DEPTHS, n=n,
                             n_random=n_random, conditions=("none", "top_full", "swa"), progress=False)
    s = summarize(df).set_index("condition")
    return s, df


def test_fixture_is_a_trained_retrieval_model(model):
    assert model.cfg.layout == "SSSSSF" and model.cfg.n_heads == 8
    batch = rh.tasks.niah_batch(n=16, context_len=160, seed=7919)
    mass = retrieval_head_scores(model, batch, method="mass")
    # retrieval lives in the full-attention layer: SWA heads cannot see the needle at all
    s_heads = heads_of_kind(model, "S")
    assert max(float(mass[l, h]) for l, h in s_heads) == 0.0
    assert float(mass[5].max()) > 0.9
    grid = rh.eval.niah_grid(model, [160], list(DEPTHS), n=2, progress=False)
    assert grid["accuracy"].mean() >= 0.8


@pytest.mark.parametrize("k", [1, 2])
def test_top_full_attention_heads_matter_far_more_than_as_many_swa_heads(model, k):
    s, df = _claim(model, k, n_random=4)
    base = s.loc["none", "accuracy"]
    top = s.loc["top_full", "accuracy"]
    swa = s.loc["swa", "accuracy"]  # mean over 4 draws of k random SWA heads
    assert base >= 0.8
    assert set(df[df["condition"] == "top_full"]["kinds"]) == {"F"}
    assert set(df[df["condition"] == "swa"]["kinds"]) == {"S"}
    assert top <= 0.2, s
    assert swa >= base - 0.25, s
    assert (base - top) - (base - swa) >= 0.5, s


@pytest.mark.slow
def test_tiny_deep_preset_retrains_to_the_same_claim(tmp_path):
    """Retrain the preset (about 7-9 CPU-minutes) and check NIAH forms and the claim holds."""
    from retrieval_heads.train.loop import train
    from retrieval_heads.train.presets import load_preset

    mc, tc = load_preset("tiny-deep")
    train(mc, tc.replace(device="cpu"), tmp_path / "run", progress=False, log=lambda *a: None)
    m = rh.load_checkpoint(rh.list_checkpoints(tmp_path / "run")[-1])
    s, _ = _claim(m, 2, n_random=4)
    assert s.loc["none", "accuracy"] >= 0.8, s
    assert (s.loc["none", "accuracy"] - s.loc["top_full", "accuracy"]) - \
        (s.loc["none", "accuracy"] - s.loc["swa", "accuracy"]) >= 0.5, s
