"""Scoring rules of the original code by name (``retrieval_heads.detect.compat``): each choice and
preset on hand-made prompts and a scripted model whose attention and answers are known, so every
expected score is worked out by hand; then the presets on ``tests/fixtures/tiny_deep`` and in scans."""

import json
import shutil
from pathlib import Path

import pytest
import torch

import retrieval_heads as rh
from retrieval_heads.cli import main
from retrieval_heads.detect import compat
from retrieval_heads.detect.rows import DecodeRows
from retrieval_heads.detect.scores import score_heads
from retrieval_heads.pipeline import ScanSettings
from retrieval_heads.tasks import TOKENIZER
from retrieval_heads.tasks.niah import NeedleBatch, NeedleSample

TINY_DEEP = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_deep"


# --- a scripted model: known rows, known answers --------------------------------------------
class Scripted:
    """A row source with one F layer of two heads. Head 0 copies: at decode step i its argmax is
    the prompt position ``points[i]`` (default ``copy_from + i``); head 1 always looks at BOS
    (position 0). Prefill rows (and the first decode step's, when ``focus`` names T - 1): head 0
    spreads its mass uniformly over ``focus[q]`` at query row q (default: every key), head 1
    one-hot on 0. ``answer`` is the text it generates (then EOS)."""

    n_layers, n_heads, layer_types, windows, eos = 1, 2, "F", [None], TOKENIZER.EOS

    def __init__(self, answer: str, copy_from: int, focus: dict | None = None, points: list | None = None):
        self.answer, self.copy_from, self.focus = TOKENIZER.encode(answer), copy_from, focus or {}
        self.points = points
        self.queries = []  # prefill query positions asked for
        self.asked = None  # max_new_tokens of the last decode

    def decode(self, ids):
        return TOKENIZER.decode(ids)

    def encode(self, text):
        return TOKENIZER.encode(text)

    def scorable_layers(self, recurrent=False):
        return [0]

    def _row(self, T, q):
        r = torch.zeros(2, T)
        keys = self.focus.get(q, range(q + 1))
        r[0, list(keys)] = 1.0 / len(keys)
        r[1, 0] = 1.0
        return r

    def prefill_rows(self, tokens, query_pos, *, recurrent=False, fwd_hooks=()):
        B, T = tokens.shape
        qp = torch.as_tensor(query_pos).reshape(B, -1)
        self.queries.append(qp.tolist())
        return {0: torch.stack([torch.stack([self._row(T, int(q)) for q in qs], 1) for qs in qp])}

    def decode_rows(self, tokens, max_new_tokens, *, recurrent=False, fwd_hooks=(), reduce=None):
        B, T = tokens.shape
        self.asked = max_new_tokens
        script = (self.answer + [TOKENIZER.EOS] * max_new_tokens)[:max_new_tokens]
        rows, alive, done = [], [], False
        for i, t in enumerate(script):
            r = torch.zeros(B, 2, T + i)
            p = self.points[i] if self.points and i < len(self.points) else self.copy_from + i
            r[:, 0, p if p < T else 0] = 1.0
            r[:, 1, 0] = 1.0
            if i == 0 and T - 1 in self.focus:  # the first step's rows: the query row of the last token
                r = torch.stack([self._row(T, T - 1)] * B)
            rows.append({0: reduce(i, 0, r) if reduce else r})
            alive.append(not done)
            done = done or t == TOKENIZER.EOS
        gen = torch.tensor([script] * B)
        return DecodeRows(generated=gen, alive=torch.tensor([alive] * B), rows=rows)


def needle(prefix: str, value: str, suffix: str = ".\nWhat is the number? The number is: ") -> NeedleBatch:
    """One byte-tokenised prompt: BOS + prefix + value + suffix, the value's exact span known."""
    text = prefix + value + suffix
    toks = [TOKENIZER.BOS] + TOKENIZER.encode(text)
    s = 1 + len(prefix.encode())
    sample = NeedleSample(tokens=toks, answer_tokens=TOKENIZER.encode(value), answer_spans=[(s, s + len(value))],
                          values=[value], keys=["k"], depth=0.5, needle_pos=1, context_len=len(toks),
                          query_pos=len(toks) - 1, variant="single_1", haystack="noise")
    return NeedleBatch(torch.tensor([toks]), [sample])


# --- the choices and presets ---------------------------------------------------------------
def test_presets_set_every_choice_as_the_original_code_does():
    assert compat.resolve(None) == compat.resolve("ours") == compat.Compat(1, "exact", "exact", "exact")
    assert compat.resolve("thunlp") == compat.Compat(2, "variants", "exact", "exact")
    assert compat.resolve("wu") == compat.Compat(1, "exact", "overlap", "rouge")
    assert compat.resolve("wu", accept="exact").to_dict() == {
        "query_offset": 1, "answer_positions": "exact", "span_locate": "overlap", "accept": "exact"}
    assert compat.resolve(None, query_offset=2, answer_positions="variants").name() == "thunlp"
    for bad, msg in ((dict(compat="study"), "compat: 'study'"), (dict(query_offset=0), "query_offset"),
                     (dict(accept="bleu"), "accept: 'bleu'; use one of exact, rouge")):
        with pytest.raises(ValueError, match=msg):
            compat.resolve(**bad)


def test_query_offset_2_reads_the_row_of_the_second_to_last_token():
    b = needle("Haystack. The number is: ", "7733291")
    T = b.tokens.shape[1]
    s, e = b.samples[0].answer_spans[0]
    m = Scripted("7733291", s, focus={T - 1: range(s, e), T - 2: [0]})  # last row on the value, the one before on BOS
    ours = score_heads(m, b, methods=("mass",))  # (the second prefill is copy_tf's, at the answer positions)
    assert m.queries[0] == [[T - 1]] and ours.mass[0, 0] == pytest.approx(1.0)
    m.queries.clear()
    study = score_heads(m, b, methods=("mass",), query_offset=2)
    assert m.queries[0] == [[T - 2]] and study.mass[0, 0] == pytest.approx(0.0)
    # with copy: decoding still starts at the last token (copy unchanged), the row metrics move
    both = score_heads(m, b, methods=("copy", "mass"), query_offset=2)
    assert both.mass[0, 0] == pytest.approx(0.0) and both.copy[0, 0] == pytest.approx(1.0)
    assert both.copy[0, 0] == score_heads(m, b, methods=("copy", "mass")).copy[0, 0]


def test_variants_find_every_spelling_and_mass_counts_each_position_once():
    # "42" occurs as ': 42.' twice (a needle, and the gold one), ' 42' (a mention) and bare in 'x42'
    prefix = "A: 42. Then 42 and x42 too. The number is: "
    b = needle(prefix, "42", suffix=".\nWhich? ")
    toks = b.tokens[0].tolist()
    text = TOKENIZER.decode(toks)
    pos = compat.variant_positions(toks, ["42"], TOKENIZER.encode)
    # byte positions: BOS shifts text offsets by one
    at = lambda sub, start=0: 1 + text.index(sub, start)  # noqa: E731
    want = set()
    for i in range(len(text)):
        for sp in compat.answer_spellings("42"):
            if text.startswith(sp, i):
                want.update(range(1 + i, 1 + i + len(sp)))
    assert pos == sorted(want)
    # every spelling is there: ': 42.' covers ':' ' ' '4' '2' '.', the bare '42' of 'x42' too
    assert {at(": 42."), at(": 42.") + 4, at("x42") + 1, at(" 42 ")} <= set(pos)
    assert at("x42") not in pos  # 'x' is no part of a spelling
    # mass with a head spread evenly over all T keys: |positions| / T, against |span| / T
    T = len(toks)
    m = Scripted("42", 0)
    exact = score_heads(m, b, methods=("mass",)).mass[0, 0]
    study = score_heads(m, b, methods=("mass",), answer_positions="variants").mass[0, 0]
    assert exact == pytest.approx(2 / T) and study == pytest.approx(len(pos) / T)


def test_overlap_span_lands_early_on_a_value_that_repeats_digits():
    # 1234545: the needle's token set {1,2,3,4,5} is complete after "12345", so the window that
    # starts 2 tokens early (": 12345") already covers it: Wu's span is [s-2, s+5), not [s, s+7)
    b = needle("Haystack text. The special number is: ", "1234545")
    toks = b.tokens[0].tolist()
    s, e = b.samples[0].answer_spans[0]
    sp = compat.overlap_span(toks, TOKENIZER.encode("1234545"))
    assert sp == (s - 2, e - 2) and TOKENIZER.decode(toks[sp[0]:sp[1]]) == ": 12345"
    # no repeated digit -> the exact span; a shift of 1 for 1234565 (6 distinct digits by index 5)
    assert compat.overlap_span(toks[:s] + TOKENIZER.encode("7654321"), TOKENIZER.encode("7654321")) == (s, e)
    assert compat.overlap_span(toks[:s] + TOKENIZER.encode("1234565"), TOKENIZER.encode("1234565")) == (s - 1, e - 1)
    # a perfect copying head: 7 hits of 1/7 on the exact span; on Wu's span the last two digits
    # (positions s+5, s+6) fall outside: 5/7
    m = Scripted("1234545", s)
    assert score_heads(m, b, methods=("copy",)).copy[0, 0] == pytest.approx(1.0)
    wu = score_heads(m, b, methods=("copy",), span_locate="overlap")
    assert wu.copy[0, 0] == pytest.approx(5 / 7) and wu.copy[0, 1] == 0.0
    # mass over Wu's span: a head on the last two digits has all its mass on the exact span, none on Wu's
    T = b.tokens.shape[1]
    m2 = Scripted("", 0, focus={T - 1: [e - 2, e - 1]})
    assert score_heads(m2, b, methods=("mass",)).mass[0, 0] == pytest.approx(1.0)
    assert score_heads(m2, b, methods=("mass",), span_locate="overlap").mass[0, 0] == pytest.approx(0.0)


def test_overlap_span_not_found_is_an_invalid_sample_never_zeros():
    b = needle("Haystack. The number is: ", "1234567")
    b.samples[0].values = ["9999998"]  # the rule finds no window holding {9, 8}
    with pytest.warns(UserWarning, match="1 of 1 sample"):
        res = score_heads(Scripted("1234567", 1), b, methods=("copy",), span_locate="overlap")
    assert res.n_invalid == 1 and "not located by the overlap rule" in res.invalid[0][1]
    assert torch.isnan(res.copy).all()


def test_rouge_accepts_an_answer_with_a_wrong_character_that_exact_refuses():
    value = "a1b2c3d4-e5f6-a7b8-c9d0-e1f2a3b4c5d6"
    wrong = value[:-1] + "7"  # one wrong character: 4 of 5 ROUGE words right
    assert compat.rouge1_recall(value, wrong) == pytest.approx(0.8)
    assert compat.rouge_accepts([value], wrong) and not compat.rouge_accepts(["7733291"], "7733290")
    b = needle("Haystack. The uuid is: ", value, suffix=".\nWhat is the uuid? The uuid is: ")
    s, e = b.samples[0].answer_spans[0]
    m = Scripted(wrong, s)
    exact = score_heads(m, b, methods=("copy",))
    assert exact.n_correct == 0 and exact.n_counted == 0 and torch.isnan(exact.copy).all()
    rouge = score_heads(m, b, methods=("copy",), accept="rouge")
    assert rouge.n_correct == 1 and rouge.n_counted == 1 and rouge.match[0] == 0.0
    assert rouge.copy[0, 0] == pytest.approx((e - s - 1) / (e - s))  # every copied character but the wrong one


def test_rouge_decodes_to_the_first_newline_and_counts_no_later_step():
    b = needle("Haystack. The number is: ", "7733291")
    s, e = b.samples[0].answer_spans[0]
    # answers the value, a newline, then copies the value again from the span: 7 more hits that
    # Wu's rule never sees (it stops after the newline); without that stop they count (copy 2.0)
    span = list(range(s, e))
    m = Scripted("7733291\n7733291", s, points=span + [0] + span)
    res = score_heads(m, b, methods=("copy",), accept="rouge")
    assert m.asked == 50  # Wu's decode length
    assert res.predictions[0] == "7733291\n" and res.n_counted == 1
    assert res.copy[0, 0] == pytest.approx(1.0)
    assert score_heads(m, b, methods=("copy",), max_new_tokens=15).copy[0, 0] == pytest.approx(2.0)
    assert score_heads(m, b, methods=("copy",), accept="rouge", max_new_tokens=3).predictions[0] == "773"


def test_compat_keyword_equals_its_single_choices_and_reaches_retrieval_scores():
    b = needle("Some haystack here. The special number is: ", "1234545")
    s, _ = b.samples[0].answer_spans[0]
    m = Scripted("1234545", s)
    a = score_heads(m, b, compat="wu")
    c = score_heads(m, b, span_locate="overlap", accept="rouge")
    assert torch.equal(a.copy.nan_to_num(-1), c.copy.nan_to_num(-1)) and a.compat == compat.resolve("wu").to_dict()
    model = rh.load_checkpoint(TINY_DEEP / "step_001600")
    batch = rh.tasks.niah_batch(n=2, context_len=160, seed=0)
    direct = score_heads(model, batch, methods=("mass",), compat="thunlp").mass
    assert torch.equal(rh.retrieval_scores(model, batch, method="mass", compat="thunlp").nan_to_num(-1),
                       direct.nan_to_num(-1))


# --- on tiny_deep: how far the originals are from ours --------------------------------------
def test_presets_on_tiny_deep_differ_from_ours_where_the_issue_says():
    model = rh.load_checkpoint(TINY_DEEP / "step_001600")
    batches = ScanSettings(context_lens=(160,)).batches()
    res = {c: rh.detect.HeadScores.merge([score_heads(model, b, compat=c) for b in batches])
           for c in ("ours", "thunlp", "wu")}
    d = lambda c, m: float((res[c].scores(m) - res["ours"].scores(m)).abs().nan_to_num(0).max())  # noqa: E731
    assert d("thunlp", "mass") > 0.5  # the query row moves to ':' of "is: " (docs/FORMATS.md: 0.955)
    assert d("thunlp", "copy") == 0.0  # the study's choices leave copy alone
    assert d("wu", "copy") > 0.0  # spans of values with a repeated digit land early (0.100)
    assert res["thunlp"].top_heads(1, "mass")[0][:2] != res["ours"].top_heads(1, "mass")[0][:2]
    shifted = [compat.overlap_span(b.tokens[i].tolist(), TOKENIZER.encode(s.values[0])) != tuple(s.answer_spans[0])
               for b in batches for i, s in enumerate(b.samples)]
    assert any(shifted)


# --- scans -----------------------------------------------------------------------------------
def test_settings_record_and_key_the_choices_and_defaults_key_as_before():
    base = ScanSettings(context_lens=(160,))
    assert "compat" not in base.to_dict() and "query_offset" not in base.to_dict()
    assert ScanSettings(context_lens=(160,), compat="ours").key() == base.key()
    wu = ScanSettings(context_lens=(160,), compat="wu")
    assert wu.to_dict()["compat"] == "wu" and ScanSettings(**wu.to_dict()).key() == wu.key() != base.key()
    assert ScanSettings(context_lens=(160,), span_locate="overlap", accept="rouge").key() == wu.key()
    assert ScanSettings(context_lens=(160,), compat="thunlp").compat_kw() == compat.resolve("thunlp").to_dict()
    with pytest.raises(ValueError, match="answer_positions: 'all'"):
        ScanSettings(answer_positions="all")


def test_scan_compat_thunlp_records_the_preset_and_scores_as_the_api(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(TINY_DEEP / "step_001600", run / "step_001600")
    args = ["--context-lens", "160", "--depths", "0.5", "--n-per-cell", "2", "--no-progress", "--no-report"]
    with pytest.raises(SystemExit) as e:
        main(["scan", str(run), *args, "--compat", "thunlp"])
    assert e.value.code in (0, None), capsys.readouterr().err
    state = json.loads((run / "scan" / "scan.json").read_text())
    assert state["settings"]["compat"] == "thunlp"
    import pandas as pd

    mass = pd.read_parquet(run / "scan" / "scores.parquet").query("metric == 'mass'")
    model = rh.load_checkpoint(run / "step_001600")
    batch = ScanSettings(**state["settings"]).batches()[0]
    want = score_heads(model, batch, compat="thunlp").mass
    for r in mass.itertuples():
        assert r.value == pytest.approx(float(want[r.layer, r.head]), abs=1e-6)
    with pytest.raises(SystemExit) as e:
        main(["scan", str(run), *args, "--query-offset", "0"])
    assert e.value.code == 2
