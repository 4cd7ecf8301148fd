"""RULER-format task files (``rh.tasks.load_jsonl``): exact answer spans in the byte tokenizer and in
an HF tokenizer, unlocatable answers counted and reported, bad lines rejected with their line
number, a task file given as a haystack refused with a hint to use --tasks."""

import json
from pathlib import Path

import pytest

import retrieval_heads as rh
from retrieval_heads.tasks import TOKENIZER, load_haystack, load_jsonl

DATA = Path(__file__).resolve().parents[2] / "data" / "ruler_niah_single_1.jsonl"


def _write(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_example_file_round_trip_with_exact_spans():
    tasks = load_jsonl(DATA)
    assert tasks.n_records == 4 and tasks.n_unlocated == 0 and len(tasks.samples) == 4
    for s, line in zip(tasks.samples, DATA.read_text().splitlines()):
        rec = json.loads(line)
        assert s.tokens == [TOKENIZER.BOS] + TOKENIZER.encode(rec["input"])
        (a, b), = s.answer_spans
        assert TOKENIZER.decode(s.tokens[a:b]) == rec["outputs"][0] == s.values[0]
        assert TOKENIZER.decode(s.answer_tokens) == " " + rec["outputs"][0]
        assert s.query_pos == len(s.tokens) - 1
    batches = tasks.batches()
    assert sum(len(b) for b in batches) == 4 and all(b.tokens.shape[1] == len(b.samples[0].tokens) for b in batches)


def test_unlocatable_answers_are_counted_and_reported(tmp_path):
    f = _write(tmp_path / "t.jsonl", [{"index": 0, "input": "the value is 123. Value?", "outputs": ["123"]},
                                      {"index": 1, "input": "nothing here. Value?", "outputs": ["999"]}])
    tasks = load_jsonl(f)
    assert tasks.n_records == 2 and tasks.n_unlocated == 1 and len(tasks.samples) == 1
    assert tasks.errors == [(2, "output '999' does not occur in the input")]
    assert "1 not located (first: line 2: output '999'" in tasks.summary()


@pytest.mark.parametrize("line,why", [
    ("{not json", "not JSON"),
    ('[1, 2]', "expected a JSON object"),
    ('{"input": "x"}', "missing 'outputs'"),
    ('{"input": "x", "outputs": "x"}', "'outputs' must be a non-empty list"),
    ('{"input": "x", "outputs": ["x"], "index": "a"}', "'index' must be an integer"),
])
def test_bad_lines_are_rejected_with_their_line_number(tmp_path, line, why):
    f = _write(tmp_path / "bad.jsonl", [{"input": "a 1", "outputs": ["1"]}, "", line])
    with pytest.raises(ValueError, match=rf"^tasks: .*bad.jsonl:3: {why}"):
        load_jsonl(f)


def test_hf_tokenizer_spans_are_exact_or_reported():
    from retrieval_heads.hf.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    tasks = load_jsonl(DATA, tok)
    assert tasks.n_records == 4
    for s in tasks.samples:
        (a, b), = s.answer_spans
        assert tok.decode(s.tokens[a:b]).strip() == s.values[0]
    assert len(tasks.samples) + tasks.n_unlocated == 4


def test_task_file_as_haystack_is_refused(tmp_path):
    for name in (str(DATA), str(tmp_path / "x.json")):
        with pytest.raises(ValueError, match=r"^haystack: .* is a task file, not filler text; give it as --tasks"):
            load_haystack(name)
    assert rh.tasks.load_jsonl is load_jsonl
