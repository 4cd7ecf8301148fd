"""Needle tasks, haystacks, MQAR and the training mixture: exact spans, determinism, errors."""

import pytest
import torch

from retrieval_heads.config import TrainConfig
from retrieval_heads.tasks import (
    TOKENIZER,
    VARIANTS,
    load_haystack,
    make_sample,
    min_context_len,
    mqar_batch,
    niah_batch,
    niah_grid,
    string_match_all,
)
from retrieval_heads.tasks.mixture import answer_reserve, eval_lm_batch, needle_row, row_kinds, row_loss, training_batch

DEPTHS = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]


def min_len(variant, seed=0):
    """The shortest context a sample accepts, as its error message states it."""
    with pytest.raises(ValueError, match="use context_len >= ") as e:
        make_sample(context_len=40, depth=0.5, seed=seed, variant=variant)
    n = int(str(e.value).split("use context_len >= ")[1].split()[0])
    assert n <= min_context_len(variant)
    return n


def check_sample(s, context_len):
    assert len(s.tokens) == s.context_len == context_len
    assert s.query_pos == context_len - 1 and s.tokens[0] == TOKENIZER.BOS
    assert len(s.answer_spans) == len(s.values) >= 1
    for (a, b), v in zip(s.answer_spans, s.values):
        assert 0 < a < b <= s.query_pos
        assert s.tokens[a:b] == TOKENIZER.encode(v)  # the span really holds the answer
        assert TOKENIZER.decode(s.tokens[a:b]) == v
        # the value sits inside its needle sentence: "... is: VALUE."
        assert TOKENIZER.decode(s.tokens[a - 4:a]) == "is: " and s.tokens[b] == ord(".")
    assert s.answer_tokens == TOKENIZER.encode(", ".join(s.values))
    assert TOKENIZER.decode(s.tokens[-4:]).endswith(": ")
    assert s.tokens[s.needle_pos: s.needle_pos + 3] == TOKENIZER.encode("One")
    assert all(0 <= t < TOKENIZER.vocab_size for t in s.tokens)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_span_holds_its_answer(variant):
    for seed in range(3):  # the exact minimum, as stated by the error, then longer contexts
        lo = min_len(variant, seed)
        with pytest.raises(ValueError, match="too short"):
            make_sample(context_len=lo - 1, depth=0.5, seed=seed, variant=variant)
        for L in (lo, lo + 1, lo + 37, 600):
            for d in DEPTHS:
                check_sample(make_sample(context_len=L, depth=d, seed=seed, variant=variant), L)
    for seed in range(20):  # min_context_len fits every sample
        L = min_context_len(variant)
        check_sample(make_sample(context_len=L, depth=seed / 19, seed=seed, variant=variant), L)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_generators_deterministic_per_seed(variant):
    L = min_context_len(variant) + 50
    a = niah_batch(n=3, context_len=L, seed=5, variant=variant)
    b = niah_batch(n=3, context_len=L, seed=5, variant=variant)
    c = niah_batch(n=3, context_len=L, seed=6, variant=variant)
    assert torch.equal(a.tokens, b.tokens) and a.answer_spans == b.answer_spans
    assert [s.values for s in a.samples] == [s.values for s in b.samples]
    assert not torch.equal(a.tokens, c.tokens)


def test_depth_moves_the_needle():
    pos = [make_sample(context_len=800, depth=d, seed=3).needle_pos for d in DEPTHS]
    assert pos == sorted(pos) and pos[0] <= 2 and pos[-1] > 600


def test_niah_grid_and_batch_shapes():
    grid = niah_grid(context_lens=[200, 300], depths=[0.0, 0.5, 1.0], n_per_cell=2, seed=1)
    assert [g.tokens.shape for g in grid] == [(6, 200), (6, 300)]
    for g in grid:
        for s in g.samples:
            check_sample(s, g.tokens.shape[1])
    with pytest.raises(ValueError, match="depths"):
        niah_batch(n=2, context_len=200, depths=[0.5])
    with pytest.raises(ValueError, match="variant: unknown 'nope'; valid: single_1"):
        niah_batch(n=1, context_len=200, variant="nope")


def test_haystack_override_and_user_file(tmp_path):
    f = tmp_path / "story.txt"
    f.write_text("Alice met Bob. They walked home! Did it rain? It did. " * 20)
    s = make_sample(context_len=300, depth=0.5, seed=0, variant="single_2", haystack=str(f))
    check_sample(s, 300)
    assert "Alice" in TOKENIZER.decode(s.tokens)
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("One sentence here. ")
    (folder / "b.md").write_text("Another sentence there. ")
    assert load_haystack(str(folder)) == "One sentence here. Another sentence there. "


@pytest.mark.parametrize("content, match", [
    (b"", "is empty"), (b"   \n\t ", "is empty"),
    (b"\x00\x01binary\x00", "not a text file"), (b"\xff\xfe\xfa bad utf8", "not UTF-8 text"),
])
def test_bad_haystack_files(tmp_path, content, match):
    f = tmp_path / "hay.txt"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        load_haystack(str(f))


def test_missing_haystack_lists_builtins(tmp_path):
    with pytest.raises(ValueError, match="neither a built-in haystack"):
        load_haystack(str(tmp_path / "nope.txt"))
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .txt or .md"):
        load_haystack(str(empty))


def test_string_match_all():
    assert string_match_all("the answer is 1234567.", ["1234567"]) == 1.0
    assert string_match_all("12, 34", ["12", "34", "56", "78"]) == 0.5
    assert string_match_all("", ["x"]) == 0.0


def test_mqar_deterministic_and_labels():
    a = mqar_batch(n=3, seq_len=64, num_kv_pairs=4, vocab_size=128, seed=1)
    b = mqar_batch(n=3, seq_len=64, num_kv_pairs=4, vocab_size=128, seed=1)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    for i, pairs in enumerate(a.answer_pos):
        assert len(pairs) == 4
        for q, v in pairs:
            assert a.labels[i, q] == a.inputs[i, v] == a.inputs[i, q + 1]  # queried value
            assert a.inputs[i, q] == a.inputs[i, v - 1]  # same key
    with pytest.raises(ValueError, match="num_kv_pairs"):
        mqar_batch(n=1, seq_len=8, num_kv_pairs=4)


# ----------------------------------------------------------------------------- mixture
def cfg(**kw):
    base = dict(batch_size=8, context_len=160, niah_fraction=0.5, induction_fraction=0.25,
                haystack="essay", seed=3)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("variant", ["single_1", "single_3", "multivalue", "multiquery", "single_word"])
def test_needle_row_answer_targets(variant):
    L = min_context_len(variant) + answer_reserve(variant)
    for d in (0.0, 0.5, 1.0):
        t, y, w, s = needle_row(context_len=L, variant=variant, seed=7, depth=d)
        assert t.shape == y.shape == w.shape == (L,)
        counted = (w > 0).nonzero().flatten()
        # exactly the answer tokens and the EOS are targets, right after the prompt
        assert y[counted].tolist() == s.answer_tokens + [TOKENIZER.EOS]
        assert counted.tolist() == list(range(len(s.tokens) - 1, len(s.tokens) + len(s.answer_tokens)))
        assert t[: len(s.tokens)].tolist() == s.tokens
        assert (t[len(s.tokens) + len(s.answer_tokens) + 1:] == TOKENIZER.PAD).all()
        for a, b in s.answer_spans:  # the spans hold the answer in the training row too
            assert TOKENIZER.decode(t[a:b].tolist()) in s.values


def test_mixture_is_a_pure_function_of_config_and_step():
    c = cfg()
    a, b = training_batch(c, 5), training_batch(c, 5)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.weights, b.weights)
    assert not torch.equal(a.tokens, training_batch(c, 6).tokens)
    assert not torch.equal(a.tokens, training_batch(cfg(seed=4), 5).tokens)
    assert a.tokens.shape == (8, 160)
    # any split into rows (ranks, micro-steps) gives the same rows
    parts = [training_batch(c, 5, rows=r) for r in ([0, 1, 2], [3], [4, 5, 6, 7])]
    assert torch.equal(torch.cat([p.tokens for p in parts]), a.tokens)
    assert torch.equal(torch.cat([p.targets for p in parts]), a.targets)


def test_mixture_row_kinds_and_weights():
    c = cfg(batch_size=16, niah_fraction=0.5, induction_fraction=0.25)
    kinds = row_kinds(c, 0)
    assert kinds.count("needle") == 8 and kinds.count("induction") == 4 and kinds.count("lm") == 4
    b = training_batch(c, 0)
    assert b.is_needle.tolist() == [k == "needle" for k in kinds]
    for i, k in enumerate(kinds):
        n = int((b.weights[i] > 0).sum())
        if k == "needle":
            assert n == 8  # 7 digits + EOS (single_1)
        elif k == "lm":
            assert n == 159 and b.tokens[i, 0] == TOKENIZER.BOS
        else:
            assert 100 < n < 159  # repeats of a random string; the first copy does not count
            assert torch.equal(b.targets[i, :-1], b.tokens[i, 1:])
    assert (b.targets[b.weights > 0] >= 0).all()
    with pytest.raises(ValueError, match="must be <= 1"):
        cfg(niah_fraction=0.8, induction_fraction=0.3)


def test_row_loss_is_a_per_row_weighted_mean():
    logits = torch.randn(2, 5, 260)
    y = torch.randint(0, 256, (2, 5))
    w = torch.tensor([[1.0, 1, 0, 0, 0], [0, 0, 0, 0, 1]])
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none")
    assert torch.allclose(row_loss(logits, y, w), torch.stack([ce[0, :2].mean(), ce[1, 4]]))


def test_eval_lm_batch_fixed():
    a, b = eval_lm_batch(cfg(), 4), eval_lm_batch(cfg(), 4)
    assert torch.equal(a.tokens, b.tokens) and a.tokens.shape == (4, 160)


def test_too_short_context_for_training_needle():
    need = min_context_len("single_1") + answer_reserve("single_1")
    with pytest.raises(ValueError, match=f"too short to train on 'single_1'.*>= {need}"):
        training_batch(cfg(context_len=need - 1, niah_fraction=1.0, induction_fraction=0.0), 0)
    training_batch(cfg(context_len=need, niah_fraction=1.0, induction_fraction=0.0), 0)
