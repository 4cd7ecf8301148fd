"""Tiny random Hugging Face hybrids and a small in-memory tokenizer, built offline in seconds.

For tests, notebooks and demos: nothing is downloaded. ``save_tiny("gemma3_text", path)``
writes a checkpoint folder (config.json + model.safetensors + tokenizer files) that
``retrieval_heads.hf.load_hf`` reads back like a released model.

    >>> import tempfile
    >>> path = save_tiny("smollm3", tempfile.mkdtemp())
    >>> sorted(p.name for p in path.iterdir())[:2]
    ['config.json', 'generation_config.json']
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..tasks.haystack import NOISE
from ..tasks.niah import needle_text
from ..tasks.vocab import ADJECTIVES, NOUNS

SPECIALS = ["<pad>", "<bos>", "<eos>"]  # ids 0, 1, 2: below any vocabulary size

# small settings per model type: d_model 64, 4 layers, 4 heads of 16, a hybrid layout
_COMMON = dict(num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
               tie_word_embeddings=False)
TINY = {
    "gemma3_text": dict(sliding_window=8, layer_types=["sliding_attention"] * 3 + ["full_attention"],
                        query_pre_attn_scalar=16),
    "gemma2": dict(sliding_window=8, layer_types=["sliding_attention", "full_attention"] * 2,
                   query_pre_attn_scalar=16, attn_logit_softcapping=5.0),
    "olmo3": dict(sliding_window=8, layer_types=["sliding_attention"] * 3 + ["full_attention"]),
    "qwen3": dict(use_sliding_window=True, sliding_window=8, max_window_layers=2),
    "mistral": dict(sliding_window=8),
    "smollm3": dict(no_rope_layers=[1, 1, 1, 0]),
    "llama4_text": dict(attention_chunk_size=8, no_rope_layers=[1, 1, 1, 0], intermediate_size_mlp=128,
                        num_local_experts=2, floor_scale=4, attn_scale=0.5),
    "cohere2": dict(sliding_window=8, layer_types=["sliding_attention"] * 3 + ["full_attention"]),
    "qwen3_next": dict(layer_types=["linear_attention"] * 3 + ["full_attention"], num_experts=4,
                       num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32,
                       linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
                       linear_value_head_dim=16),
    "qwen3_5_text": dict(layer_types=["linear_attention"] * 3 + ["full_attention"], linear_num_key_heads=2,
                         linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16),
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
                  num_experts=2, num_experts_per_tok=1, mamba_d_state=8, mamba_dt_rank=8,
                  mamba_expand=2, use_mamba_kernels=False),
    "falcon_h1": dict(mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_n_groups=1,
                      mamba_chunk_size=16),
    "mamba2": dict(num_heads=8, head_dim=16, expand=2, n_groups=1, state_size=16, chunk_size=16),
}
_DROP = {"mamba2": ("num_attention_heads", "num_key_value_heads", "intermediate_size")}


def _corpus() -> list[str]:
    lines = NOISE.split(". ")
    # values all end in 3, so a SentencePiece-style tokenizer learns the token "3." (a value joined
    # to its full stop): needles whose value ends in 3 cannot be located exactly (see needles.py)
    lines += [needle_text(f"{a}-{n}", str(1_000_003 + 7910 * i), "numbers")[0]
              for i, (a, n) in enumerate(zip(ADJECTIVES[:40], NOUNS[:40]))]
    lines += ["The special magic number for", "The special magic numbers for", "are:", "is:",
              " ".join(NOUNS[:200]), " ".join(ADJECTIVES[:200]), "0123456789 -,.:;!?\n",
              " ".join("1234567890" * 60)]  # " 7" etc. become tokens
    return lines


def tiny_tokenizer(kind: str = "bytelevel", vocab_size: int = 384):
    """A BPE tokenizer trained in memory on a few sentences, wrapped as ``PreTrainedTokenizerFast``.

    ``kind="bytelevel"`` (GPT-2 / Llama-3 / Qwen style, offsets include the leading space) or
    ``"metaspace"`` (SentencePiece style ``▁`` word starts, like Gemma / Mistral). Adds ``<bos>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None if kind == "bytelevel" else "<pad>"))
    if kind == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif kind == "metaspace":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = sorted(set("".join(_corpus())) | set("▁\n\"'()[]{}_/#*=+<>%&@$^`|~\\"))
    else:
        raise ValueError(f"kind: expected 'bytelevel' or 'metaspace', got {kind!r}")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<pad>" if kind != "bytelevel" else None,
                                   name_or_path=f"tiny-{kind}")


def tiny_config(model_type: str, vocab_size: int = 384, **overrides):
    """A small ``AutoConfig`` of ``model_type`` (d_model 64, 4 layers, hybrid layout)."""
    from transformers import AutoConfig

    if model_type not in TINY:
        raise ValueError(f"model_type: no tiny settings for {model_type!r}; known: {', '.join(TINY)}")
    kw = {k: v for k, v in _COMMON.items() if k not in _DROP.get(model_type, ())}
    kw.update(TINY[model_type])
    kw.update(vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    kw.update(overrides)
    return AutoConfig.for_model(model_type, **kw)


def tiny_model(model_type: str, *, seed: int = 0, vocab_size: int = 384, attn_implementation: str = "eager",
               **overrides):
    """A random tiny HF causal LM in eval mode (float32)."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(model_type, vocab_size=vocab_size, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation,
                                             dtype=torch.float32)
    with torch.no_grad():  # larger q/k so attention is peaked rather than uniform
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(4.0)
    return model.eval()


def save_tiny(model_type: str, path, *, seed: int = 0, tokenizer=None, kind: str = "bytelevel",
              extra: dict | None = None, **overrides) -> Path:
    """Build a tiny random ``model_type`` and write it with its tokenizer to ``path``."""
    tokenizer = tokenizer or tiny_tokenizer(kind)
    model = tiny_model(model_type, seed=seed, vocab_size=len(tokenizer), **overrides)
    if model.config.architectures is None:
        model.config.architectures = [type(model).__name__]
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if extra:
        import json
        (path / "trainer_state.json").write_text(json.dumps(extra))
    return path
