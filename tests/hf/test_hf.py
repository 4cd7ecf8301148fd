"""Hugging Face checkpoints: layout mapping, offline loading, exact needle spans, O(T) attention
rows that equal HF eager attention, the detector / ablation / patching on HF models.

Everything is built offline: tiny random models (4 layers, d=64) from ``AutoConfig``, and a
BPE tokenizer trained in memory (``retrieval_heads.hf.testing``)."""

import json
import os

import pytest
import torch

import retrieval_heads as rh
from retrieval_heads import hf
from retrieval_heads.hf.model import HFModel
from retrieval_heads.hf.testing import save_tiny, tiny_config, tiny_model, tiny_tokenizer

ARCHS = ["gemma3_text", "qwen3_next", "smollm3", "llama4_text", "jamba", "gemma2", "olmo3", "qwen3", "mistral",
         "cohere2", "qwen3_5_text", "falcon_h1"]

# model_type -> (layout, pos per layer) of its tiny config
EXPECTED = {
    "gemma3_text": ("SSSF", ["rope"] * 4),
    "gemma2": ("SFSF", ["rope"] * 4),
    "olmo3": ("SSSF", ["rope"] * 4),
    "qwen3": ("FFSS", ["rope"] * 4),
    "mistral": ("SSSS", ["rope"] * 4),
    "smollm3": ("FFFF", ["rope", "rope", "rope", "nope"]),
    "llama4_text": ("SSSF", ["rope", "rope", "rope", "nope"]),
    "cohere2": ("SSSF", ["rope", "rope", "rope", "nope"]),
    "qwen3_next": ("DDDF", ["-", "-", "-", "rope"]),
    "qwen3_5_text": ("DDDF", ["-", "-", "-", "rope"]),
    "jamba": ("MFMF", ["-", "nope", "-", "nope"]),
    "falcon_h1": ("FFFF", ["rope"] * 4),
    "mamba2": ("MMMM", ["-"] * 4),
}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tok):
    root = tmp_path_factory.mktemp("hf")
    return {mt: save_tiny(mt, root / mt, tokenizer=tok) for mt in ("gemma3_text", "qwen3_next", "smollm3")}


# --- layout mapping ----------------------------------------------------------------------------
@pytest.mark.parametrize("mt", list(EXPECTED))
def test_layout_of_tiny_configs(mt):
    spec = hf.hf_layout(tiny_config(mt))
    layout, pos = EXPECTED[mt]
    assert spec.layout == layout
    assert spec.pos == pos


def test_layout_details_of_released_configs():
    from transformers import AutoConfig

    g = hf.hf_layout(AutoConfig.for_model("gemma3_text", num_hidden_layers=12, sliding_window=1024))
    assert g.layout == "SSSSSFSSSSSF"
    assert g.layers[0].window == 1024 and g.layers[5].window is None
    assert (g.layers[0].rope_base, g.layers[5].rope_base) == (10_000.0, 1_000_000.0)  # local / global bases
    q = hf.hf_layout(AutoConfig.for_model("qwen3_next"))
    assert q.layout == "DDDF" * 12 and q.layers[3].rotary_fraction == 0.25
    l4 = hf.hf_layout(AutoConfig.for_model("llama4_text"))
    assert l4.layout == "SSSF" * 12 and l4.layers[0].chunk == 8192 and l4.pos_by_kind() == {"S": "rope", "F": "nope"}
    assert any("temperature" in n for n in l4.notes)
    s3 = hf.hf_layout(AutoConfig.for_model("smollm3"))
    assert s3.pos[3] == "nope" and s3.pos[0] == "rope" and s3.pos_by_kind() == {"F": "mixed"}
    assert hf.hf_layout(AutoConfig.for_model("mistral")).layout == "S" * 32
    assert hf.hf_layout(AutoConfig.for_model("jamba")).layout == "MMMMFMMM" * 4
    assert "F+M" in hf.hf_layout(AutoConfig.for_model("falcon_h1")).describe()


def test_layout_unknown_type_is_an_error_and_override_checks_length():
    from transformers import AutoConfig

    cfg = AutoConfig.for_model("lfm2", num_hidden_layers=4, layer_types=["conv", "conv", "full_attention", "conv"])
    with pytest.raises(ValueError, match="unknown layer type 'conv'"):
        hf.hf_layout(cfg)
    assert hf.hf_layout(cfg, layout="MMFM").layout == "MMFM"
    with pytest.raises(ValueError, match="4 layers"):
        hf.hf_layout(cfg, layout="MMF")


# --- loading ---------------------------------------------------------------------------------
def test_load_reads_layout_and_describes(ckpts):
    for mt, want in [("gemma3_text", "SSSF"), ("qwen3_next", "DDDF"), ("smollm3", "FFFF")]:
        m = hf.load_hf(ckpts[mt])
        assert m.layer_types == want and m.cfg.attention_layers == [i for i, c in enumerate(want) if c in "FS"]
        assert os.environ.get("HF_HUB_OFFLINE") == "1"
    text = hf.load_hf(ckpts["smollm3"]).describe()
    assert "layer 3: F nope" in text and "layers 0-2: F rope" in text


def test_hook_names(ckpts):
    m = hf.load_hf(ckpts["qwen3_next"])
    names = set(m.hook_dict)
    assert "blocks.3.attn.hook_z" in names and "blocks.3.attn.hook_pattern" in names
    assert not any(n.startswith("blocks.0.attn") for n in names) and "blocks.0.hook_mixer_out" in names
    x = torch.randint(3, 300, (1, 12))
    _, cache = m.run_with_cache(x)
    assert cache["blocks.3.attn.hook_z"].shape == (1, 12, 4, 16)  # [batch, pos, head, d_head]
    assert cache["blocks.3.attn.hook_pattern"].shape == (1, 4, 12, 12)
    assert cache["blocks.0.hook_resid_pre"].shape == (1, 12, 64)
    assert torch.allclose(cache["blocks.0.hook_resid_post"], cache["blocks.1.hook_resid_pre"])


def _copy_folder(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_missing_files_and_remote_code_are_clear_errors(ckpts, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        hf.load_hf(tmp_path / "nope")
    p = _copy_folder(ckpts["smollm3"], tmp_path / "no_tok")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (p / f).unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        hf.load_hf(p)
    assert hf.load_hf(p, tokenizer=ckpts["smollm3"]).layer_types == "FFFF"
    p = _copy_folder(ckpts["smollm3"], tmp_path / "remote")
    cfg = json.loads((p / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.MyModel"}
    (p / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="--trust-remote-code"):
        hf.load_hf(p)
    p = _copy_folder(ckpts["smollm3"], tmp_path / "pickle")
    (p / "model.safetensors").rename(p / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle-format weights refused"):
        hf.load_hf(p)
    (p / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        hf.load_hf(p)


def test_checkpoint_series_in_training_order(tmp_path, tok):
    for name in ("checkpoint-20", "checkpoint-5", "checkpoint-100"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"model_type": "smollm3"}))
    (tmp_path / "checkpoint-5" / "trainer_state.json").write_text(json.dumps({"num_input_tokens_seen": 640}))
    found = hf.list_hf_checkpoints(tmp_path)
    assert [c.step for c in found] == [5, 20, 100] and found[0].tokens_seen == 640
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "config.json").write_text(json.dumps({"model_type": "smollm3"}))
    with pytest.raises(ValueError, match="cannot order"):
        hf.list_hf_checkpoints(tmp_path)
    (tmp_path / "final" / "trainer_state.json").write_text(json.dumps({"global_step": 300}))
    assert [c.step for c in hf.list_hf_checkpoints(tmp_path)] == [5, 20, 100, 300]
    assert hf.is_hf_path(tmp_path) and not hf.is_hf_path(tmp_path / "checkpoint-5" / "nothing")


# --- needles ---------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["single_1", "single_3", "multivalue", "multikey_2"])
def test_needles_have_exact_spans(tok, variant):
    b = hf.hf_needle_batch(tok, n=4, context_len=240, seed=1, variant=variant)
    assert b.tokens.shape == (4, 240) and b.errors == []
    for i, s in enumerate(b.samples):
        assert s.query_pos == 239 and s.tokens[0] == tok.bos_token_id
        for (a, e), v in zip(s.answer_spans, s.values):
            assert tok.decode(b.tokens[i, a:e].tolist()).strip() == v
            c0 = b.texts[i].index(v)  # the character span maps onto the token span
            assert b.char_spans[i][s.values.index(v)][0] == c0 or variant == "multikey_2"
        assert tok.decode(s.tokens).startswith(tok.bos_token)
        assert b.texts[i].endswith("is:" if variant != "multivalue" else "are:")


def test_unlocatable_spans_are_counted_not_scored(tok):
    sp = tiny_tokenizer("metaspace")  # learned a token "3." that glues some values to the full stop
    b = hf.hf_needle_batch(sp, n=10, context_len=300, seed=0)
    assert 0 < len(b.errors) < 10 and len(b) + len(b.errors) == 10
    assert all("3." in msg for _, msg in b.errors)
    for i, s in enumerate(b.samples):
        a, e = s.answer_spans[0]
        assert sp.decode(b.tokens[i, a:e].tolist()).strip() == s.values[0]
    with pytest.raises(ValueError, match="too short"):
        hf.hf_needle_batch(tok, n=1, context_len=10)


# --- attention rows == HF eager --------------------------------------------------------------
def _eager_and_adapter(mt, tok):
    ref = tiny_model(mt, vocab_size=len(tok), attn_implementation="eager")
    try:
        fast = tiny_model(mt, vocab_size=len(tok), attn_implementation="sdpa")
    except ValueError:  # no SDPA for this architecture (Gemma 2)
        fast = tiny_model(mt, vocab_size=len(tok), attn_implementation="eager")
    fast.load_state_dict(ref.state_dict())
    return ref, HFModel(fast, tok)


def _check_rows(mt, tok):
    ref, m = _eager_and_adapter(mt, tok)
    x = torch.randint(3, len(tok), (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = ref(x, output_attentions=True)
    att = dict(zip(m.cfg.attention_layers, [a for a in out.attentions if a is not None]))
    qp = torch.tensor([[23, 9], [4, 23]])
    rows = m.prefill_rows(x, qp)
    assert sorted(rows) == m.cfg.attention_layers
    for l, r in rows.items():
        want = att[l].gather(2, qp[:, None, :, None].expand(2, att[l].shape[1], 2, 24))
        torch.testing.assert_close(r, want, atol=2e-6, rtol=1e-4)
    assert torch.allclose(m(x), out.logits, atol=1e-5)
    # greedy decoding with the HF cache: each step's row == eager row of the full sequence
    d = m.decode_rows(x, 4, stop_token=None)
    full = torch.cat([x, d.generated[:, :-1]], 1)
    with torch.no_grad():
        out2 = ref(full, output_attentions=True)
    att2 = dict(zip(m.cfg.attention_layers, [a for a in out2.attentions if a is not None]))
    assert torch.equal(out2.logits[:, 23:].argmax(-1), d.generated)
    for i, step in enumerate(d.rows):
        for l, r in step.items():
            torch.testing.assert_close(r, att2[l][:, :, 23 + i, :24 + i], atol=2e-6, rtol=1e-4)
    # the look path (a hook on hook_pattern) materialises the same patterns
    _, cache = m.run_with_cache(x, names_filter=lambda n: n.endswith("hook_pattern"))
    for l in m.cfg.attention_layers:
        torch.testing.assert_close(cache[f"blocks.{l}.attn.hook_pattern"], att[l], atol=2e-6, rtol=1e-4)


@pytest.mark.parametrize("mt", ARCHS)
def test_rows_match_hf_eager(mt, tok):
    _check_rows(mt, tok)


def test_rows_are_O_T(tok):
    """No T x T buffer during detection: the largest allocation of a prefill stays far below one
    pattern (H x T x T floats); output_attentions / the look path needs it."""
    from torch.profiler import ProfilerActivity, profile

    m = HFModel(tiny_model("smollm3", vocab_size=len(tok), attn_implementation="sdpa"), tok)
    T = 1024
    x = torch.randint(3, len(tok), (1, T))
    pattern_bytes = m.n_heads * T * T * 4
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        rows = m.prefill_rows(x, [T - 1])
    biggest = max(e.cpu_memory_usage for e in prof.events())
    assert rows[0].shape == (1, 4, 1, T)
    assert biggest < pattern_bytes / 8, (biggest, pattern_bytes)


# --- the detector, ablation and patching on HF models ----------------------------------------
def test_scores_on_hf_models(ckpts):
    m = hf.load_hf(ckpts["qwen3_next"])
    b = hf.hf_needle_batch(m.tokenizer, n=2, context_len=90, seed=0)
    mass = rh.retrieval_scores(m, b, method="mass")
    assert mass.shape == (4, 4)
    assert mass[:3].isnan().all() and mass[3].isfinite().all()  # D layers NaN, the F layer scored
    res = rh.detect.score_heads(m, b, only_correct=False)
    assert res.n_invalid == 0 and res.copy[3].isfinite().all() and res.copy[:3].isnan().all()
    assert len(res.predictions) == 2
    g = hf.load_hf(ckpts["gemma3_text"])
    S = rh.retrieval_scores(g, hf.hf_needle_batch(g.tokenizer, n=2, context_len=90), method="mass")
    assert S.isfinite().all()


def test_ablation_and_patching_on_hf_models(ckpts):
    m = hf.load_hf(ckpts["gemma3_text"])
    pair = hf.hf_needle_pairs(m.tokenizer, n=2, context_len=96, seed=0)
    x = pair.clean

    def zero(z, hook):
        z = z.clone()
        z[:, :, [1]] = 0
        return z

    with rh.ablate_heads(m, [(3, 1)]):
        a = m(x)
    assert torch.equal(a, m.run_with_hooks(x, fwd_hooks=[("blocks.3.attn.hook_z", zero)]))
    assert not torch.allclose(a, m(x))
    with rh.ablate_heads(m, [(3, 1)], method="mask"):  # all keys masked == zero output
        torch.testing.assert_close(m(x), a)
    with pytest.raises(ValueError):
        rh.ablate_heads(m, [(9, 0)]).__enter__()
    tl = rh.interventions.activation_patching(m, pair, kind="heads")
    nn = rh.interventions.activation_patching(m, pair, kind="heads", backend="nnsight")
    assert len(tl.df) == 16 and set(tl.df.layer_type) == {"S", "F"}
    torch.testing.assert_close(torch.tensor(tl.df.recovered.values), torch.tensor(nn.df.recovered.values))


def test_bridge_patterns_match_eager_and_our_rows(ckpts):
    from transformers import AutoModelForCausalLM

    for mt in ("gemma3_text", "qwen3_next"):
        bridge = hf.load_bridge(ckpts[mt])
        ours = hf.load_hf(ckpts[mt])
        ref = AutoModelForCausalLM.from_pretrained(str(ckpts[mt]), attn_implementation="eager")
        x = torch.randint(3, 300, (1, 20))
        _, cache = bridge.run_with_cache(x, names_filter=lambda n: n.endswith("hook_pattern"))
        with torch.no_grad():
            att = [a for a in ref(x, output_attentions=True).attentions if a is not None]
        rows = ours.prefill_rows(x, [19])
        for l, a in zip(ours.cfg.attention_layers, att):
            torch.testing.assert_close(cache[f"blocks.{l}.attn.hook_pattern"], a, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(rows[l][:, :, 0], a[:, :, 19], atol=2e-6, rtol=1e-4)


@pytest.mark.gpu
def test_long_context_rows_fit_on_gpu():
    """A 1B-sized Olmo-3-like hybrid (bf16) at 16k tokens: prefill rows match an fp32 reference
    row and stay far below one layer's T x T pattern in peak memory."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config("olmo3", vocab_size=32000, num_hidden_layers=8, hidden_size=2048, intermediate_size=5504,
                      num_attention_heads=16, num_key_value_heads=16, head_dim=128, sliding_window=1024,
                      max_position_embeddings=32768,
                      layer_types=(["sliding_attention"] * 3 + ["full_attention"]) * 2)
    with torch.device("cuda"):
        hf_model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    m = HFModel(hf_model)
    T = 16384
    x = torch.randint(3, 32000, (1, T), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    rows = m.prefill_rows(x, [T - 1])
    peak = torch.cuda.max_memory_allocated() - base
    pattern = 16 * T * T * 2  # one layer's bf16 pattern
    assert peak < pattern / 4, (peak, pattern)
    for l in (3, 7):
        assert rows[l].shape == (1, 16, 1, T) and torch.allclose(rows[l].sum(-1), torch.ones(1, 16, 1, device="cuda"))
    for l in (0, 4):  # sliding layers: only the last 1024 keys
        assert rows[l][..., : T - 1024].abs().max() == 0


def test_docstring_examples():
    import doctest

    from retrieval_heads.hf import layout, needles, weights

    for mod in (layout, needles, weights):
        assert doctest.testmod(mod).failed == 0, mod.__name__
