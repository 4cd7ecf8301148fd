"""`ModelConfig` validation, JSON round-trip, and a fuzz test that only ValueError escapes.

Every bad configuration raises ``ValueError`` whose message starts with the offending
field's name (``layout: ...``, ``window: ...``), so users and the CLI can point at it.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import retrieval_heads as rh
from retrieval_heads.config import (
    ATTENTION_KINDS,
    LAYER_KINDS,
    RECURRENT_KINDS,
    ModelConfig,
    TrainConfig,
    parse_layout,
    parse_pos,
    register_layer_kind,
    unregister_layer_kind,
)

KINDS = "".join(LAYER_KINDS)  # "FSMDL": every layout letter (a registered mixer's too)

BAD = [
    pytest.param(dict(layout="SSF", n_layers=4), "layout", id="layout-length-vs-n_layers"),
    pytest.param(dict(layout="SSXF"), "layout", id="unknown-letter"),
    pytest.param(dict(layout="ſSF"), "layout", id="non-ascii-letter-upper-cases-to-S"),
    pytest.param(dict(layout=""), "layout", id="empty-layout"),
    pytest.param(dict(layout=["S", "F"]), "layout", id="layout-not-a-string"),
    pytest.param(dict(window=0), "window", id="window-0"),
    pytest.param(dict(window=-3), "window", id="window-negative"),
    pytest.param(dict(window=2.5), "window", id="window-float"),
    pytest.param(dict(window=True), "window", id="window-bool"),
    pytest.param(dict(layout="SF", window=100, max_seq_len=64), "window", id="window>max_seq_len"),
    pytest.param(dict(d_model=30, n_heads=4), "d_model", id="d_model-not-divisible"),
    pytest.param(dict(d_model=12, n_heads=4), "d_model", id="odd-d_head-with-rope"),
    pytest.param(dict(n_heads=4, n_kv_heads=3), "n_kv_heads", id="n_kv_heads-not-dividing"),
    pytest.param(dict(n_heads=0), "n_heads", id="n_heads-0"),
    pytest.param(dict(pos={"M": "nope"}), "pos", id="pos-on-recurrent-kind"),
    pytest.param(dict(pos={"F": "alibi"}), "pos", id="pos-unknown-encoding"),
    pytest.param(dict(pos="F:nope"), "pos", id="pos-bad-string"),
    pytest.param(dict(pos="F=nope,F=rope"), "pos", id="pos-kind-twice"),
    pytest.param(dict(rope_base={"F": -1.0}), "rope_base", id="rope_base-negative"),
    pytest.param(dict(rope_base=float("nan")), "rope_base", id="rope_base-nan"),
    pytest.param(dict(rope_base={"X": 10.0}), "rope_base", id="rope_base-unknown-kind"),
    pytest.param(dict(norm_eps=float("inf")), "norm_eps", id="norm_eps-inf"),
    pytest.param(dict(attn_backend="cuda"), "attn_backend", id="unknown-backend"),
    pytest.param(dict(recurrent_backend="triton"), "recurrent_backend", id="unknown-recurrent-backend"),
    pytest.param(dict(tie_embeddings="yes"), "tie_embeddings", id="tie_embeddings-not-bool"),
]


@pytest.mark.parametrize("kwargs,field", BAD)
def test_bad_config_raises_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        ModelConfig(**kwargs)


def test_unknown_json_key_is_rejected_with_its_name():
    d = ModelConfig(layout="SF").to_dict()
    d["windw"] = 8
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['windw'\]"):
        ModelConfig.from_dict(d)
    with pytest.raises(ValueError, match="windw"):
        ModelConfig.from_json(json.dumps(d))
    with pytest.raises(ValueError, match="unknown key"):  # mixed key types do not crash sorting
        ModelConfig.from_dict({1: 2, "x": 3})


@pytest.mark.parametrize("bad", ["{not json", "[1, 2]", "null", b"\xff\xfe", 42])
def test_malformed_json_raises_value_error(bad):
    with pytest.raises(ValueError, match="ModelConfig"):
        ModelConfig.from_json(bad)


def test_layout_parsing_and_derived_fields():
    cfg = ModelConfig(layout="sssf SSSF", d_model=64, n_heads=4, window=16, pos="F=nope, s=rope",
                      rope_base=500)
    assert cfg.layout == "SSSFSSSF" and cfg.n_layers == 8
    assert cfg.pos == {"F": "nope", "S": "rope"}
    assert cfg.rope_base == {"F": 500.0, "S": 500.0}
    assert cfg.attention_layers == list(range(8))
    assert cfg.layer_window(0) == 16 and cfg.layer_window(3) is None
    assert cfg.d_head == 16 and cfg.n_kv_heads == 4 and cfg.d_mlp == 256


@pytest.mark.parametrize("cfg", [
    pytest.param(ModelConfig(), id="defaults"),
    pytest.param(ModelConfig(layout="SSMDLF", d_model=48, n_heads=6, n_kv_heads=2, window=7,
                             pos={"F": "nope"}, rope_base={"S": 123.5}, max_seq_len=999,
                             tie_embeddings=False, attn_backend="eager", chunk_size=5), id="custom"),
])
def test_json_round_trip(cfg, tmp_path):
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    p = tmp_path / "config.json"
    p.write_text(cfg.to_json())
    assert ModelConfig.from_json(p.read_text()) == cfg
    # a model built from the round-tripped config has the same parameter shapes
    small = cfg.replace(d_model=24, n_heads=2, n_kv_heads=1, vocab_size=32)
    a, b = rh.HybridLM(small), rh.HybridLM(ModelConfig.from_json(small.to_json()))
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]


def test_train_config_round_trip_and_errors():
    tc = TrainConfig(steps=10, lr=1e-3)
    assert TrainConfig.from_json(tc.to_json()) == tc
    with pytest.raises(ValueError, match="^lr"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="^weight_decay"):
        TrainConfig(weight_decay=float("nan"))
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig.from_dict({"stepz": 3})


# ----------------------------------------------------------------------------- fuzzing
FIELDS = [f for f in ModelConfig.__dataclass_fields__]
_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 300), st.integers(),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.binary(max_size=4),
)
_junk = st.recursive(_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=3), st.integers()), inner, max_size=3)),
    max_leaves=6)
_layout_text = st.text(alphabet=KINDS + KINDS.lower() + " XſßİŞ\t\u00a0", max_size=8)
_pos_text = st.text(alphabet=KINDS + "fs=,nopeNOPErRiſ \u212a", max_size=16)
_plausible = {
    "layout": _layout_text,
    "n_layers": st.one_of(st.none(), st.integers(-1, 9)),
    "d_model": st.one_of(st.sampled_from([8, 12, 16, 18, 24, 30, 32]), st.integers(-1, 64)),
    "n_heads": st.one_of(st.sampled_from([1, 2, 3, 4, 6]), st.integers(-1, 9)),
    "n_kv_heads": st.one_of(st.none(), st.sampled_from([1, 2]), st.integers(-1, 9)),
    "d_mlp": st.one_of(st.none(), st.integers(-1, 64)),
    "vocab_size": st.integers(-1, 300),
    "window": st.integers(-2, 80),
    "pos": st.one_of(_pos_text, st.dictionaries(st.sampled_from(["F", "S", "f", "M", "X", 1]),
                                                st.sampled_from(["rope", "nope", "NoPE", "alibi", 3, None]),
                                                max_size=3)),
    "rope_base": st.one_of(st.floats(), st.integers(-5, 10**6),
                           st.dictionaries(st.sampled_from(["F", "S", "s", "Q", 0]), st.floats(), max_size=2)),
    "max_seq_len": st.integers(-1, 128),
    "norm_eps": st.floats(),
    "tie_embeddings": st.one_of(st.booleans(), st.integers(0, 1)),
    "d_state": st.integers(-1, 16),
    "chunk_size": st.integers(-1, 16),
    "attn_backend": st.sampled_from(["auto", "eager", "sdpa", "blocked", "flex", "flash", "gpu", ""]),
    "recurrent_backend": st.sampled_from(["auto", "torch", "fla", "triton", ""]),
    "init_std": st.floats(),
}
assert set(_plausible) == set(FIELDS), "fuzz strategies out of date with ModelConfig fields"


@st.composite
def config_dicts(draw):
    names = draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=len(FIELDS)))
    d = {n: draw(st.one_of(_plausible[n], _plausible[n], _junk)) for n in names}
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # unknown keys, of mixed types
        d[draw(st.one_of(st.text(max_size=4), st.integers()))] = draw(_junk)
    return d


def _check_valid(cfg: ModelConfig):
    assert len(cfg.layout) == cfg.n_layers and set(cfg.layout) <= set(KINDS)
    assert cfg.d_model % cfg.n_heads == 0 and cfg.n_heads % cfg.n_kv_heads == 0
    assert set(cfg.pos) == {"F", "S"} and set(cfg.pos.values()) <= {"rope", "nope"}
    assert all(math.isfinite(b) and b > 0 for b in cfg.rope_base.values())
    assert ModelConfig.from_json(cfg.to_json()) == cfg


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)


def _value_error_or_result(fn, arg, prefix: str = ""):
    """``fn(arg)``, or None when it raised a ValueError whose message starts with ``prefix``
    (any other exception fails the test)."""
    try:
        return fn(arg)
    except ValueError as e:
        assert str(e) and str(e).startswith(prefix), str(e)
        return None


@FUZZ
@given(config_dicts())
def test_fuzz_from_dict_only_raises_value_error(d):
    cfg = _value_error_or_result(ModelConfig.from_dict, d)
    if cfg is not None:
        _check_valid(cfg)


@FUZZ
@given(st.one_of(_layout_text, _junk))
def test_fuzz_parse_layout_only_raises_value_error(layout):
    out = _value_error_or_result(parse_layout, layout, "layout")
    if out is None:
        return
    assert out and set(out) <= set(KINDS)
    # nothing but whitespace removal and ASCII upper-casing happened
    assert out == "".join(layout.split()).upper() and len(out) == len("".join(layout.split()))


@FUZZ
@given(st.one_of(_pos_text, _plausible["pos"], _junk))
def test_fuzz_parse_pos_only_raises_value_error(spec):
    out = _value_error_or_result(parse_pos, spec, "pos")
    if out is None:
        return
    assert isinstance(out, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in out.items())


@settings(max_examples=80, deadline=None, derandomize=True)
@given(st.fixed_dictionaries({
    "layout": st.text(alphabet=KINDS, min_size=1, max_size=4),
    "pos": st.dictionaries(st.sampled_from(["F", "S"]), st.sampled_from(["rope", "nope"])),
    "d_model": st.sampled_from([8, 12, 16, 18, 24, 30, 32]),
    "n_heads": st.sampled_from([1, 2, 3, 4, 6]),
    "n_kv_heads": st.sampled_from([None, 1, 2]),
    "window": st.integers(1, 80),
    "chunk_size": st.integers(1, 16),
    "d_state": st.integers(1, 8),
}))
def test_fuzz_every_accepted_config_builds_and_runs(d):
    """A config that validates must give a model that runs (e.g. no odd d_head with RoPE)."""
    try:
        cfg = ModelConfig.from_dict({**d, "vocab_size": 17, "max_seq_len": 80})
    except ValueError:
        return
    model = rh.HybridLM(cfg)
    toks = torch.randint(0, 17, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert model(toks).shape == (1, 6, 17)


# ----------------------------------------------------------------------------- layer kinds
def test_layer_kinds_parse_without_the_model_package():
    """config is the bottom layer: the built-in letters validate before torch is imported."""
    import subprocess
    import sys

    code = ("import sys; from retrieval_heads.config import ModelConfig, RECURRENT_KINDS; "
            "assert ModelConfig(layout='SFMDL').layout == 'SFMDL'; assert tuple(RECURRENT_KINDS) == ('M', 'D', 'L'); "
            "assert 'torch' not in sys.modules and 'retrieval_heads.model' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_register_layer_kind_is_live_and_checked():
    assert ATTENTION_KINDS == ("F", "S") and RECURRENT_KINDS == ("M", "D", "L")
    assert ("F", "S") + RECURRENT_KINDS == ("F", "S", "M", "D", "L") and "F" not in RECURRENT_KINDS
    register_layer_kind("M")  # a listed letter, no description: nothing changes
    register_layer_kind("M", LAYER_KINDS["M"])
    for bad in ("F", "m", "MM", "", 3):
        with pytest.raises(ValueError, match="layer kind"):
            register_layer_kind(bad, "x")
    with pytest.raises(ValueError, match="already"):
        register_layer_kind("D", "something else")
    with pytest.raises(ValueError, match="description"):
        register_layer_kind("Z")
    with pytest.raises(ValueError, match="built in"):
        unregister_layer_kind("L")
    register_layer_kind("Z", "a test kind")
    try:
        assert "Z" in RECURRENT_KINDS and RECURRENT_KINDS[-1] == "Z" and len(RECURRENT_KINDS) == 4
        assert ModelConfig(layout="SZF", d_model=32, n_heads=2).layout == "SZF"
    finally:
        unregister_layer_kind("Z")
    assert "Z" not in RECURRENT_KINDS and "Z" not in LAYER_KINDS
    with pytest.raises(ValueError, match="unknown letter"):
        ModelConfig(layout="SZF")


def test_absurd_sizes_and_step_counts_are_refused_with_a_short_message():
    """Issue 17, items 3-4: "d_model": 10**400 raised an overflow TypeError, and
    `train --steps 10**20` passed the checks and then hung building its schedule."""
    with pytest.raises(ValueError, match=r"^d_model: must be <= 2,147,483,647, got 100000000000\.\.\. \(401 digits\)$"):
        ModelConfig(layout="SF", d_model=10**400)
    with pytest.raises(ValueError, match=r"^steps: must be <= 2,147,483,647, got 100000000000000000000$"):
        TrainConfig(steps=10**20)
    assert TrainConfig(seed=2**40).seed == 2**40  # seeds may be large (checked against 2**63 separately)


def test_deeply_nested_json_is_one_error(tmp_path):
    from retrieval_heads.storage.checkpoint import CheckpointError, read_meta

    ck = tmp_path / "step_000000"
    ck.mkdir()
    (ck / "config.json").write_text("[" * 200000 + "]" * 200000)
    with pytest.raises(CheckpointError, match="config.json: JSON nested too deep"):
        read_meta(ck)
