"""``retrieval-heads eval CKPT --tasks FILE.jsonl`` / ``rh.eval.niah_tasks``: accuracy over every record
of a RULER-format file, records whose answer is not located answered all the same and counted.
Known answers: tiny_deep answers our own 160-token needles (seed 0) correctly, so a file of those
prompts scores 1 per located record, and a record whose gold value is absent from its prompt scores 0."""

import json
from pathlib import Path

import pytest

import retrieval_heads as rh
from retrieval_heads.cli import main
from retrieval_heads.tasks import TOKENIZER

TINY_DEEP = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_deep" / "step_001600"


def _file(tmp_path) -> tuple[Path, list]:
    """4 of our own prompts as RULER records, then one whose output does not occur in its input."""
    batch = rh.tasks.niah_batch(n=4, context_len=160, seed=0)
    lines = []
    for i, s in enumerate(batch.samples):
        lines.append({"index": i, "input": TOKENIZER.decode(s.tokens[1:]), "outputs": s.values, "length": 160})
    lines.append({"index": 4, "input": lines[0]["input"], "outputs": ["0000000"], "length": 160})
    f = tmp_path / "mine.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return f, batch


def test_accuracy_over_every_record_with_unlocated_answers_counted(tmp_path):
    f, batch = _file(tmp_path)
    model = rh.load_checkpoint(TINY_DEEP)
    want = rh.eval.niah_scores(rh.eval.greedy_answers(model, batch), batch.samples).scores
    assert want == (1.0, 1.0, 1.0, 1.0)  # the known answers this test rests on
    rec = rh.eval.niah_tasks(model, f, details=True, progress=False)
    assert rec["score"].tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert rec["located"].tolist() == [True] * 4 + [False] and rec["line"].tolist() == [1, 2, 3, 4, 5]
    assert rec["depth"].isna().tolist() == [False] * 4 + [True]
    a = rec.attrs
    assert (a["accuracy"], a["n_records"], a["n_located"], a["n_unlocated"]) == (0.8, 5, 4, 1)
    assert a["errors"] == [[5, "output '0000000' does not occur in the input"]]
    cells = rh.eval.niah_tasks(model, f, progress=False)
    assert cells["n"].sum() == 5 and cells["depth"].isna().sum() == 1  # the unlocated record: a cell of its own
    assert cells.loc[cells["depth"].isna(), "accuracy"].item() == 0.0


def test_eval_cli_tasks_prints_accuracy_and_unlocated_and_writes_tables(tmp_path, capsys):
    f, _ = _file(tmp_path)
    out = tmp_path / "ev"
    with pytest.raises(SystemExit) as e:
        main(["eval", str(TINY_DEEP), "--tasks", str(f), "--loss-rows", "1", "--no-progress", "--out", str(out)])
    text = capsys.readouterr().out
    assert e.value.code in (0, None), text
    assert (f"tasks {f}: accuracy 0.800 over 5 record(s), 4 with located answers, 1 not located "
            "(answered all the same, depth NaN; first: line 5: output '0000000' does not occur in the input)") in text
    table = text.split(f"NIAH accuracy ({f}, every record; rows depth, columns length):\n")[1].splitlines()
    assert table[5].split() == ["0.6", "1.00"] and table[6].split() == ["not", "located", "0.00"]
    assert "mean per length: 160: 0.800" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"] == {"path": str(f), "accuracy": 0.8, "n_records": 5, "n_unlocated": 1}
    assert len((out / "tasks.csv").read_text().splitlines()) == 6


def test_a_prompt_too_long_for_the_model_names_its_line(tmp_path):
    f = tmp_path / "long.jsonl"
    f.write_text(json.dumps({"index": 0, "input": "x " * 1100 + "is: 12", "outputs": ["12"]}) + "\n")
    with pytest.raises(ValueError, match=r"long.jsonl:1: context_len: 2207 tokens"):
        rh.eval.niah_tasks(rh.load_checkpoint(TINY_DEEP), f, progress=False)
