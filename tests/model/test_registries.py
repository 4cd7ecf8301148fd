"""The mixer and metric registries, and CONTRIBUTING.md's recipes followed for real.

A toy mixer (letter X, a decayed running sum of the values) and a toy metric are registered
here exactly as the recipes say -- a class with its declarations under ``@register_mixer``,
one ``register_metric`` call -- and nothing else in the package is edited: the config, the
model, the hooks, the detector's rows and scores, the Q/K distance and the figures pick them
up. Both are unregistered afterwards (the fixtures check it), so the other tests never see
them.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import retrieval_heads as rh
from retrieval_heads import plots
from retrieval_heads.config import ATTENTION_KINDS, BUILTIN_KINDS, LAYER_KINDS, RECURRENT_KINDS
from retrieval_heads.detect import metrics, prefill_rows, qk_distance, score_heads
from retrieval_heads.detect.rows import RECURRENT_TYPES
from retrieval_heads.model import (
    FAMILIES,
    MIXERS,
    Attention,
    RecurrentMixer,
    register_mixer,
    token_mixer_class,
    unregister_mixer,
)
from retrieval_heads.model.mixers import EFFECTIVE_ATTENTION_HOOKS
from retrieval_heads.tasks import niah_batch

DECAYS = (0.5, 0.9)  # per head


# --- the recipe "add a mixer", followed in this file ---------------------------------------
class DecayedSumMixer(RecurrentMixer):
    """o_t = sum_{s<=t} a_h^(t-s) v_s: scalar-decay linear attention with q = k = 1, so its
    effective attention is W[t, s] = a_h^(t-s) and it has no Q/K weights."""

    letter = "X"
    description = "toy decayed running sum"
    family = "decay"
    qk_weights = None

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        H, D = cfg.n_heads, cfg.d_head
        self.H, self.Dh = H, D
        self.W_V = nn.Linear(cfg.d_model, H * D, bias=False)
        self.out_proj = nn.Linear(H * D, cfg.d_model, bias=False)
        self.register_buffer("log_decay", torch.log(torch.tensor(DECAYS[:H])), persistent=False)

    def forward(self, x, positions, cache=None):
        B, T, _ = x.shape
        H, D = self.H, self.Dh
        v = self.W_V(x).view(B, T, H, D)
        ones = x.new_ones(B, T, H, 1)  # q = k = 1
        log_a = self.log_decay.to(x.dtype).expand(B, T, H)
        o = self.run(ones, ones, v, log_a, None, cache)  # (B, T, H, D)
        return self.out_proj(o.reshape(B, T, H * D))


@pytest.fixture
def toy_mixer():
    cls = register_mixer(DecayedSumMixer)
    try:
        yield cls
    finally:
        unregister_mixer("X")
    assert "X" not in LAYER_KINDS and "X" not in MIXERS and "X" not in RECURRENT_KINDS


def _model(layout, **kw):
    torch.manual_seed(0)
    cfg = dict(d_model=32, n_heads=2, window=8, vocab_size=260, max_seq_len=512, chunk_size=8)
    cfg.update(kw)
    return rh.HybridLM(rh.ModelConfig(layout=layout, **cfg)).eval()


# --- the registry itself --------------------------------------------------------------------
def test_every_layout_letter_has_one_class():
    assert tuple(LAYER_KINDS) == BUILTIN_KINDS
    assert set(LAYER_KINDS) == set(ATTENTION_KINDS) | set(MIXERS)
    assert set(RECURRENT_KINDS) == set(MIXERS) and not set(ATTENTION_KINDS) & set(MIXERS)
    assert RECURRENT_TYPES is RECURRENT_KINDS
    for k in ATTENTION_KINDS:
        assert token_mixer_class(k) is Attention
    with pytest.raises(ValueError, match="no mixer class"):
        token_mixer_class("Q")


@pytest.mark.parametrize("letter", list(MIXERS))
def test_mixer_declarations_are_consistent(letter):
    cls = MIXERS[letter]
    assert cls.letter == letter and cls.family in FAMILIES
    assert cls.uses_beta is FAMILIES[cls.family].uses_beta
    assert set(EFFECTIVE_ATTENTION_HOOKS) <= set(cls.hooks)
    assert ("beta" in cls.hooks) == cls.uses_beta
    m = _model(letter)
    names = dict(m.blocks[0].mixer.named_parameters())
    for p in cls.qk_weights or ():
        assert p in names, f"{cls.__name__}.qk_weights names a missing parameter {p!r}"


def test_register_mixer_refuses_bad_declarations():
    def make(**attrs):
        return type("Bad", (RecurrentMixer,), {"description": "bad", **attrs})

    with pytest.raises(ValueError, match="letter"):
        register_mixer(make(letter="F"))  # an attention kind
    with pytest.raises(ValueError, match="letter"):
        register_mixer(make(letter="xy"))
    with pytest.raises(ValueError, match="already registered"):
        register_mixer(make(letter="D"))
    with pytest.raises(ValueError, match="family"):
        register_mixer(make(letter="Y", family="nope"))
    with pytest.raises(ValueError, match="uses_beta"):
        register_mixer(make(letter="Y", family="decay", uses_beta=True))
    with pytest.raises(ValueError, match="hooks"):
        register_mixer(make(letter="Y", hooks=("q", "v")))
    with pytest.raises(ValueError, match="qk_weights"):
        register_mixer(make(letter="Y", qk_weights="W_Q.weight"))
    with pytest.raises(ValueError, match="description"):
        register_mixer(type("NoDesc", (RecurrentMixer,), {"letter": "Y"}))
    with pytest.raises(ValueError, match="built in"):
        unregister_mixer("M")
    assert "Y" not in LAYER_KINDS and "Y" not in MIXERS


# --- the toy mixer, end to end --------------------------------------------------------------
def test_toy_mixer_is_a_layout_letter_only_while_registered(toy_mixer):
    cfg = rh.ModelConfig(layout="SXF", d_model=32, n_heads=2, window=8)
    assert cfg.layout == "SXF" and "X" in RECURRENT_KINDS and cfg.attention_layers == [0, 2]
    assert toy_mixer.uses_beta is False and toy_mixer.hooks == ("q", "k", "v", "decay", "out")
    assert token_mixer_class("X") is toy_mixer


def test_unregistered_letter_is_refused():
    with pytest.raises(ValueError, match="unknown letter"):
        rh.ModelConfig(layout="SXF")


@torch.no_grad()
def test_toy_mixer_runs_decodes_and_hooks(toy_mixer):
    m = _model("SXF")
    toks = torch.randint(0, 260, (2, 13), generator=torch.Generator().manual_seed(0))
    full = m(toks)
    cache = m.new_cache()
    steps = torch.cat([m(toks[:, i:i + 1], cache=cache) for i in range(13)], 1)
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-5)
    _, acts = m.run_with_cache(toks)
    fired = {n.split(".hook_")[1] for n in acts if n.startswith("blocks.1.mixer.")}
    assert fired == set(toy_mixer.hooks)
    assert "blocks.1.hook_mixer_out" in acts and not any(n.startswith("blocks.1.attn.") for n in acts)
    # the output is the decayed sum of the values
    v = acts["blocks.1.mixer.hook_v"]  # (B, T, H, D)
    a = torch.tensor(DECAYS)
    t = torch.arange(13)
    W = torch.where(t[:, None] >= t[None, :], a[:, None, None] ** (t[:, None] - t[None, :]).clamp(min=0), 0.0)
    ref = torch.einsum("hts,bshd->bthd", W, v)
    torch.testing.assert_close(acts["blocks.1.mixer.hook_out"], ref, rtol=1e-4, atol=1e-5)


def test_toy_mixer_rows_scores_and_qk_distance(toy_mixer):
    m = _model("SXF")
    batch = niah_batch(n=2, context_len=160, seed=0)
    T = batch.tokens.shape[1]
    # rows: the effective attention a^(t-s), normalised, without any change to the detector
    rows = prefill_rows(m, batch.tokens, [T - 1], recurrent=True)
    assert sorted(rows) == [0, 1, 2]
    s = torch.arange(T)
    for h, a in enumerate(DECAYS):
        w = torch.tensor(a, dtype=torch.float64) ** (T - 1 - s)
        torch.testing.assert_close(rows[1][0, h, 0].double(), w / w.sum(), rtol=1e-4, atol=1e-6)
    assert sorted(prefill_rows(m, batch.tokens, [T - 1])) == [0, 2]  # not scored by default
    # scores: NaN unless recurrent layers are asked for, then scored like any layer
    res = score_heads(m, batch, methods=("mass",))
    assert res.scored_layers == [0, 2] and torch.isnan(res.mass[1]).all()
    res = score_heads(m, batch, methods=("mass",), recurrent=True)
    assert res.scored_layers == [0, 1, 2]
    assert torch.isfinite(res.mass[1]).all() and torch.isfinite(res.entropy_norm[1]).all()
    assert set(res.to_frame()["layer_type"]) == {"S", "X", "F"}
    # Q/K distance: the toy declares no Q/K weights -> NaN even with recurrent=True
    other = _model("SXF")
    d = qk_distance(m, other, recurrent=True)
    assert torch.isnan(d["l2"][1]).all() and torch.isfinite(d["l2"][[0, 2]]).all()


@pytest.mark.parametrize("letter", list(MIXERS))
def test_qk_distance_follows_each_mixers_declaration(letter):
    a = _model(letter + "F")
    b = _model(letter + "F")
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.01)
    d = qk_distance(b, a, recurrent=True)
    assert bool(torch.isfinite(d["l2"][0]).all()) == (MIXERS[letter].qk_weights is not None)
    assert torch.isnan(qk_distance(b, a)["l2"][0]).all()  # recurrent layers only when asked
    assert (d["l2"][1] > 0).all()


# --- the recipe "add a score", followed in this file ----------------------------------------
@pytest.fixture
def toy_metric():
    m = metrics.register_metric(metrics.Metric(
        "peak", "largest attention probability of the query row", range=(0.0, 1.0),
        row=lambda rows, ctx: rows.max(-1).values))
    try:
        yield m
    finally:
        metrics.unregister_metric("peak")
    assert "peak" not in metrics.REGISTRY


def test_metric_table_of_the_builtins():
    assert metrics.attention_metrics() == ("copy", "mass", "entropy", "entropy_norm", "copy_tf")
    assert metrics.retrieval_metrics() == ("copy", "mass", "copy_tf")
    assert rh.detect.METHODS == ("copy", "mass")
    assert metrics.weight_metrics() == ("qk_distance", "qk_l2")
    assert metrics.heatmap_metrics() == ("copy", "mass", "entropy_norm", "qk_distance")
    assert plots.bounded() == {"copy": (0.0, 1.0), "mass": (0.0, 1.0), "entropy_norm": (0.0, 1.0),
                               "copy_tf": (0.0, 1.0)}
    with pytest.raises(ValueError, match="already registered"):
        metrics.register_metric(metrics.Metric("mass", "another mass", row=lambda r, c: r.sum(-1)))
    with pytest.raises(ValueError, match="row"):
        metrics.register_metric(metrics.Metric("norow", "no row function"))
    with pytest.raises(ValueError, match="built in"):
        metrics.unregister_metric("copy")


def test_toy_metric_is_scored_ranked_and_drawn(toy_metric):
    m = _model("SF")
    batch = niah_batch(n=2, context_len=160, seed=0)
    res = score_heads(m, batch, methods=("mass",))
    peak = res.scores("peak")
    assert peak.shape == (2, 2) and ((peak > 0) & (peak <= 1)).all()
    rows = prefill_rows(m, batch.tokens, [batch.tokens.shape[1] - 1])
    ref = torch.stack([rows[l][:, :, 0].max(-1).values.mean(0) for l in (0, 1)])
    torch.testing.assert_close(peak, ref, rtol=1e-5, atol=1e-6)
    assert "peak" in set(res.to_frame()["metric"])
    # a retrieval metric (higher = retrieval): a method of its own
    assert "peak" in metrics.retrieval_metrics()
    torch.testing.assert_close(rh.retrieval_scores(m, batch, method="peak"), peak)
    # figures: its fixed colour range and a heatmap in the report's list
    assert metrics.colour_range("peak") == (0.0, 1.0)
    table = res.to_frame().assign(step=1, tokens_seen=100)
    figs = plots.metric_heatmaps(table)
    assert [f.layout.title.text.split()[0].rstrip(":") for f in figs] == ["copy", "mass", "entropy_norm", "peak"]
    assert not figs[0].data  # no copy rows (mass-only scores): a "no data" figure, as before
    assert figs[-1].data[-1].zmax == 1.0 and not math.isnan(float(figs[-1].data[-1].z[0][0]))


def test_registered_metric_reaches_the_scan_tables_with_its_own_cache(tmp_path):
    """A scan scores a registered metric into its tables; the cache of a scan without it is not
    reused for it (its scores would be missing), and is used again once it is unregistered."""
    import shutil

    import pandas as pd

    run = shutil.copytree(Path(__file__).parents[1] / "fixtures" / "micro_run", tmp_path / "run")
    kw = dict(context_lens=(144,), depths=(0.5,), n_per_cell=1, progress=False, report=False)
    assert "peak" not in set(rh.scan(run, **kw)["metric"])
    metrics.register_metric(metrics.Metric("peak", "largest attention probability of the query row",
                                           range=(0.0, 1.0), row=lambda rows, ctx: rows.amax(-1)))
    try:
        df = rh.scan(run, **kw)
        assert df.attrs["scan"]["n_scored"] == 6 and df.attrs["scan"]["n_cached"] == 0
        peak = df[df.metric == "peak"]
        assert len(peak) == 6 * 2 * 2 and peak.value.between(0, 1).all()  # 6 checkpoints x F+S layers x 2 heads
        assert "peak" in set(pd.read_parquet(run / "scan" / "scores.parquet")["metric"])
    finally:
        metrics.unregister_metric("peak")
    again = rh.scan(run, **kw)
    assert again.attrs["scan"]["n_cached"] == 6 and "peak" not in set(again["metric"])
