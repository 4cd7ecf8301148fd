"""Detector on CUDA: O(T) rows with the GPU fast paths (FlexAttention / flash for the prefill)
equal eager patterns, and CUDA scores equal CPU scores. Marked `gpu`; run on a GPU machine
with `pytest -m gpu tests/detect/test_detect_gpu.py`."""

import pytest
import torch

import retrieval_heads as rh
from retrieval_heads.detect import greedy_decode_rows, prefill_rows, score_heads
from retrieval_heads.detect.reference import eager_decode_rows, eager_rows

pytestmark = pytest.mark.gpu


def _model(layout, **kw):
    torch.manual_seed(0)
    cfg = rh.ModelConfig(layout=layout, d_model=64, n_heads=4, window=32, max_seq_len=2048, init_std=0.3,
                         pos={"F": "nope", "S": "rope"}, **kw)
    return rh.HybridLM(cfg).eval()


@pytest.mark.parametrize("layout", ["SSSF", "SSDF", "MSLF"])
def test_cuda_rows_equal_eager(layout):
    m = _model(layout).cuda()
    rec = any(c in layout for c in "MDL")
    b = rh.tasks.niah_batch(n=2, context_len=600, seed=0)
    tok = b.tokens.cuda()
    qp = [599, 300]
    fast = prefill_rows(m, tok, qp, recurrent=rec)
    ref = eager_rows(m, tok, qp, recurrent=rec)
    for l in ref:
        assert (fast[l] - ref[l]).abs().max().item() < 5e-5
    dec = greedy_decode_rows(m, tok, 4, recurrent=rec, stop_token=None)
    eref = eager_decode_rows(m, tok, dec.generated, recurrent=rec)
    for fr, er in zip(dec.rows, eref):
        for l in er:
            assert (fr[l] - er[l]).abs().max().item() < 5e-5


def test_cuda_scores_equal_cpu():
    m = _model("SSSF")
    b = rh.tasks.niah_batch(n=3, context_len=700, seed=2)
    cpu = score_heads(m, b, only_correct=False)
    gpu = score_heads(m.cuda(), b, only_correct=False)
    assert cpu.predictions == gpu.predictions
    for k in ("mass", "entropy"):
        torch.testing.assert_close(gpu.per_sample[k], cpu.per_sample[k], rtol=0, atol=1e-4, equal_nan=True)
    torch.testing.assert_close(gpu.per_sample["copy"], cpu.per_sample["copy"], rtol=0, atol=1e-6,
                               equal_nan=True)
