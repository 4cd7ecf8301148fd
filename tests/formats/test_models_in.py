"""Models in: ``rh.retrieval_scores`` / ``rh.score_heads`` accept a ``HybridLM``, an ``HFModel``, an HF
``AutoModelForCausalLM`` instance and a TransformerLens ``TransformerBridge`` (rows and scores equal
to the adapter's), and refuse anything else in one line naming the accepted kinds."""

import pytest
import torch

import retrieval_heads as rh
from retrieval_heads import hf
from retrieval_heads.detect.rows import as_row_source
from retrieval_heads.hf.adapt import model_kind
from retrieval_heads.hf.testing import save_tiny


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny("qwen3", tmp_path_factory.mktemp("q3"))


def test_bridge_and_hf_instance_score_like_the_adapter(ckpt):
    ref = hf.load_hf(ckpt, device="cpu", attn_implementation="eager")
    batch = hf.hf_needle_batch(ref.tokenizer, n=2, context_len=160, seed=0)
    want = rh.score_heads(ref, batch, methods=("copy", "mass"))
    bridge = hf.load_bridge(ckpt, device="cpu")
    assert model_kind(bridge) == "bridge"
    with rh.hf.adapt.adapted(bridge) as m:
        rows = m.prefill_rows(batch.tokens, batch.query_pos[:, None])
    ref_rows = ref.prefill_rows(batch.tokens, batch.query_pos[:, None])
    assert rows.keys() == ref_rows.keys()
    for l in rows:
        torch.testing.assert_close(rows[l], ref_rows[l], atol=1e-5, rtol=1e-4)
    got = rh.score_heads(bridge, batch, methods=("copy", "mass"))
    for metric in ("copy", "mass", "entropy"):
        torch.testing.assert_close(got.scores(metric), want.scores(metric), atol=1e-5, rtol=1e-4, equal_nan=True)
    raw = hf.load_hf_model(ckpt, device="cpu", attn_implementation="eager")
    assert model_kind(raw) == "hf"
    s = rh.retrieval_scores(raw, batch, method="mass", tokenizer=ref.tokenizer)
    torch.testing.assert_close(s, want.scores("mass"), atol=1e-5, rtol=1e-4, equal_nan=True)
    assert not hasattr(raw.model.layers[0].self_attn, "_rh")  # our hooks came out again


def test_other_objects_are_refused_in_one_line():
    with pytest.raises(TypeError, match=r"^model: got torch.nn.modules.linear.Linear; expected a retrieval_heads "
                                        r"HybridLM, .*TransformerBridge$"):
        rh.retrieval_scores(torch.nn.Linear(2, 2), None)
    with pytest.raises(TypeError, match=r"^model: got builtins.object; the detector reads a HybridLM"):
        as_row_source(object())


def test_scan_of_a_model_object_says_what_to_use():
    m = rh.HybridLM(rh.ModelConfig(layout="SF", d_model=32, n_heads=2, window=4, max_seq_len=64))
    with pytest.raises(TypeError, match=r"^scan: takes a run folder .* got HybridLM; for a model in memory use "
                                        r"rh.score_heads\(model, batch\)$"):
        rh.scan(m)
