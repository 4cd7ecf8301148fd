"""Activation patching: full-residual patches recover 100%, TL hooks == nnsight, pairs are valid."""

import pytest
import torch

import retrieval_heads as rh
from helpers import tiny_model
from retrieval_heads.interventions import activation_patching, needle_pairs
from retrieval_heads.tasks import TOKENIZER


@pytest.fixture(scope="module")
def model():
    return tiny_model("SDF", n_heads=2, window=8)


@pytest.fixture(scope="module")
def pair():
    return needle_pairs(n=2, context_len=128, seed=0)


def test_pairs_differ_only_in_value(pair):
    diff = (pair.clean != pair.corrupt)
    for i, (a, e) in enumerate(pair.answer_spans):
        assert diff[i, a:e].any() and not diff[i, :a].any() and not diff[i, e:].any()
        v_clean = TOKENIZER.decode(pair.clean[i, a:e].tolist())
        v_corr = TOKENIZER.decode(pair.corrupt[i, a:e].tolist())
        assert v_clean.isdigit() and v_corr.isdigit() and len(v_clean) == len(v_corr) == 7
        assert v_corr[0] != "0"
    assert torch.all(pair.clean_token != pair.corrupt_token)
    p3 = needle_pairs(n=1, context_len=200, seed=1, variant="single_3")  # uuid values keep their format
    a, e = p3.answer_spans[0]
    s = TOKENIZER.decode(p3.corrupt[0, a:e].tolist())
    assert [len(x) for x in s.split("-")] == [8, 4, 4, 4, 12]
    with pytest.raises(ValueError, match="single-value"):
        needle_pairs(n=1, context_len=400, variant="multivalue")


def test_full_residual_patch_recovers_everything(model, pair):
    res = activation_patching(model, pair, kind="resid")
    torch.testing.assert_close(torch.tensor(res.df["recovered"].values), torch.ones(3, dtype=torch.float64),
                               rtol=0, atol=1e-5)
    # patching clean into clean: every patch leaves the clean logit difference unchanged
    same = rh.interventions.NeedlePair(pair.clean, pair.clean, pair.clean_token, pair.corrupt_token,
                                       pair.answer_spans)
    with pytest.raises(ValueError, match="undefined"):
        activation_patching(model, same, kind="heads")
    logits = model(pair.clean)
    ld = rh.interventions.logit_diff(logits, pair)
    assert res.clean_diff == pytest.approx(ld, abs=1e-6)


def test_position_patch_all_positions_of_layer0_is_full(model, pair):
    T = pair.clean.shape[1]
    res = activation_patching(model, pair, kind="position", positions=[0, 5, T - 1])
    df = res.df
    # resid_pre of layer 0 at a position outside the needle value: clean == corrupt there
    assert df[(df.layer == 0) & (df.position == 0)]["recovered"].abs().max() < 1e-6
    assert set(df.columns) >= {"kind", "hook", "layer", "layer_type", "head", "position", "token",
                               "logit_diff", "recovered"}
    assert res.figure.data[0].type == "heatmap"


@pytest.mark.parametrize("kind", ["heads", "resid", "mixer", "position"])
def test_tl_and_nnsight_agree(model, pair, kind):
    pos = [pair.answer_spans[0][0], pair.clean.shape[1] - 1] if kind == "position" else None
    a = activation_patching(model, pair, kind=kind, positions=pos, backend="tl")
    b = activation_patching(model, pair, kind=kind, positions=pos, backend="nnsight")
    assert a.clean_diff == b.clean_diff and a.corrupt_diff == b.corrupt_diff
    assert a.df["logit_diff"].tolist() == b.df["logit_diff"].tolist()  # identical numbers


def test_heads_table_and_figure(model, pair):
    df, fig = activation_patching(model, pair, kind="heads")
    assert len(df) == 2 * 2  # two attention layers x two heads
    assert set(df["layer_type"]) == {"S", "F"}
    z = fig.data[0].z
    assert len(z) == 3 and all(v != v for v in z[1])  # recurrent layer row is NaN
    with pytest.raises(ValueError, match="kind"):
        activation_patching(model, pair, kind="neurons")
    with pytest.raises(ValueError, match="backend"):
        activation_patching(model, pair, kind="resid", backend="pyvene")


@pytest.mark.parametrize("backend", ["tl", "nnsight"])
def test_clean_into_clean_is_identity(model, pair, backend):
    """Patching clean activations into the clean run leaves its logit difference exactly
    unchanged for every patch (recovered = 100% of the clean value)."""
    from retrieval_heads.interventions.patching import _run_nnsight, _run_tl, patch_list

    same = rh.interventions.NeedlePair(pair.clean, pair.clean, pair.clean_token, pair.corrupt_token,
                                       pair.answer_spans)
    run = _run_tl if backend == "tl" else _run_nnsight
    for kind in ("heads", "resid", "mixer"):
        clean_ld, other_ld, diffs = run(model, same, patch_list(model, kind))
        assert clean_ld == other_ld
        assert diffs == pytest.approx([clean_ld] * len(diffs), abs=1e-6)


def test_ablation_context_applies_inside_nnsight_trace(model, pair):
    from retrieval_heads.interventions import ablate_heads
    from retrieval_heads.interventions.patching import _run_nnsight, patch_list

    with ablate_heads(model, [(2, 0)]):
        ref = rh.interventions.logit_diff(model(pair.clean), pair)
        clean_ld, _, _ = _run_nnsight(model, pair, patch_list(model, "resid")[:1])
    assert clean_ld == pytest.approx(ref, abs=1e-6)


def test_patch_at_query_only(model, pair):
    a = activation_patching(model, pair, kind="resid", at=[pair.query_pos])
    # layer 0's residual at the query is the query token's embedding, the same in both prompts
    assert abs(a.df.loc[a.df.layer == 0, "recovered"].item()) < 1e-6
    assert (a.df["at"] == str(pair.query_pos)).all()
    b = activation_patching(model, pair, kind="heads", at=[pair.query_pos], backend="nnsight")
    c = activation_patching(model, pair, kind="heads", at=[pair.query_pos], backend="tl")
    assert b.df["logit_diff"].tolist() == c.df["logit_diff"].tolist()
