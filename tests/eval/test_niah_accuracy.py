"""One NIAH accuracy: ``eval.niah_scores`` (RULER's string_match_all per decoded answer) serves
the training loop's evaluation, ``eval.niah_grid`` and the scans' per-cell accuracy."""

import math

import pytest
import torch

import retrieval_heads as rh
from retrieval_heads.eval import NiahScores, niah_grid, niah_scores
from retrieval_heads.model import HybridLM
from retrieval_heads.tasks import TOKENIZER, niah_batch, string_match_all
from retrieval_heads.train.loop import evaluate

MC = rh.ModelConfig(layout="SF", d_model=16, n_heads=2, d_mlp=32, window=8, max_seq_len=512,
                    pos={"F": "nope", "S": "rope"})


class Oracle(HybridLM):
    """Answers the first ``i % (n_values + 1)`` gold values of row ``i`` (upper case), then EOS."""

    values: dict

    def generate(self, tokens, max_new_tokens, stop_token=None):
        rows = []
        for i in range(tokens.shape[0]):
            vals = self.values[tuple(tokens[i].tolist())]
            k = i % (len(vals) + 1)
            rows.append(TOKENIZER.encode(", ".join(vals[:k]).upper())[:max_new_tokens] + [TOKENIZER.EOS])
        width = max(map(len, rows))
        return torch.tensor([r + [TOKENIZER.PAD] * (width - len(r)) for r in rows])


@pytest.fixture
def oracle(monkeypatch):
    import retrieval_heads.eval.niah as eval_niah
    import retrieval_heads.train.loop as loop

    torch.manual_seed(0)
    model = Oracle(MC)
    model.values = {}

    def recording(*a, **k):
        b = niah_batch(*a, **k)
        model.values.update({tuple(s.tokens): s.values for s in b.samples})
        return b

    monkeypatch.setattr(loop, "niah_batch", recording)
    monkeypatch.setattr(eval_niah, "niah_batch", recording)
    return model


def _samples(n=6, variant="multivalue", context_len=400):
    return niah_batch(n=n, context_len=context_len, seed=3, variant=variant).samples


def test_scores_are_string_match_all_and_none_is_nan():
    samples = _samples()
    preds = [", ".join(s.values[:i % 5]).upper() for i, s in enumerate(samples)]
    preds[5] = None
    r = niah_scores(preds, samples)
    assert r.scores[:5] == tuple(string_match_all(p, s.values) for p, s in zip(preds[:5], samples[:5]))
    assert r.scores[:5] == (0.0, 0.25, 0.5, 0.75, 1.0) and math.isnan(r.scores[5])
    assert r.accuracy == sum(r.scores[:5]) / 5  # the undecoded sample is left out
    assert r.correct == [False, False, False, True, True, False]
    assert r.context_lens == (400,) * 6 and r.depths == tuple(s.depth for s in samples)
    assert math.isnan(niah_scores([None], samples[:1]).accuracy)
    with pytest.raises(ValueError, match="predictions: 2 for 1 samples"):
        niah_scores(["a", "b"], samples[:1])


def _same(cells, expected):
    assert len(cells) == len(expected)
    for c, e in zip(cells, expected):
        assert (c["context_len"], c["depth"], c["n"]) == e[:3]
        assert c["accuracy"] == e[3] or (math.isnan(c["accuracy"]) and math.isnan(e[3]))


def test_cells_group_by_length_and_depth_in_the_given_order():
    r = NiahScores(scores=(1.0, 0.0, 0.5, 1.0, 0.25), context_lens=(8, 8, 8, 16, 16),
                   depths=(0.5, 0.5 + 1e-12, 0.0, 0.5, 1.0))
    _same(r.cells([16, 8], [0.5, 1.0]), [(16, 0.5, 1, 1.0), (16, 1.0, 1, 0.25),
                                         (8, 0.5, 2, 0.5),  # 0.5 + 1e-12 is within DEPTH_TOL
                                         (8, 1.0, 0, math.nan)])  # an empty cell
    r = NiahScores(scores=(1.0, 0.0, 0.5, math.nan), context_lens=(16, 8, 8, 8), depths=(0.5, 0.5, 0.0, 0.0))
    _same(r.cells(), [(8, 0.0, 2, 0.5), (8, 0.5, 1, 0.0), (16, 0.0, 0, math.nan), (16, 0.5, 1, 1.0)])


def test_cells_equal_the_scans_former_per_cell_mean():
    """The scanners averaged ``HeadScores.match`` (float32) per cell; the same up to float32 rounding."""
    samples = [s for L in (400, 420) for s in niah_batch(n=6, context_len=L, seed=L, variant="multivalue",
                                                          depths=[0.0, 0.0, 0.5, 0.5, 1.0, 1.0]).samples]
    preds = [", ".join(s.values[:i % 4]) for i, s in enumerate(samples)]
    r = niah_scores(preds, samples)
    match, cl, dp = torch.tensor(r.scores, dtype=torch.float32), torch.tensor(r.context_lens), torch.tensor(r.depths)
    for c in r.cells([400, 420], [0.0, 0.5, 1.0]):
        sel = (cl == c["context_len"]) & ((dp - c["depth"]).abs() < 1e-9)
        assert c["n"] == int(sel.sum())
        assert c["accuracy"] == pytest.approx(float(match[sel].mean()), rel=1e-7)


def test_training_evaluation_uses_it(oracle):
    cfg = rh.TrainConfig(context_len=400, niah_variant="multivalue", eval_samples=7, seed=3)
    b = niah_batch(n=7, context_len=400, seed=10_003, variant="multivalue")
    expected = [string_match_all(", ".join(s.values[:i % 5]), s.values) for i, s in enumerate(b.samples)]
    acc = evaluate(oracle, cfg)["niah_acc"]
    assert acc == sum(expected) / 7 == pytest.approx(2.75 / 7)


def test_niah_grid_uses_it(oracle):
    kw = dict(variant="multivalue", n=5, progress=False, batch_size=4)  # the oracle's row index is per call
    df = niah_grid(oracle, [400], [0.0, 1.0], details=True, **kw)
    assert df["score"].tolist() == [(i % 4) / 4 for i in range(8)] + [0.0, 0.25]
    grid = niah_grid(oracle, [400], [0.0, 1.0], **kw)
    assert grid["accuracy"].tolist() == [1.5 / 5, 1.75 / 5]


def test_cells_from_the_detectors_predictions_equal_the_scans_formula():
    """What pipeline.scanner.score_checkpoint / hf_scanner._score compute from ``score_heads``."""
    from retrieval_heads.detect.scores import HeadScores, score_heads

    torch.manual_seed(0)
    model = HybridLM(MC).eval()
    batches = [niah_batch(n=4, context_len=L, seed=L, variant="single_1", depths=[0.0, 0.0, 1.0, 1.0])
               for L in (128, 160)]
    res = HeadScores.merge([score_heads(model, b, max_new_tokens=4, batch_size=2) for b in batches])
    r = niah_scores(res.predictions, [s for b in batches for s in b.samples])
    assert r.scores == tuple(res.match.tolist()) and r.context_lens == tuple(res.context_lens)
    cl, dp = torch.tensor(res.context_lens), torch.tensor(res.depths)
    for c in r.cells([128, 160, 192], [0.0, 1.0]):
        sel = (cl == c["context_len"]) & ((dp - c["depth"]).abs() < 1e-9)
        assert c["n"] == int(sel.sum())
        old = float(res.match[sel].mean())
        assert c["accuracy"] == old or (math.isnan(old) and math.isnan(c["accuracy"]))
