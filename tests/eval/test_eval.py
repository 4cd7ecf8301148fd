"""Evaluation: NIAH grids (scoring, lengths, errors) and held-out loss by position bucket."""

import pytest
import torch
import torch.nn.functional as F

import retrieval_heads as rh
from retrieval_heads.eval import (
    heldout_bytes,
    long_context_loss,
    niah_grid,
    short_context_loss,
    text_rows,
    token_losses,
)
from retrieval_heads.tasks import TOKENIZER, load_haystack


class Oracle(torch.nn.Module):
    """Answers by copying the needle value from the prompt, but only when it lies in the first
    ``reach`` fraction of the prompt (so accuracy depends on depth)."""

    def __init__(self, reach=1.0, max_seq_len=4096):
        super().__init__()
        self.cfg = rh.ModelConfig(layout="F", d_model=8, n_heads=1, max_seq_len=max_seq_len)
        self.reach = reach
        self.p = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return torch.device("cpu")

    def generate(self, tokens, max_new_tokens, stop_token=None):
        out = []
        for row in tokens.tolist():
            text = TOKENIZER.decode(row)
            key = text.rsplit(" for ", 1)[1].split(" is:")[0]
            head = f"for {key} is: "
            i = text.index(head) + len(head)
            ans = text[i:i + 7] if i < self.reach * len(text) else "0000000"
            ids = TOKENIZER.encode(ans) + [TOKENIZER.EOS]
            out.append((ids + [TOKENIZER.EOS] * max_new_tokens)[:max_new_tokens])
        return torch.tensor(out)


def test_grid_scores_with_string_match_all():
    df = niah_grid(Oracle(), [160, 240], [0.1, 0.9], n=3, progress=False)
    assert list(df.columns) == ["variant", "context_len", "depth", "n", "accuracy", "train_len", "beyond_train"]
    assert len(df) == 4 and (df["n"] == 3).all() and (df["accuracy"] == 1.0).all()
    df = niah_grid(Oracle(reach=0.5), [200], [0.1, 0.9], n=2, progress=False)
    assert df.set_index("depth")["accuracy"].to_dict() == {0.1: 1.0, 0.9: 0.0}
    det = niah_grid(Oracle(reach=0.5), [200], [0.1, 0.9], n=2, progress=False, details=True)
    assert len(det) == 4 and set(det.columns) >= {"prediction", "values", "score"}


def test_grid_length_limits():
    with pytest.raises(ValueError, match="max_seq_len=300"):
        niah_grid(Oracle(max_seq_len=300), [200, 300], [0.5], n=1, progress=False)
    m = Oracle()
    m.checkpoint = {"train": rh.TrainConfig(context_len=200)}
    df = niah_grid(m, [160, 400], [0.5], n=1, progress=False)
    assert df["beyond_train"].tolist() == [False, True] and df["train_len"].tolist() == [200, 200]


def test_grid_on_a_real_model_runs_and_ablation_context_applies():
    torch.manual_seed(0)
    model = rh.HybridLM(rh.ModelConfig(layout="SDF", d_model=32, n_heads=2, window=8, max_seq_len=512))
    df = niah_grid(model, [128], [0.5], n=2, progress=False, details=True)
    assert len(df) == 2 and df["score"].between(0, 1).all()
    with rh.interventions.receptive_field(model, full=16, efficient=8):
        df2 = niah_grid(model, [128], [0.5], n=2, progress=False, details=True)
    assert len(df2) == 2


def test_long_context_loss_buckets():
    torch.manual_seed(0)
    model = rh.HybridLM(rh.ModelConfig(layout="SF", d_model=32, n_heads=2, window=8, max_seq_len=256))
    df = long_context_loss(model, context_len=129, n=3, buckets=4)
    assert df["start"].tolist() == [0, 32, 64, 96] and df["end"].tolist() == [32, 64, 96, 128]
    assert df["n_tokens"].sum() == 3 * 128
    rows = text_rows(129, 3)
    losses = token_losses(model, rows)
    weighted = float((df["loss"] * df["n_tokens"]).sum() / df["n_tokens"].sum())
    assert weighted == pytest.approx(float(losses.mean()), rel=1e-5)
    with torch.no_grad():
        logits = model(rows)[:, :-1]
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
    assert short_context_loss(model, context_len=129, n=3) == pytest.approx(float(ref), rel=1e-5)
    edges = long_context_loss(model, context_len=129, n=1, buckets=[16, 64])
    assert edges["start"].tolist() == [0, 16, 64] and edges["end"].tolist() == [16, 64, 128]
    with pytest.raises(ValueError, match="max_seq_len"):
        long_context_loss(model, context_len=300, n=1)


def test_heldout_text_is_the_essay_tail(tmp_path):
    full = load_haystack("essay").encode()
    tail = heldout_bytes("essay")
    assert full.endswith(tail) and 0.09 < len(tail) / len(full) < 0.11
    rows = text_rows(64, 4, seed=1)
    assert (rows[:, 0] == TOKENIZER.BOS).all()
    for r in rows:
        assert bytes(r[1:].tolist()) in tail
    f = tmp_path / "user.txt"
    f.write_text("abc " * 40)
    assert bytes(text_rows(32, 2, text=str(f))[0, 1:].tolist()) in ("abc " * 40).encode()
    with pytest.raises(ValueError, match="fewer than"):
        text_rows(1000, 1, text=str(f))


def test_training_lm_rows_never_draw_the_heldout_tail():
    """Training LM rows sample only the essay's first 90%; the training loop's own LM eval batch
    and rh.eval's texts sample only the held-out tail, so eval losses are on unseen text."""
    from retrieval_heads.tasks.haystack import text_bytes
    from retrieval_heads.tasks.mixture import eval_lm_batch, lm_row, training_batch

    full, train, tail = (text_bytes("essay", p) for p in ("all", "train", "heldout"))
    assert train + tail == full and tail == heldout_bytes("essay")
    # the held-out tail starts with text that occurs nowhere in the training part
    assert tail[:48] not in train
    for i in range(300):
        t, _, _ = lm_row(context_len=256, haystack="essay", seed=(0, i, 0))
        assert bytes(t[1:].tolist()) in train
    cfg = rh.TrainConfig(batch_size=8, context_len=128, niah_fraction=0.0, induction_fraction=0.0)
    b = training_batch(cfg, 3)
    for r in b.tokens:
        assert bytes(r[1:].tolist()) in train
    for r in eval_lm_batch(cfg, 4).tokens:
        assert bytes(r[1:].tolist()) in tail
    with pytest.raises(ValueError, match="part"):
        text_bytes("essay", "test")
    # a context longer than the held-out tail is refused before training starts
    from retrieval_heads.tasks.mixture import check_mixture

    with pytest.raises(ValueError, match="held-out tail"):
        check_mixture(rh.TrainConfig(context_len=len(tail) + 10))


def test_answer_metrics_teacher_forced():
    torch.manual_seed(0)
    model = rh.HybridLM(rh.ModelConfig(layout="SF", d_model=32, n_heads=2, window=8, max_seq_len=256))
    batch = rh.tasks.niah_batch(n=2, context_len=128, seed=0)
    m = rh.eval.answer_metrics(model, batch, batch_size=1)
    s = batch.samples[0]
    tgt = s.answer_tokens + [TOKENIZER.EOS]
    x = torch.tensor([s.tokens + tgt[:-1]])
    with torch.no_grad():
        lp = model(x)[0, 127:].log_softmax(-1)
    nll0 = -lp[torch.arange(len(tgt)), torch.tensor(tgt)].sum()
    s1 = batch.samples[1]
    tgt1 = s1.answer_tokens + [TOKENIZER.EOS]
    with torch.no_grad():
        lp1 = model(torch.tensor([s1.tokens + tgt1[:-1]]))[0, 127:].log_softmax(-1)
    nll1 = -lp1[torch.arange(len(tgt1)), torch.tensor(tgt1)].sum()
    assert m["answer_loss"] == pytest.approx(float(nll0 + nll1) / (len(tgt) + len(tgt1)), rel=1e-5)
    assert 0 <= m["answer_exact"] <= m["answer_token_acc"] <= 1
