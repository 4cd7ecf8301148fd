"""Retrieval-head detector: hand-built cases with known answers, and the O(T) rows/scores
against full eager patterns (O(T^2)) on random models of every layer kind."""

import math

import pytest
import torch

import retrieval_heads as rh
from retrieval_heads.config import RECURRENT_KINDS
from retrieval_heads.detect import greedy_decode_rows, prefill_rows, qk_distance, score_heads
from retrieval_heads.detect.reference import eager_decode_rows, eager_rows
from retrieval_heads.tasks import TOKENIZER, NeedleBatch, NeedleSample


# --- a hand-built copying model ------------------------------------------------------------
def copy_model():
    """Layout SF, NoPE. Every MLP and the S layer's output are zeroed, so the logits see only
    the embedding of the current token plus what head (1, 0) copies: its OV circuit writes
    20x the attended token's embedding into the residual (tied unembedding -> that token wins).
    All other heads have W_Q = 0, i.e. uniform attention (argmax = the first visible key)."""
    cfg = rh.ModelConfig(layout="SF", d_model=128, n_heads=2, window=8, max_seq_len=512,
                         pos={"F": "nope", "S": "nope"})
    torch.manual_seed(0)
    m = rh.HybridLM(cfg).eval()
    g = torch.Generator().manual_seed(0)
    eye = torch.eye(64)
    with torch.no_grad():
        E = torch.zeros(cfg.vocab_size, 128)
        E[:, :64] = torch.randn(cfg.vocab_size, 64, generator=g)
        m.embed.weight.copy_(E)
        for blk in m.blocks:
            blk.mlp.W_out.weight.zero_()
        a0, a1 = m.blocks[0].attn, m.blocks[1].attn
        a0.W_Q.weight.zero_()
        a0.W_O.weight.zero_()
        for w in (a1.W_Q, a1.W_K, a1.W_V, a1.W_O):
            w.weight.zero_()
        a1.W_V.weight[:64, :64] = eye  # head 0's value = the token's embedding
        a1.W_O.weight[:64, :64] = 20 * eye  # written back, amplified
    return m


def point_head(batch, layer=1, head=0, shift=0):
    """A hook on hook_attn_scores that, on decode steps, makes head (layer, head) attend to
    the (i + shift)-th token of each sample's answer span at step i."""
    T = batch.tokens.shape[1]
    starts = torch.tensor([s.answer_spans[0][0] for s in batch.samples])

    def fn(scores, hook):  # scores (B, H, Tq, Tk)
        if scores.shape[2] != 1:
            return scores
        step = scores.shape[3] - T
        target = (starts[:scores.shape[0]] + step + shift).clamp(max=scores.shape[3] - 1)
        scores = scores.clone()
        scores[torch.arange(scores.shape[0]), head, 0, target] += 1e4
        return scores

    return [(f"blocks.{layer}.attn.hook_attn_scores", fn)]


@pytest.fixture(scope="module")
def needles():
    return rh.tasks.niah_batch(n=3, context_len=200, seed=1, depths=[0.2, 0.5, 0.7])


def test_forced_copy_head_scores_one_others_zero(needles):
    m = copy_model()
    res = score_heads(m, needles, fwd_hooks=point_head(needles))
    assert res.n_correct == 3 and res.n_counted == 3, res.predictions
    expected = torch.zeros(2, 2)
    expected[1, 0] = 1.0
    torch.testing.assert_close(res.copy, expected, rtol=0, atol=1e-6)
    assert rh.retrieval_scores(m, needles, method="copy", fwd_hooks=point_head(needles))[1, 0] == 1.0
    # the query row puts all its mass on the first answer token: mass 1 for the forced head
    assert res.mass[1, 0] > 0.999
    # uniform heads: entropy = log(#visible keys) exactly, normalised entropy 1
    T = needles.tokens.shape[1]
    assert abs(float(res.entropy[1, 1]) - math.log(T)) < 1e-4
    assert abs(float(res.entropy[0, 0]) - math.log(8)) < 1e-4
    torch.testing.assert_close(res.entropy_norm[0], torch.ones(2))
    assert res.mass[0].abs().max() == 0  # the needle is far outside the S window
    df = res.to_frame()
    assert set(df.metric) == {"copy", "mass", "entropy", "entropy_norm", "copy_tf"}
    assert df[(df.metric == "copy")].n.unique().tolist() == [3]


def test_wrong_answers_are_not_counted(needles):
    m = copy_model()
    # pointing one token too far: the model emits the wrong digits -> no sample counts -> NaN
    res = score_heads(m, needles, fwd_hooks=point_head(needles, shift=1))
    assert res.n_correct == 0 and res.n_counted == 0
    assert torch.isnan(res.copy).all()
    # averaged over all samples instead: the head copied, but from the wrong span position
    res_all = score_heads(m, needles, fwd_hooks=point_head(needles, shift=1), only_correct=False)
    assert res_all.n_counted == 3
    assert float(res_all.copy[1, 0]) < 1.0


def test_unlocatable_span_is_excluded_not_zero(needles):
    m = copy_model()
    batch = needles.subset([0, 1, 2])
    import copy as _copy

    batch.samples = [_copy.copy(s) for s in batch.samples]
    batch.samples[1].answer_spans = [(-1, -1)]  # Wu et al.'s silent failure mode
    with pytest.warns(UserWarning, match="answer span not located"):
        res = score_heads(m, batch, fwd_hooks=point_head(batch))
    assert res.n_invalid == 1 and res.n_counted == 2
    assert float(res.copy[1, 0]) == 1.0
    assert torch.isnan(res.per_sample["copy"][1]).all()
    batch.samples[1].answer_spans = [(10, 17)]  # in range but holding haystack, not the value
    with pytest.raises(ValueError, match="not the gold value"):
        score_heads(m, batch, strict=True)


def test_non_attention_layers_are_nan():
    m = rh.HybridLM(rh.ModelConfig(layout="MFD", d_model=32, n_heads=2, window=8))
    b = rh.tasks.niah_batch(n=1, context_len=150, seed=0)
    for method in ("copy", "mass"):
        s = rh.retrieval_scores(m, b, method=method)
        assert s.shape == (3, 2)
        assert torch.isnan(s[0]).all() and torch.isnan(s[2]).all()
        assert not torch.isnan(s[1]).any() or method == "copy"
    s = rh.retrieval_scores(m, b, method="mass", recurrent=True)
    assert not torch.isnan(s).any()
    with pytest.raises(ValueError, match="method"):
        rh.retrieval_scores(m, b, method="rouge")


def test_qk_distance_per_head():
    cfg = rh.ModelConfig(layout="SFM", d_model=32, n_heads=4, n_kv_heads=2, window=8)
    a = rh.HybridLM(cfg)
    b = rh.HybridLM(cfg)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b.blocks[1].attn.W_Q.weight[8:16] += 0.5  # head 1 of layer 1 (d_head 8)
    d = qk_distance(b, a)
    assert torch.isnan(d["l2"][2]).all()  # Mamba layer: no per-head Q/K
    nz = (d["l2"][:2] > 0).nonzero().tolist()
    assert nz == [[1, 1]]
    assert abs(float(d["l2"][1, 1]) - 0.5 * math.sqrt(8 * 32)) < 1e-4
    q = a.blocks[1].attn.W_Q.weight[8:16].detach()
    k = a.blocks[1].attn.W_K.weight[0:8].detach()  # kv group 0 serves heads 0 and 1
    ref = (q.pow(2).sum() + k.pow(2).sum()).sqrt()
    assert abs(float(d["rel_l2"][1, 1]) - 0.5 * math.sqrt(8 * 32) / float(ref)) < 1e-4


# --- O(T) rows == eager patterns, every layer kind ------------------------------------------
LAYOUTS = {
    "F": dict(layout="FF"),
    "S": dict(layout="SS", window=16),
    "S-gqa": dict(layout="SF", window=16, n_heads=4, n_kv_heads=2),
    "F-rope": dict(layout="SF", window=32, pos={"F": "rope", "S": "rope"}),
    # every registered mixer, next to a full-attention layer (D next to a sliding one)
    **{k: dict(layout=k + "F") for k in RECURRENT_KINDS},
    "D": dict(layout="DS", window=16),
}


def random_model(spec):
    torch.manual_seed(0)
    kw = dict(d_model=32, n_heads=2, window=16, max_seq_len=512, init_std=0.5, chunk_size=16,
              pos={"F": "nope", "S": "rope"})
    kw.update(spec)
    m = rh.HybridLM(rh.ModelConfig(tie_embeddings=False, **kw)).eval()
    # outputs restricted to frequent haystack letters, so generated tokens often equal the
    # prompt token under a head's argmax (makes the copy comparison non-vacuous); the
    # unembedding does not touch any attention row
    with torch.no_grad():
        keep = torch.tensor(TOKENIZER.encode(" esr"))
        w = m.unembed.weight
        w[keep] = torch.randn(len(keep), w.shape[1], generator=torch.Generator().manual_seed(1))
        w[~torch.isin(torch.arange(w.shape[0]), keep)] = 0
    return m


def wide_span_batch():
    """Prompts over a 4-letter alphabet (the letters random_model can emit) whose 'answer
    span' covers most of the context, so that argmaxes land in it and generated tokens
    match the prompt there often: a non-vacuous comparison of the copy rule."""
    g = torch.Generator().manual_seed(3)
    alphabet = torch.tensor(TOKENIZER.encode(" esr"))
    tokens = alphabet[torch.randint(0, 4, (4, 120), generator=g)]
    tokens[:, 0] = TOKENIZER.BOS
    samples = []
    for row in tokens.tolist():
        samples.append(NeedleSample(tokens=row, answer_tokens=row[5:115], answer_spans=[(5, 115)],
                                    values=[TOKENIZER.decode(row[5:115])], keys=["k"], depth=0.0,
                                    needle_pos=5, context_len=120, query_pos=119, variant="single_1",
                                    haystack="noise"))
    return NeedleBatch(tokens=tokens, samples=samples)


def same_argmax(fast, ref, tol=1e-5):
    """Argmaxes agree, except where the reference row has an exact (float-level) tie."""
    a, b = fast.argmax(-1), ref.argmax(-1)
    va = ref.gather(-1, a[..., None])[..., 0]
    vb = ref.gather(-1, b[..., None])[..., 0]
    return bool(((a == b) | ((va - vb).abs() < tol)).all()), int((a != b).sum())


def wu_copy_reference(batch, generated, alive, step_rows):
    """Wu et al.'s rule written out with loops, on eager rows: per sample, layer, head."""
    n = generated.shape[0]
    out = {}
    for l in step_rows[0]:
        H = step_rows[0][l].shape[1]
        sc = torch.zeros(n, H)
        for b in range(n):
            s, e = batch.samples[b].answer_spans[0]
            for i in range(generated.shape[1]):
                if not alive[b, i]:
                    continue
                for h in range(H):
                    p = int(step_rows[i][l][b, h].argmax())
                    if s <= p < e and int(batch.tokens[b, p]) == int(generated[b, i]):
                        sc[b, h] += 1.0 / (e - s)
        out[l] = sc
    return out


@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_fast_rows_and_scores_equal_eager(kind):
    m = random_model(LAYOUTS[kind])
    rec = kind[0] in RECURRENT_KINDS
    b = wide_span_batch()
    T = b.tokens.shape[1]
    # prefill rows at several query positions
    qp = [T - 1, 70, 3]
    fast = prefill_rows(m, b.tokens, qp, recurrent=rec)
    ref = eager_rows(m, b.tokens, qp, recurrent=rec)
    assert sorted(fast) == sorted(ref) == list(range(m.cfg.n_layers))
    for l in ref:
        assert fast[l].shape == ref[l].shape == (4, m.cfg.n_heads, 3, T)
        torch.testing.assert_close(fast[l], ref[l], rtol=0, atol=2e-5)
        ok, _ = same_argmax(fast[l], ref[l])
        assert ok, f"layer {l}: argmax differs beyond ties"
    # decode rows, step by step
    dec = greedy_decode_rows(m, b.tokens, 6, recurrent=rec, stop_token=None)
    eref = eager_decode_rows(m, b.tokens, dec.generated, recurrent=rec)
    assert len(dec.rows) == len(eref) == 6
    for i, (fr, er) in enumerate(zip(dec.rows, eref)):
        for l in er:
            assert fr[l].shape == er[l].shape == (4, m.cfg.n_heads, T + i)
            torch.testing.assert_close(fr[l], er[l], rtol=0, atol=2e-5)
            assert same_argmax(fr[l], er[l])[0]
    # the scores: copy (every sample counted) and mass equal the reference rule on eager rows
    res = score_heads(m, b, recurrent=rec, only_correct=False, max_new_tokens=6)
    gen = greedy_decode_rows(m, b.tokens, 6, recurrent=rec)  # same stop rule (EOS) as score_heads
    eref = eager_decode_rows(m, b.tokens, gen.generated, recurrent=rec)
    alive = gen.alive
    wu = wu_copy_reference(b, gen.generated, alive, eref)
    for l, sc in wu.items():
        torch.testing.assert_close(res.per_sample["copy"][:, l], sc, rtol=0, atol=1e-6)
        s, e = b.samples[0].answer_spans[0]
        mass_ref = eref[0][l][:, :, s:e].sum(-1)  # (B, H) at the query (step 0 row = position T-1)
        torch.testing.assert_close(res.per_sample["mass"][:, l], mass_ref, rtol=0, atol=2e-5)
    # the mass-only path (prefill rows) agrees with the decode path
    res_mass = score_heads(m, b, methods=("mass",), recurrent=rec)
    torch.testing.assert_close(res_mass.mass, res.mass, rtol=0, atol=2e-5)
    torch.testing.assert_close(res_mass.entropy, res.entropy, rtol=0, atol=1e-4)
    # non-vacuous: argmaxes did land in the span (for most kinds, copies were counted too)
    hits = sum(int(((r.argmax(-1) >= 5) & (r.argmax(-1) < 115)).sum()) for st in eref for r in st.values())
    assert hits > 0
    if kind in ("F", "S", "L"):
        assert res.per_sample["copy"].sum() > 0


# --- copy_tf: teacher-forced copy over every valid sample ------------------------------------
class PointingRows:
    """A hand-built row source (one F layer, 3 heads) whose argmaxes are known. At a query
    position p = q + j (teacher-forced answer position j; q the sample's query position), head 0
    puts its argmax on the needle position holding answer token j, head 1 one position after
    it, head 2 on it for even j and on BOS for odd j; at other positions every row is uniform.
    Needle positions are computed here from the values' layout in the answer (", " between
    values), independently of ``scores.answer_targets``. Records each prefill's input."""

    n_layers, n_heads, layer_types, windows, eos = 1, 3, "F", [None], None

    def __init__(self, batch):
        self.batch, self.calls = batch, []

    def decode(self, ids):
        return TOKENIZER.decode(ids)

    def scorable_layers(self, recurrent=False):
        return [0]

    def needle_pos(self, b: int, j: int):
        s = self.batch.samples[b]
        off = 0
        for (a, e) in s.answer_spans:
            if off <= j < off + (e - a):
                return a + j - off
            off += (e - a) + 2  # the value, then ", "
        return None

    def prefill_rows(self, tokens, query_pos, *, recurrent=False, fwd_hooks=()):
        query_pos = torch.as_tensor(query_pos)
        if query_pos.dim() == 1:
            query_pos = query_pos[None].expand(tokens.shape[0], -1)
        self.calls.append((tokens.clone(), query_pos.clone()))
        B, T = tokens.shape
        nq = query_pos.shape[1]
        rows = torch.ones(B, 3, nq, T)
        for b in range(B):
            q = self.batch.samples[b].query_pos
            for i, p in enumerate(query_pos[b].tolist()):
                rows[b, :, i, p + 1:] = 0  # causal
                t = self.needle_pos(b, p - q) if p >= q else None
                if t is not None:
                    rows[b, 0, i, t] = 50
                    rows[b, 1, i, t + 1] = 50
                    rows[b, 2, i, t if (p - q) % 2 == 0 else 0] = 50
        return {0: rows / rows.sum(-1, keepdim=True)}

    def decode_rows(self, *a, **k):
        raise AssertionError("copy_tf needs no decoding")


@pytest.mark.parametrize("variant", ["single_1", "multivalue"])
def test_copy_tf_on_hand_built_rows(variant):
    batch = rh.tasks.niah_batch(n=3, context_len=400, seed=2, variant=variant)
    src = PointingRows(batch)
    res = score_heads(src, batch, methods=("mass",))
    n_val = [sum(e - a for a, e in s.answer_spans) for s in batch.samples]  # needle tokens per answer
    even = torch.tensor([sum(1 for j in range(len(s.answer_tokens)) if src.needle_pos(b, j) is not None
                             and j % 2 == 0) / n for b, (s, n) in enumerate(zip(batch.samples, n_val))])
    torch.testing.assert_close(res.per_sample["copy_tf"][:, 0, 0], torch.ones(3))
    torch.testing.assert_close(res.per_sample["copy_tf"][:, 0, 1], torch.zeros(3))
    torch.testing.assert_close(res.per_sample["copy_tf"][:, 0, 2], even)
    torch.testing.assert_close(res.copy_tf[0], torch.stack([torch.tensor(1.0), torch.tensor(0.0), even.mean()]))
    # the teacher-forced pass: prompt + gold answer (all but its last token), rows at q .. q + n - 1
    tok, qp = src.calls[-1]
    T = batch.tokens.shape[1]
    for b, s in enumerate(batch.samples):
        n = len(s.answer_tokens)  # the last answer token is a needle token: every position scored
        assert tok[b, :T].tolist() == s.tokens and tok[b, T:T + n - 1].tolist() == s.answer_tokens[:-1]
        assert qp[b, :n].tolist() == list(range(T - 1, T - 1 + n))
    if variant == "multivalue":  # separators (", ") are answer tokens with no needle position
        assert len(batch.samples[0].answer_tokens) == n_val[0] + 2 * (len(batch.samples[0].answer_spans) - 1)
    assert "copy_tf" in rh.detect.metrics.retrieval_metrics()
    torch.testing.assert_close(rh.retrieval_scores(src, batch, method="copy_tf"), res.copy_tf)


def test_copy_tf_counts_every_valid_sample_not_only_correct(needles):
    """A model that answers nothing: copy (correct answers only) is NaN, copy_tf is a number;
    an invalid sample is left out of copy_tf as of every other average."""
    m = copy_model()
    res = score_heads(m, needles, fwd_hooks=point_head(needles, shift=1))
    assert res.n_correct == 0 and torch.isnan(res.copy).all()
    assert not torch.isnan(res.copy_tf).any()
    assert res.to_frame().query("metric == 'copy_tf'").n.unique().tolist() == [3]
    import copy as _copy

    batch = needles.subset([0, 1, 2])
    batch.samples = [_copy.copy(s) for s in batch.samples]
    batch.samples[1].answer_spans = [(-1, -1)]
    with pytest.warns(UserWarning, match="answer span not located"):
        res = score_heads(m, batch, methods=("mass",))
    assert torch.isnan(res.per_sample["copy_tf"][1]).all() and not torch.isnan(res.copy_tf).any()


@pytest.mark.parametrize("kind", ["F", "S-gqa", "F-rope", "M", "D"])
def test_copy_tf_equals_the_rule_on_eager_rows(kind):
    """copy_tf from the O(T) teacher-forced rows equals the rule applied to rows cut out of full
    eager patterns of prompt + answer (every layer kind; recurrent ones through effective attention)."""
    m = random_model(LAYOUTS[kind])
    rec = kind[0] in RECURRENT_KINDS
    b = wide_span_batch()
    T = b.tokens.shape[1]
    res = score_heads(m, b, methods=("mass",), recurrent=rec)
    ans = torch.tensor([s.answer_tokens for s in b.samples])  # (4, 110): row[5:115]
    n = ans.shape[1]
    ref = eager_rows(m, torch.cat([b.tokens, ans[:, :-1]], 1), list(range(T - 1, T - 1 + n)), recurrent=rec)
    target = torch.arange(5, 115)
    hits = 0
    for l, r in ref.items():
        hit = (r.argmax(-1) == target).float()  # (B, H, n)
        hits += int(hit.sum())
        torch.testing.assert_close(res.per_sample["copy_tf"][:, l], hit.mean(-1), rtol=0, atol=1e-6)
    assert hits > 0 or kind in RECURRENT_KINDS  # non-vacuous where argmaxes can land on the target


TINY_DEEP = __import__("pathlib").Path(__file__).parents[1] / "fixtures" / "tiny_deep" / "step_001600"


def test_copy_tf_of_a_trained_checkpoint_tracks_copy():
    """tests/fixtures/tiny_deep (SSSSSF, answers every needle at its training length): on 16
    single_1 needles of 160 tokens every sample is answered correctly, so copy (greedy decode
    rows, correct samples) and copy_tf (teacher-forced rows, all samples) read the same rows;
    they differ only where a value repeats a digit (copy credits any span position holding the
    produced token, copy_tf only the exact one). Measured (layer 5, heads 0..7):
    copy    0.196 0.518 1.000 1.000 0.429 1.000 0.991 1.000
    copy_tf 0.188 0.482 1.000 1.000 0.411 1.000 0.991 1.000
    i.e. the 4 top F heads by copy have copy = copy_tf = 1.000, the fifth 0.991 in both, and
    |copy - copy_tf| <= 0.036 over all 8; SWA heads (needle outside the window) are 0 in both."""
    m = rh.load_checkpoint(TINY_DEEP)
    batch = rh.tasks.niah_batch(n=16, context_len=160, seed=0)
    res = score_heads(m, batch)
    assert res.n_correct == 16
    copy, tf = res.copy[5], res.copy_tf[5]
    top = copy.argsort(descending=True)[:4]
    assert (copy[top] > 0.95).all()
    torch.testing.assert_close(tf[top], copy[top], rtol=0, atol=0.02)
    assert (copy - tf).abs().max() <= 0.05 and (tf <= copy + 1e-6).all()
    assert res.copy_tf[:5].abs().max() == 0 and res.copy[:5].abs().max() == 0
