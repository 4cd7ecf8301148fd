"""Untrusted and broken checkpoints: nothing is unpickled, every problem is one clear error."""

import pickle

import pytest
import torch

from reliability_util import break_checkpoint

import retrieval_heads as rh
from retrieval_heads.storage.checkpoint import CheckpointError, load_checkpoint, load_train_state


class Payload:
    """Unpickling this object would create a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = rh.HybridLM(rh.ModelConfig(layout="SF", d_model=16, n_heads=2, window=4, max_seq_len=64))
    return rh.save_checkpoint(tmp_path / "run", 3, model, tokens_seen=12)


def test_pickle_payload_as_train_state_never_runs(ckpt, tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"optimizer": Payload(marker)}, ckpt / "train_state.pt")
    with pytest.raises(CheckpointError, match="train_state.pt"):
        load_train_state(ckpt)
    assert not marker.exists()
    load_checkpoint(ckpt)  # the weights themselves are still fine
    assert not marker.exists()


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.ckpt", "model.pkl"])
def test_pickle_weight_files_are_refused(ckpt, tmp_path, name):
    marker = tmp_path / "PWNED"
    with open(ckpt / name, "wb") as f:
        pickle.dump(Payload(marker), f)
    with pytest.raises(CheckpointError, match="pickle-format weight file refused"):
        load_checkpoint(ckpt)
    assert not marker.exists()


@pytest.mark.parametrize("how,expect", [
    ("empty_folder", "empty folder"),
    ("no_config", "config.json: missing"),
    ("malformed_config", "malformed JSON"),
    ("unknown_model_key", "unknown key"),
    ("shape_mismatch", "shape"),
    ("truncated_weights", "unreadable safetensors"),
    ("no_weights", "model.safetensors: missing"),
    ("nan_weights", "NaN or Inf"),
    ("int_dtype", "dtype"),
])
def test_bad_checkpoint_gives_one_clear_error(ckpt, how, expect):
    break_checkpoint(ckpt, how)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ckpt)
    msg = str(e.value)
    assert expect in msg
    assert "\n" not in msg
    assert str(ckpt) in msg  # names the file or folder


def test_listing_ignores_temporary_folders(ckpt):
    run = ckpt.parent
    (run / ".tmp_step_000009_abc").mkdir()
    (run / ".tmp_step_000009_abc" / "config.json").write_text("{}")
    assert [p.name for p in rh.list_checkpoints(run)] == ["step_000003"]


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    model = rh.HybridLM(rh.ModelConfig(layout="SF", d_model=16, n_heads=2, window=4, max_seq_len=64))
    import retrieval_heads.storage.checkpoint as ck

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_model", boom)
    with pytest.raises(OSError):
        ck.save_checkpoint(tmp_path / "run", 1, model)
    assert list((tmp_path / "run").iterdir()) == []
