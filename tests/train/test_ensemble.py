"""train_ensemble: K members in one batched step equal the same members trained alone by train().

Tolerance: ``ensemble_forward`` is bit-identical to ``HybridLM.forward`` (same kernels, one
batched matmul per member slice), but the backward and the optimizer step are not bit-identical:
the embedding gradient is a scatter-add over a stacked table (``index`` backward instead of
``embedding_dense_backward``) and the clipping norms are reduced per row of a stacked tensor,
both in another float summation order. After 20 steps of a d_model-16 model (3 members:
windows 8/16 and an all-F reference, seeds 0/1/2) the largest weight difference measured was
1.2e-7 (float32 rounding, a unit in the last place of the weights); the tests allow
``ATOL = 1e-4``, room for AdamW's division by sqrt(v) to amplify such rounding over longer runs.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import retrieval_heads as rh
from retrieval_heads.train import train
from retrieval_heads.train.ensemble import EnsemblePlan, ensemble_forward, train_ensemble

ATOL = 1e-4
MC = rh.ModelConfig(layout="SF", d_model=16, n_heads=2, d_mlp=32, window=8, pos={"F": "nope", "S": "rope"},
                    max_seq_len=192)
TC = rh.TrainConfig(steps=20, batch_size=4, context_len=144, lr=5e-3, warmup_steps=3, niah_fraction=0.5,
                    induction_fraction=0.25, haystack="noise", eval_every=10, eval_samples=2, save_every=10,
                    save_log_spaced=False, device="cpu")
# different windows and seeds, and the all-F reference (S -> F: NoPE everywhere) beside RoPE S layers
MEMBERS = [(MC.replace(window=16), TC.replace(seed=1)), (MC, TC), (MC.replace(layout="FF"), TC.replace(seed=2))]


def weights(run, step):
    return load_file(str(run / f"step_{step:06d}" / "model.safetensors"))


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    res = train_ensemble([(mc, tc, root / f"e{i}") for i, (mc, tc) in enumerate(MEMBERS)], log=lambda *a: None)
    for i, (mc, tc) in enumerate(MEMBERS):
        train(mc, tc, root / f"s{i}", progress=False, log=lambda *a: None)
    return root, res


def test_forward_is_hybridlm_forward():
    cfgs = [MC, MC.replace(window=4), MC.replace(layout="FF"), MC.replace(window=100)]
    models = []
    for i, c in enumerate(cfgs):
        torch.manual_seed(i)
        models.append(rh.HybridLM(c))
    params = {n: torch.stack([dict(m.named_parameters())[n] for m in models]) for n, _ in models[0].named_parameters()}
    tokens = torch.randint(0, 260, (len(cfgs), 2, 40))
    with torch.no_grad():
        out = ensemble_forward(EnsemblePlan.of(cfgs), params, tokens)
        for k, m in enumerate(models):
            assert torch.allclose(out[k], m(tokens[k]), atol=1e-6, rtol=0)


def test_members_equal_train(runs):
    root, res = runs
    worst = 0.0
    for i in range(len(MEMBERS)):
        e, s = root / f"e{i}", root / f"s{i}"
        assert [p.name for p in rh.list_checkpoints(e)] == [p.name for p in rh.list_checkpoints(s)] == [
            "step_000000", "step_000010", "step_000020"]
        assert max_diff(weights(e, 0), weights(s, 0)) == 0.0  # the same initialisation, bit for bit
        for step in (10, 20):  # a checkpoint in the middle and the final weights
            d = max_diff(weights(e, step), weights(s, step))
            assert d < ATOL, (i, step, d)
            worst = max(worst, d)
        assert json.loads((e / "run.json").read_text()) == json.loads((s / "run.json").read_text())
        er, sr = rh.train.read_metrics(e), rh.train.read_metrics(s)
        assert [r["step"] for r in er] == [r["step"] for r in sr] == [0, 10, 20]
        assert set(er[-1]) == set(sr[-1])
        assert er[-1]["train_loss"] == pytest.approx(sr[-1]["train_loss"], abs=1e-4)
        assert er[-1]["lm_loss"] == pytest.approx(sr[-1]["lm_loss"], abs=1e-3)
        assert res[i]["out"] == str(e) and res[i]["step"] == 20 and res[i]["tokens_seen"] == 20 * 4 * 144
        # train_state.pt in train()'s format: AdamW moments of this member, step, running sums
        es, ss = rh.train.load_train_state(e / "step_000020"), rh.train.load_train_state(s / "step_000020")
        assert set(es) == set(ss) and es["step"] == ss["step"] and es["tokens_seen"] == ss["tokens_seen"]
        assert torch.equal(es["rng"]["torch"], ss["rng"]["torch"])
        assert es["optimizer"]["param_groups"] == ss["optimizer"]["param_groups"]
        for idx, st in ss["optimizer"]["state"].items():
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.allclose(es["optimizer"]["state"][idx][key], st[key], atol=1e-5, rtol=1e-3)
    print(f"largest weight difference ensemble vs train(): {worst:.2e}")


def test_member_resumes_alone_and_scans(runs, tmp_path):
    root, _ = runs
    import shutil

    # stop the ensemble at step 10, continue one member alone with train(resume=True)
    members = [(mc, tc, tmp_path / f"e{i}") for i, (mc, tc) in enumerate(MEMBERS)]
    train_ensemble(members, stop_at=10, full_eval=False, log=lambda *a: None)
    rows = rh.train.read_metrics(tmp_path / "e1")
    assert "lm_loss" in rows[-1] and "niah_acc" not in rows[-1]
    mc, tc = MEMBERS[1]
    train(mc, tc, tmp_path / "e1", resume=True, progress=False, log=lambda *a: None)
    assert max_diff(weights(tmp_path / "e1", 20), weights(root / "s1", 20)) < ATOL
    # and the ensemble resumes its members together
    shutil.rmtree(tmp_path / "e1")
    shutil.copytree(root / "e1", tmp_path / "e1")  # a finished member has step 10 in common
    r = train_ensemble(members, resume=True, full_eval=False, log=lambda *a: None)
    assert [x["step"] for x in r] == [20, 20, 20]
    assert max_diff(weights(tmp_path / "e0", 20), weights(root / "s0", 20)) < ATOL
    scan = rh.scan(root / "e0", depths=(0.5,), n_per_cell=1, progress=False, report=False,
                   echo=lambda *a: None)
    assert len(scan) and (root / "e0" / "scan" / "formation.json").exists()


@pytest.mark.parametrize("change, field", [
    (lambda mc, tc: (mc.replace(d_model=32), tc), "d_model"),
    (lambda mc, tc: (mc, tc.replace(batch_size=8)), "batch_size"),
    (lambda mc, tc: (mc, tc.replace(lr=1e-3)), "lr"),
    (lambda mc, tc: (mc.replace(layout="SFF", n_layers=3), tc), "n_layers"),
    (lambda mc, tc: (mc.replace(layout="MF"), tc), "layout"),
])
def test_bad_members_are_one_line_value_errors(tmp_path, change, field):
    mc, tc = change(MC, TC)
    with pytest.raises(ValueError) as e:
        train_ensemble([(MC, TC, tmp_path / "a"), (mc, tc, tmp_path / "b")], log=lambda *a: None)
    msg = str(e.value)
    assert msg.startswith(f"{field}:") and "\n" not in msg
    assert not (tmp_path / "a").exists()  # nothing written
    with pytest.raises(ValueError, match="^out:"):
        train_ensemble([(MC, TC, tmp_path / "a"), (MC, TC.replace(seed=1), tmp_path / "a")])
