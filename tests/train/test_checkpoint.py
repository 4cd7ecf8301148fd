"""Checkpoints: bit-exact round trip, step order, atomic writes, refusals."""

import json

import pytest
import torch

import retrieval_heads as rh
from retrieval_heads.storage.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_train_state,
    read_meta,
    save_checkpoint,
    weights_hash,
)

CFG = rh.ModelConfig(layout="SF", d_model=16, n_heads=2, d_mlp=32, window=4, max_seq_len=64)


def model(seed=0, cfg=CFG):
    torch.manual_seed(seed)
    return rh.HybridLM(cfg)


@pytest.mark.parametrize("layout, tie", [("SF", True), ("SF", False), ("FMDL", True)])
def test_round_trip_bit_exact(tmp_path, layout, tie):
    cfg = CFG.replace(layout=layout, n_layers=None, tie_embeddings=tie)
    m = model(1, cfg)
    tc = rh.TrainConfig(steps=10, context_len=32)
    p = save_checkpoint(tmp_path / "run", 7, m, train_cfg=tc, tokens_seen=123, data_seed=5,
                        extra={"note": "x"})
    assert p.name == "step_000007"
    m2 = rh.load_checkpoint(p)
    assert not m2.training
    a, b = m.state_dict(), m2.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if tie:
        assert m2.unembed.weight is m2.embed.weight
    x = torch.randint(0, 256, (2, 12))
    m.eval()
    assert torch.equal(m(x), m2(x))
    assert m2.checkpoint["step"] == 7 and m2.checkpoint["tokens_seen"] == 123
    assert m2.checkpoint["train"] == tc and m2.checkpoint["data_seed"] == 5
    assert read_meta(p)["model"] == cfg


def test_train_state_round_trip(tmp_path):
    m = model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m(torch.randint(0, 256, (1, 8))).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "step": 3, "tokens_seen": 12, "rng": {"torch": torch.get_rng_state()}}
    p = save_checkpoint(tmp_path, 3, m, train_state=state)
    back = load_train_state(p)
    assert back["step"] == 3 and torch.equal(back["rng"]["torch"], state["rng"]["torch"])
    for k, v in state["optimizer"]["state"].items():
        for name, t in v.items():
            assert torch.equal(back["optimizer"]["state"][k][name], t)
    assert load_train_state(save_checkpoint(tmp_path, 4, m)) is None


def test_list_checkpoints_in_step_order_and_atomic(tmp_path):
    m = model()
    for s in (100, 9, 1000000, 10, 0):
        save_checkpoint(tmp_path, s, m)
    (tmp_path / ".tmp_step_000011_abc").mkdir()  # an interrupted write is never listed
    (tmp_path / "step_junk").mkdir()
    (tmp_path / "metrics.jsonl").write_text("")
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "step_000000", "step_000009", "step_000010", "step_000100", "step_1000000"]
    assert rh.list_checkpoints is list_checkpoints
    with pytest.raises(FileNotFoundError):
        list_checkpoints(tmp_path / "missing")


def test_resave_replaces_atomically(tmp_path):
    p = save_checkpoint(tmp_path, 5, model(0))
    h = weights_hash(p)
    save_checkpoint(tmp_path, 5, model(1))
    assert weights_hash(p) != h
    assert sorted(x.name for x in tmp_path.iterdir()) == ["step_000005"]


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(Exception):  # noqa: B017 - a lambda cannot be saved; torch raises whichever error it picks
        save_checkpoint(tmp_path, 1, model(), train_state={"bad": lambda: 0})
    assert list(tmp_path.iterdir()) == []


def test_refusals(tmp_path):
    p = save_checkpoint(tmp_path, 1, model())
    (p / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="pickle-format weight file refused"):
        load_checkpoint(p)
    (p / "pytorch_model.bin").unlink()
    (p / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        load_checkpoint(p)
    q = save_checkpoint(tmp_path, 2, model())
    meta = json.loads((q / "config.json").read_text())
    meta["model"]["d_model"] = 32
    (q / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(q)
    (q / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="malformed JSON"):
        load_checkpoint(q)
    r = save_checkpoint(tmp_path, 3, model())
    torch.save({"x": torch.nn.Linear(2, 2)}, r / "train_state.pt")  # a pickled module
    with pytest.raises(CheckpointError, match="refused"):
        load_train_state(r)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="empty folder"):
        load_checkpoint(empty)
