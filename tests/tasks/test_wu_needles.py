"""Wu-format needle files (``data/wu_needles.jsonl``: ``{"needle", "question", "real_needle"}`` per
line, the shape of Retrieval_Head's ``haystack_for_detect/needles.jsonl``) converted to RULER records
for ``--tasks``: exact lengths, the needle at a sentence boundary, the real needle located exactly."""

import json
from pathlib import Path

import pytest

import retrieval_heads as rh
from retrieval_heads.detect.compat import overlap_span
from retrieval_heads.tasks import TOKENIZER, load_jsonl
from retrieval_heads.tasks.wu import WuNeedle, main, question_text, read_wu_needles, wu_records

DATA = Path(__file__).resolve().parents[2] / "data"
TINY_DEEP = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_deep" / "step_001600"


def test_the_example_file_has_wus_shape():
    raw = [json.loads(x) for x in (DATA / "wu_needles.jsonl").read_text().splitlines()]
    assert all(set(d) == {"needle", "question", "real_needle"} for d in raw)
    needles = read_wu_needles(DATA / "wu_needles.jsonl")
    assert len(needles) == 3 and all(n.real_needle in n.needle for n in needles)


def test_records_have_exact_lengths_and_the_needle_at_a_sentence_boundary(tmp_path):
    needles = read_wu_needles(DATA / "wu_needles.jsonl")
    recs = wu_records(needles, context_lens=[300, 500], depths=[0.0, 0.5, 1.0], haystack="essay")
    assert len(recs) == 3 * 2 * 3 and [r["index"] for r in recs] == list(range(18))
    f = tmp_path / "t.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    tasks = load_jsonl(f)
    assert tasks.n_unlocated == 0 and len(tasks.samples) == 18
    for r, s, nd in zip(recs, tasks.samples, [n for n in needles for _ in range(6)]):
        assert len(s.tokens) == r["length"] in (300, 500)
        (a, b), = s.answer_spans
        assert TOKENIZER.decode(s.tokens[a:b]) == nd.real_needle
        text = r["input"]
        at = text.index(" " + nd.needle)
        if r["index"] % 3 < 2:  # depths 0 and 0.5: Wu backs off to the last period
            assert at == 0 or text[at - 1] == "."
        else:  # depth 1: the needle ends the (cut) haystack, right before the question
            assert text[at:] == " " + nd.needle + question_text(nd.question)
        assert text.endswith(question_text(nd.question))
    assert recs[0]["input"].startswith(" " + needles[0].needle)  # depth 0: the needle opens the prompt


def test_a_real_needle_not_verbatim_is_counted_unlocated_but_found_by_wus_overlap_rule(tmp_path):
    nd = WuNeedle(1, "The guard dislikes Mr Green because he is rude to the staff.", "Why ?",
                  "Because he is rude to the staff.")
    rec = wu_records([nd], context_lens=[300], depths=[0.5])[0]
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps(rec) + "\n")
    tasks = load_jsonl(f)
    assert tasks.n_unlocated == 1 and "does not occur in the input" in tasks.errors[0][1]
    toks = [TOKENIZER.BOS] + TOKENIZER.encode(rec["input"])
    s, e = overlap_span(toks, TOKENIZER.encode(nd.real_needle))
    assert "because he is rude to the staff" in TOKENIZER.decode(toks[s:e + 2])


def test_bad_needle_files_name_their_line(tmp_path):
    f = tmp_path / "n.jsonl"
    f.write_text(json.dumps({"needle": "a.", "question": "b", "real_needle": "a"}) + "\n"
                 + json.dumps({"needle": "a.", "question": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"n.jsonl:2: expected \{\"needle\", \"question\", \"real_needle\"\}"):
        read_wu_needles(f)
    with pytest.raises(ValueError, match="too short for the needle of line 1"):
        wu_records(read_wu_needles(DATA / "wu_needles.jsonl"), context_lens=[50], depths=[0.5])


def test_converted_file_is_scanned_and_evaluated_as_tasks(tmp_path, capsys):
    out = tmp_path / "wu_tasks.jsonl"
    main([str(DATA / "wu_needles.jsonl"), "--context-lens", "300", "--depths", "0.2,0.8", "--out", str(out)])
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    model = rh.load_checkpoint(TINY_DEEP)
    ev = rh.eval.niah_tasks(model, out, progress=False)
    assert ev.attrs["n_records"] == 6 and ev.attrs["n_unlocated"] == 0
    tasks = load_jsonl(out)
    res = rh.detect.HeadScores.merge([rh.score_heads(model, b, compat="wu") for b in tasks.batches()])
    assert res.n_samples == 6 and res.n_invalid == 0
