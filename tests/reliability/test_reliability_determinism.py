"""Determinism on CPU: the same seed gives the same weights, needles, scores and tables, bit
for bit. Across processes and str-hash seeds too: the subprocess runs of
tests/reliability/test_reliability_interrupts.py use PYTHONHASHSEED=12345 and must equal in-process runs.
See docs/RELIABILITY.md ("Determinism") for what does and does not hold on GPUs."""

import shutil

import pandas as pd
import pytest
import torch
from reliability_util import make_run
from helpers import MC, TC

import retrieval_heads as rh
from retrieval_heads.train import read_metrics, train

FAST = dict(context_lens=(160,), depths=(0.3, 0.7), n_per_cell=2, progress=False, report=False)
QUIET = dict(progress=False, log=lambda *a: None)


def _weights(ck):
    from safetensors.torch import load_file
    return load_file(str(ck / "model.safetensors"))


def test_same_seed_same_training(tmp_path):
    tc = TC.replace(steps=3, save_every=3, eval_every=3, eval_samples=2)
    a, b, c = (tmp_path / n for n in "abc")
    train(MC, tc, a, **QUIET)
    train(MC, tc, b, **QUIET)
    train(MC, tc.replace(seed=tc.seed + 1), c, **QUIET)
    for x, y in zip(rh.list_checkpoints(a), rh.list_checkpoints(b)):
        wa, wb = _weights(x), _weights(y)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), x.name
    timing = ("tokens_per_s", "time_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(read_metrics(a)) == strip(read_metrics(b))
    wa, wc = _weights(rh.list_checkpoints(a)[-1]), _weights(rh.list_checkpoints(c)[-1])
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)  # the seed matters


def test_same_seed_same_needles_and_scores():
    kw = dict(n=4, context_len=160, variant="single_1")
    b1, b2, b3 = rh.tasks.niah_batch(seed=3, **kw), rh.tasks.niah_batch(seed=3, **kw), rh.tasks.niah_batch(seed=4, **kw)
    assert torch.equal(b1.tokens, b2.tokens) and not torch.equal(b1.tokens, b3.tokens)
    torch.manual_seed(0)
    model = rh.HybridLM(MC).eval()
    for method in ("copy", "mass"):
        s1 = rh.retrieval_scores(model, b1, method=method, only_correct=False)
        s2 = rh.retrieval_scores(model, b2, method=method, only_correct=False)
        torch.testing.assert_close(s1, s2, rtol=0, atol=0, equal_nan=True)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("rel_det") / "run", steps=(0, 1, 2))


def _tables(run):
    return {t: pd.read_parquet(run / "scan" / f"{t}.parquet").drop(columns=["path"], errors="ignore")
            for t in ("scores", "niah", "formation", "checkpoints")}


def test_same_seed_same_tables(base_run, tmp_path):
    a, b, c = (shutil.copytree(base_run, tmp_path / n) for n in "abc")
    rh.scan(a, **FAST, seed=5)
    rh.scan(b, **FAST, seed=5)
    ta, tb = _tables(a), _tables(b)
    for t in ta:
        pd.testing.assert_frame_equal(ta[t], tb[t], check_exact=True)
    rh.scan(c, **FAST, seed=6)  # another needle set: other values, same shape
    tc = _tables(c)
    assert ta["scores"].shape == tc["scores"].shape
    assert not ta["scores"]["value"].equals(tc["scores"]["value"])


def test_scores_barely_depend_on_batch_size(base_run, tmp_path):
    """Batching changes float summation order (different matmul shapes), so tables scored with
    another ``batch_size`` agree to rounding, not bit for bit; a scan's cache key leaves the
    batch size out on purpose."""
    a, b = (shutil.copytree(base_run, tmp_path / n) for n in "ab")
    rh.scan(a, **FAST, batch_size=8)
    rh.scan(b, **FAST, batch_size=1)
    sa, sb = _tables(a)["scores"], _tables(b)["scores"]
    pd.testing.assert_frame_equal(sa.drop(columns="value"), sb.drop(columns="value"))
    torch.testing.assert_close(torch.tensor(sa.value.values), torch.tensor(sb.value.values),
                               rtol=1e-4, atol=1e-5, equal_nan=True)
