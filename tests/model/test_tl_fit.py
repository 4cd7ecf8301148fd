"""TransformerLens habits on ``HybridLM``: ``run_with_cache`` returns an ``ActivationCache`` on which
``stack_head_results`` and ``decompose_resid`` run and add up; ``transformer_lens.patching``'s head
and residual functions run; ``to_tokens`` / ``to_string`` / ``tokenizer``."""

import pytest
import torch
from transformer_lens import ActivationCache, patching

import retrieval_heads as rh
from retrieval_heads.tasks import TOKENIZER


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return rh.HybridLM(rh.ModelConfig(layout="SF", d_model=32, n_heads=2, window=4, max_seq_len=64)).eval()


def test_tokens_and_strings(model):
    toks = model.to_tokens(["hello world", "hi"])
    assert toks.shape == (2, 12) and toks[0, 0] == TOKENIZER.BOS and toks[1, -1] == TOKENIZER.PAD
    assert toks[0, 1:].tolist() == TOKENIZER.encode("hello world")
    assert model.to_string(toks[0]) == "hello world"
    assert model.to_string(toks) == ["hello world", "hi"]
    assert model.to_tokens("ab", prepend_bos=False).tolist() == [[97, 98]]
    assert model.to_str_tokens("ab") == ["<bos>", "a", "b"]
    tok = model.tokenizer
    assert (tok.BOS, tok.EOS, tok.PAD, tok.SEP, tok.vocab_size) == (TOKENIZER.BOS, TOKENIZER.EOS, TOKENIZER.PAD,
                                                                 TOKENIZER.SEP, TOKENIZER.vocab_size)
    assert tok("ab")["input_ids"] == [97, 98] and tok.decode([97, 98, tok.EOS, 99]) == "ab"


def test_stack_head_results_and_decompose_resid(model):
    toks = model.to_tokens(["hello world", "hello there"])
    _, cache = model.run_with_cache(toks)
    assert isinstance(cache, ActivationCache)
    stack, labels = cache.stack_head_results(return_labels=True)
    assert labels == ["L0H0", "L0H1", "L1H0", "L1H1"] and stack.shape == (4, 2, 12, 32)
    attn = cache["blocks.0.hook_attn_out"] + cache["blocks.1.hook_attn_out"]
    torch.testing.assert_close(stack.sum(0), attn, atol=1e-5, rtol=1e-5)
    parts, names = cache.decompose_resid(return_labels=True)
    assert names == ["embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]
    torch.testing.assert_close(parts.sum(0), cache["blocks.1.hook_resid_post"], atol=1e-5, rtol=1e-5)
    # hooking hook_result does not change the output
    torch.testing.assert_close(model(toks), model.run_with_cache(toks, names_filter="blocks.0.hook_attn_out")[0])
    assert isinstance(model.run_with_cache(toks, return_cache_object=False)[1], dict)


def test_patching_head_and_residual_functions(model):
    clean = model.to_tokens(["hello world", "hello there"])
    corrupt = model.to_tokens(["jello world", "jello there"])
    _, clean_cache = model.run_with_cache(clean)
    clean_logits = model(clean)

    def metric(logits):
        return (logits[:, -1] - clean_logits[:, -1]).abs().sum()

    head_all = patching.get_act_patch_attn_head_out_all_pos(model, corrupt, clean_cache, metric)
    head_pos = patching.get_act_patch_attn_head_out_by_pos(model, corrupt, clean_cache, metric)
    resid = patching.get_act_patch_resid_pre(model, corrupt, clean_cache, metric)
    assert head_all.shape == (2, 2) and head_pos.shape == (2, 12, 2) and resid.shape == (2, 12)
    # the prompts differ only at position 1: patching the clean residual there, into layer 0's
    # input, restores the clean logits; patching any other position changes nothing
    assert float(resid[0, 1]) < 1e-4
    torch.testing.assert_close(resid[0, 2:], torch.full((10,), float(metric(model(corrupt)))))


def test_cfg_device_follows_the_model(model):
    assert model.cfg.device == "cpu" and model.cfg.n_key_value_heads == model.cfg.n_kv_heads
    assert model.cfg == rh.ModelConfig.from_dict(model.cfg.to_dict())  # the extra attributes are not fields
