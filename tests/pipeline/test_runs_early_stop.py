"""The early stop of ``train_and_scan``: when a run is cut short, and what ``stop_niah`` adds.

The trainer and the scanner are replaced by fakes that write what the real ones would
(``metrics.jsonl`` rows with a NIAH accuracy, ``scan/formation.json`` with a mass formation
step), so the stopping rule is tested on known numbers in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import retrieval_heads as rh
from retrieval_heads.pipeline import runs as runs_mod

# NIAH accuracy the fake trainer reports at each step: the attention pattern (mass) forms at
# step 100, but the model only retrieves from step 400 on
NIAH = {s: (0.0 if s < 400 else 1.0) for s in range(0, 1001, 50)}
MASS_FORMED_AT = 100


@pytest.fixture
def fakes(monkeypatch):
    trained_to = []

    def fake_train(model_cfg, train_cfg, run_dir, *, resume, stop_at, **_):
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        done = trained_to[-1] if trained_to else -1
        with open(run_dir / "metrics.jsonl", "a") as f:
            for s in range(0, stop_at + 1, train_cfg.eval_every):
                if s > done:
                    f.write(json.dumps({"step": s, "tokens_seen": s * 10, "niah_acc": NIAH[s]}) + "\n")
        trained_to.append(stop_at)

    def fake_scan(run_dir, **_):
        scan = Path(run_dir) / "scan"
        scan.mkdir(exist_ok=True)
        step = MASS_FORMED_AT if trained_to[-1] >= MASS_FORMED_AT else None
        (scan / "formation.json").write_text(json.dumps({"run": {"step": None},
                                                         "measures": {"mass": {"step": step}}}))

    monkeypatch.setattr("retrieval_heads.train.loop.train", fake_train)
    monkeypatch.setattr("retrieval_heads.pipeline.scanner.scan", fake_scan)
    return trained_to


def _cfgs():
    tc = rh.TrainConfig(steps=1000, save_every=50, eval_every=50, save_log_spaced=False)
    return rh.ModelConfig(layout="SF", d_model=16, n_heads=2, d_mlp=32), tc


def test_stop_on_mass_alone_ends_three_checkpoints_after_formation(tmp_path, fakes):
    mc, tc = _cfgs()
    r = runs_mod.train_and_scan(mc, tc, tmp_path / "run", stop_when_formed=3, stop_measure="mass", log=lambda m: None)
    assert r["stopped_early"] and fakes[-1] == 300  # formed at 100, held at 150, 200, 250: the chunk ends at 300
    assert r["formation"]["step"] == MASS_FORMED_AT


def test_stop_niah_waits_until_the_model_retrieves(tmp_path, fakes):
    mc, tc = _cfgs()
    r = runs_mod.train_and_scan(mc, tc, tmp_path / "run", stop_when_formed=3, stop_measure="mass", stop_niah=0.5,
                                log=lambda m: None)
    # chunks end at 150, 300, 450, ...: NIAH is 0 at 300 and 1 at 450, so the run goes on to 450
    assert r["stopped_early"] and fakes[-1] == 450
    assert r["formation"]["step"] == MASS_FORMED_AT  # the formation step itself is still the mass one


def test_stop_niah_never_reached_trains_the_whole_budget(tmp_path, fakes, monkeypatch):
    monkeypatch.setattr(runs_mod, "_last_niah_acc", lambda run_dir: 0.0)
    mc, tc = _cfgs()
    r = runs_mod.train_and_scan(mc, tc, tmp_path / "run", stop_when_formed=3, stop_measure="mass", stop_niah=0.5,
                                log=lambda m: None)
    assert not r["stopped_early"] and fakes[-1] == 1000
