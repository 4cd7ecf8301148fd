"""``retrieval-heads scan RUN --tasks FILE.jsonl`` / ``rh.scan(RUN, tasks=...)``: the task file's prompts
are scored (the file recorded in the settings and its contents in the cache key), answers that
cannot be located are reported, and a task file given as ``--haystack`` is refused in one line."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

import retrieval_heads as rh
from retrieval_heads.cli import main
from retrieval_heads.pipeline import ScanSettings

DATA = Path(__file__).resolve().parents[2] / "data" / "ruler_niah_single_1.jsonl"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    cfg = rh.ModelConfig(layout="SF", d_model=32, n_heads=2, window=8, max_seq_len=1024)
    rh.save_checkpoint(d, 0, rh.HybridLM(cfg))
    return d


def cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_scan_with_a_task_file(run, tmp_path, capsys):
    tasks = tmp_path / "t.jsonl"
    lines = DATA.read_text().splitlines()
    bad = json.loads(lines[0])
    bad["outputs"] = ["0000000"]  # does not occur in the input
    tasks.write_text("\n".join(lines + [json.dumps(bad)]) + "\n")
    code, _, err = cli(["scan", run, "--tasks", tasks, "--out", tmp_path / "scan", "--no-progress", "--no-report",
                        "--max-new-tokens", "8"], capsys)
    assert code in (0, None), err
    assert "5 record(s), 4 with located answers, 1 not located (first: line 5: output '0000000'" in err
    state = json.loads((tmp_path / "scan" / "scan.json").read_text())
    assert state["settings"]["tasks"] == str(tasks)
    ck = pd.read_parquet(tmp_path / "scan" / "checkpoints.parquet")
    assert int(ck["n_samples"].iloc[0]) == 4
    niah = pd.read_parquet(tmp_path / "scan" / "niah.parquet")
    lens = sorted({len(s.tokens) for s in rh.tasks.load_jsonl(tasks).samples})
    assert sorted(set(niah["context_len"])) == lens and int(niah["n"].sum()) == 4
    # the key depends on the file's contents; no task file: the key of earlier scans
    s = ScanSettings(tasks=str(tasks), context_lens=tuple(lens), max_new_tokens=8)
    k1 = s.key()
    shutil.copy(DATA, tasks)
    assert s.key() != k1
    assert "tasks" not in json.dumps(ScanSettings().key())


def test_task_file_as_haystack_is_refused_in_one_line(run, capsys):
    code, out, err = cli(["scan", run, "--haystack", DATA, "--no-progress"], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "is a task file, not filler text; give it as --tasks" in err


def test_bad_task_file_names_the_line(run, tmp_path, capsys):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"input": "a 1", "outputs": ["1"]}\n{"input": 3, "outputs": ["1"]}\n')
    code, _, err = cli(["scan", run, "--tasks", f, "--no-progress"], capsys)
    assert code == 2 and "bad.jsonl:2: 'input' must be a non-empty string" in err
