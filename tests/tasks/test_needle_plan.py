"""Needle generation is pinned: the byte-tokenizer prompts (tokens, answer spans, needle
positions), the training mixture's needle rows, the clean/corrupted pairs and the HF prompts
are exactly what they were when the scan tables of existing runs were made.

Each case is fingerprinted (a hash of everything a sample holds) and its answer spans are
written out; ``python tests/tasks/test_needle_plan.py`` prints the current values. A change here
means existing scan tables no longer match freshly generated prompts: only on purpose.
"""

from __future__ import annotations

import hashlib
import sys

import pytest

from retrieval_heads.config import TrainConfig
from retrieval_heads.tasks import VARIANTS, make_sample, min_context_len, niah_batch, niah_grid
from retrieval_heads.tasks.mixture import answer_reserve, training_batch

# a user haystack with non-ASCII text: characters and byte tokens differ
USER_TEXT = "Die Größe zählt nicht. Café au lait, s'il vous plaît! Ñandú corre rápido? Sí. " * 12


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def _sample_parts(s):
    return (s.tokens, s.answer_tokens, s.answer_spans, s.values, s.keys, s.depth, s.needle_pos,
            s.context_len, s.query_pos, s.variant, s.haystack)


def _batch(b):
    return _digest(b.tokens.tolist(), [_sample_parts(s) for s in b.samples]), b.answer_spans


# --------------------------------------------------------------------- byte tokenizer cases
def byte_cases(user_file: str):
    """name -> (digest, answer spans) of each pinned byte-tokenizer case."""
    out = {}
    for v in VARIANTS:
        out[f"{v}/min+23"] = _batch(niah_batch(n=3, context_len=min_context_len(v) + 23, seed=0, variant=v))
        out[f"{v}/600"] = _batch(niah_batch(n=3, context_len=600, seed=7, variant=v, depths=[0.0, 0.37, 1.0]))
    for v, seed in (("multikey_1", 0), ("multivalue", 1), ("multiquery", 2), ("single_1", 0)):
        # the exact minimum of this sample: no haystack text at all
        with pytest.raises(ValueError, match="use context_len >= ") as e:
            make_sample(context_len=40, depth=0.5, seed=seed, variant=v)
        lo = int(str(e.value).split("use context_len >= ")[1].split()[0])
        s = make_sample(context_len=lo, depth=0.3, seed=seed, variant=v)
        out[f"{v}/exact{lo}"] = _digest(_sample_parts(s)), s.answer_spans
    for v, L, hay in (("single_2", 300, "noise"), ("multikey_1", 400, "noise"), ("multikey_3", 300, "noise"),
                      ("multiquery", 500, "user"), ("single_1", 256, "user")):
        b = niah_batch(n=2, context_len=L, seed=3, variant=v, haystack=user_file if hay == "user" else hay)
        for s in b.samples:  # the user file's path is not part of the fingerprint
            s.haystack = "user" if hay == "user" else s.haystack
        out[f"{v}/{L}/{hay}"] = _batch(b)
    grid = niah_grid(context_lens=[450, 517], depths=[0.0, 0.5, 1.0], n_per_cell=2, seed=4, variant="multiquery")
    out["grid/multiquery"] = _digest([_batch(g) for g in grid]), [g.answer_spans[0] for g in grid]
    return out


def mixture_cases():
    out = {}
    for v in ("single_1", "single_3", "single_word", "multivalue", "multiquery", "multikey_3"):
        c = TrainConfig(batch_size=6, context_len=700, niah_fraction=0.5, induction_fraction=0.0,
                        niah_variant=v, haystack="noise", seed=11)
        b = training_batch(c, 3)
        out[v] = _digest(b.tokens.tolist(), b.targets.tolist(), b.weights.tolist(), b.is_needle.tolist())
    return out


def pair_cases():
    from retrieval_heads.interventions import needle_pairs

    out = {}
    for v in ("single_1", "single_2", "single_3", "single_word", "multikey_1", "multikey_2", "multikey_3"):
        for seed in (0, 5):
            p = needle_pairs(n=3, context_len=400, seed=seed, variant=v)
            out[f"{v}/{seed}"] = (_digest(p.clean.tolist(), p.corrupt.tolist(), p.clean_token.tolist(),
                                          p.corrupt_token.tolist(), [_sample_parts(s) for s in p.samples]),
                                  p.answer_spans)
    return out


# --------------------------------------------------------------------- HF tokenizer cases
def hf_cases(toks):
    from retrieval_heads.hf import hf_needle_batch, hf_needle_pairs

    out = {}
    for kind, tok in toks.items():
        for v in VARIANTS:
            b = hf_needle_batch(tok, n=3, context_len=300, seed=1, variant=v)
            out[f"{kind}/{v}"] = (_digest(b.tokens.tolist(), [_sample_parts(s) for s in b.samples], b.texts,
                                          b.char_spans, b.errors, b.n_requested), b.answer_spans)
        for v in ("single_1", "single_3", "single_word", "multikey_3"):
            p = hf_needle_pairs(tok, n=3, context_len=160, seed=2, variant=v)
            out[f"{kind}/pairs/{v}"] = (_digest(p.clean.tolist(), p.corrupt.tolist(), p.clean_token.tolist(),
                                                p.corrupt_token.tolist(), p.errors,
                                                [_sample_parts(s) for s in p.samples]), p.answer_spans)
    return out


def tables():
    return {"min_context_len": {v: min_context_len(v) for v in VARIANTS},
            "answer_reserve": {v: answer_reserve(v) for v in VARIANTS}}


# --------------------------------------------------------------------- the pinned values
# made by `python tests/tasks/test_needle_plan.py` with the generators of commit 5fe2d60
PINNED_TABLES = {'answer_reserve': {'multikey_1': 8,
                    'multikey_2': 8,
                    'multikey_3': 37,
                    'multiquery': 35,
                    'multivalue': 35,
                    'single_1': 8,
                    'single_2': 8,
                    'single_3': 37,
                    'single_word': 11},
 'min_context_len': {'multikey_1': 350,
                     'multikey_2': 131,
                     'multikey_3': 184,
                     'multiquery': 428,
                     'multivalue': 352,
                     'single_1': 131,
                     'single_2': 131,
                     'single_3': 156,
                     'single_word': 130}}
PINNED_BYTE = {'grid/multiquery': ('24ff6e62649b198c',
                     [[(53, 60), (187, 194), (311, 318), (251, 258)],
                      [(52, 59), (269, 276), (116, 123), (332, 339)]]),
 'multikey_1/400/noise': ('e8f91337a6b4df54', [[(148, 155)], [(256, 263)]]),
 'multikey_1/600': ('da68e0ee71e0bb2c', [[(55, 62)], [(116, 123)], [(425, 432)]]),
 'multikey_1/exact295': ('75ccadab918c026e', [(113, 120)]),
 'multikey_1/min+23': ('31cadc25dc5119a9', [[(53, 60)], [(177, 184)], [(181, 188)]]),
 'multikey_2/600': ('11aa6d8f365247a4', [[(56, 63)], [(246, 253)], [(499, 506)]]),
 'multikey_2/min+23': ('755d1509c5ffc9cb', [[(51, 58)], [(55, 62)], [(55, 62)]]),
 'multikey_3/300/noise': ('8e9d45ee7a708414', [[(77, 113)], [(191, 227)]]),
 'multikey_3/600': ('6b014359262531f7', [[(77, 113)], [(191, 227)], [(419, 455)]]),
 'multikey_3/min+23': ('99f14de119e2762e', [[(77, 113)], [(77, 113)], [(77, 113)]]),
 'multiquery/500/user': ('811a11bc511229f3',
                         [[(81, 88), (298, 305), (181, 188), (361, 368)],
                          [(343, 350), (278, 285), (109, 116), (212, 219)]]),
 'multiquery/600': ('a753375f5526a31e',
                    [[(59, 66), (299, 306), (451, 458), (122, 129)],
                     [(108, 115), (400, 407), (340, 347), (277, 284)],
                     [(482, 489), (132, 139), (355, 362), (417, 424)]]),
 'multiquery/exact336': ('962d4025860f2085', [(52, 59), (114, 121), (238, 245), (176, 183)]),
 'multiquery/min+23': ('409ff0cf10bd3850',
                       [[(123, 130), (234, 241), (56, 63), (296, 303)],
                        [(187, 194), (121, 128), (56, 63), (251, 258)],
                        [(238, 245), (116, 123), (54, 61), (178, 185)]]),
 'multivalue/600': ('e3cc22bff1573113',
                    [[(53, 60), (473, 480), (412, 419), (218, 225)],
                     [(316, 323), (55, 62), (470, 477), (379, 386)],
                     [(407, 414), (342, 349), (140, 147), (277, 284)]]),
 'multivalue/exact317': ('4be9724cedac8f8e', [(58, 65), (190, 197), (124, 131), (256, 263)]),
 'multivalue/min+23': ('1c734cff4c321e0d',
                       [[(55, 62), (239, 246), (302, 309), (118, 125)],
                        [(190, 197), (124, 131), (256, 263), (58, 65)],
                        [(181, 188), (55, 62), (118, 125), (244, 251)]]),
 'single_1/256/user': ('0949508047c229f8', [[(86, 93)], [(173, 180)]]),
 'single_1/600': ('0e1975cfae43fa55', [[(55, 62)], [(236, 243)], [(522, 529)]]),
 'single_1/exact111': ('add8c2575318df6f', [(55, 62)]),
 'single_1/min+23': ('c62a50a0e1dcfaac', [[(55, 62)], [(70, 77)], [(94, 101)]]),
 'single_2/300/noise': ('c9735a9344055458', [[(112, 119)], [(195, 202)]]),
 'single_2/600': ('4e9e7479ab2d7eec', [[(55, 62)], [(271, 278)], [(519, 526)]]),
 'single_2/min+23': ('d329a6234b1467ea', [[(58, 65)], [(57, 64)], [(61, 68)]]),
 'single_3/600': ('7be71d421f67c801', [[(52, 88)], [(211, 247)], [(438, 474)]]),
 'single_3/min+23': ('e8d7cd189cc30cba', [[(54, 90)], [(94, 130)], [(51, 87)]]),
 'single_word/600': ('b33c8cab96c9b723', [[(53, 58)], [(239, 245)], [(488, 494)]]),
 'single_word/min+23': ('ce7b51f9a44d47a0', [[(53, 58)], [(57, 63)], [(52, 58)]])}
PINNED_MIXTURE = {'multikey_3': 'a67492f5d30d65d5',
 'multiquery': '1551f311c17a13ba',
 'multivalue': 'ea6ac41cd40e1be5',
 'single_1': '731f4f1f6c8674f6',
 'single_3': '59b3e5b8ddc1fc74',
 'single_word': 'c35c8d5720f454ce'}
PINNED_PAIRS = {'multikey_1/0': ('ebee002b6ea0870c', [(53, 60), (177, 184), (181, 188)]),
 'multikey_1/5': ('76c6c3f48bb0c65e', [(62, 69), (55, 62), (291, 298)]),
 'multikey_2/0': ('05b7dfc9d80c099b', [(116, 123), (184, 191), (313, 320)]),
 'multikey_2/5': ('0612651ad7dae40c', [(116, 123), (178, 185), (303, 310)]),
 'multikey_3/0': ('d8b8b251a47910a9', [(77, 113), (191, 227), (191, 227)]),
 'multikey_3/5': ('fd53c985a18012f3', [(77, 113), (191, 227), (191, 227)]),
 'single_1/0': ('2fa673e185807f12', [(103, 110), (191, 198), (293, 300)]),
 'single_1/5': ('8fdae2a910425934', [(105, 112), (195, 202), (306, 313)]),
 'single_2/0': ('ef43d0e922445c64', [(58, 65), (193, 200), (332, 339)]),
 'single_2/5': ('3dabbbf7eb15d237', [(122, 129), (213, 220), (277, 284)]),
 'single_3/0': ('8cc5cda83d4113d5', [(54, 90), (191, 227), (242, 278)]),
 'single_3/5': ('4f6ef9f60e70eff9', [(52, 88), (123, 159), (271, 307)]),
 'single_word/0': ('df8213e03c56a7df', [(137, 142), (217, 223), (282, 288)]),
 'single_word/5': ('52b3b3e87600ce6e', [(51, 58), (148, 152), (312, 316)])}
PINNED_HF = {'bytelevel/multikey_1': ('c7b9fb2568572ef3', [[(40, 47)], [(116, 123)], [(198, 204)]]),
 'bytelevel/multikey_2': ('02291d4751d76399', [[(75, 82)], [(150, 157)], [(229, 236)]]),
 'bytelevel/multikey_3': ('1d42b4ae5bc75d6f', [[(48, 82)], [(138, 171)], [(137, 172)]]),
 'bytelevel/multiquery': ('ed33fec07c748198',
                          [[(18, 24), (143, 150), (230, 236), (117, 124)],
                           [(137, 144), (164, 171), (114, 119), (22, 29)],
                           [(175, 181), (55, 61), (200, 207), (77, 83)]]),
 'bytelevel/multivalue': ('c75a9d95e4964e27',
                          [[(52, 59), (22, 29), (209, 215), (238, 245)],
                           [(193, 199), (18, 23), (167, 174), (42, 49)],
                           [(254, 261), (43, 50), (229, 235), (18, 24)]]),
 'bytelevel/pairs/multikey_3': ('3573a6e240955dcd', [(50, 84), (48, 82), (50, 83)]),
 'bytelevel/pairs/single_1': ('20de05dd3e8ce874', [(33, 39), (75, 81), (118, 124)]),
 'bytelevel/pairs/single_3': ('b98f15f75bceea96', [(21, 55), (23, 57), (61, 96)]),
 'bytelevel/pairs/single_word': ('4f06f592c3d4b355', [(50, 55), (98, 101), (127, 131)]),
 'bytelevel/single_1': ('d6a96afe7ebac973', [[(62, 68)], [(150, 156)], [(230, 237)]]),
 'bytelevel/single_2': ('a8549c67baeac19a', [[(58, 65)], [(148, 155)], [(227, 234)]]),
 'bytelevel/single_3': ('7b4ebcb7348c1437', [[(23, 56)], [(107, 143)], [(213, 248)]]),
 'bytelevel/single_word': ('568d4e8ecc7a213c', [[(54, 58)], [(162, 167)], [(241, 245)]]),
 'metaspace/multikey_1': ('895a3237d9b1ac21', [[(37, 44)], [(101, 106)], [(233, 240)]]),
 'metaspace/multikey_2': ('33ec58e401ce99a2', [[(64, 71)], [(150, 156)], [(232, 239)]]),
 'metaspace/multikey_3': ('940f4d7cd69fa7e5', [[(46, 81)], [(129, 162)], [(209, 241)]]),
 'metaspace/multiquery': ('5e66dd60e865d905', [[(124, 130), (145, 152), (102, 109), (18, 25)]]),
 'metaspace/multivalue': ('94719ccd93c849e9',
                          [[(47, 52), (20, 27), (190, 196), (253, 259)],
                           [(160, 167), (14, 20), (141, 146), (34, 40)]]),
 'metaspace/pairs/multikey_3': ('d0bd85057e345489', [(48, 83), (48, 81), (47, 79)]),
 'metaspace/pairs/single_1': ('94b3ed8511ae55c2', [(35, 41), (74, 79), (123, 130)]),
 'metaspace/pairs/single_3': ('6cd44a91657f68ea', [(18, 50), (106, 138), (55, 90)]),
 'metaspace/pairs/single_word': ('24d234528fe1f5e4', [(46, 49), (91, 94), (112, 114)]),
 'metaspace/single_1': ('91a980f9e686fee0', [[(58, 63)], [(148, 153)], [(231, 236)]]),
 'metaspace/single_2': ('0b534ff641ff10eb', [[(53, 60)], [(131, 138)], [(196, 203)]]),
 'metaspace/single_3': ('f19cb45cf438d96c', [[(21, 52)], [(91, 123)], [(187, 222)]]),
 'metaspace/single_word': ('17a13132ee4c9a3e', [[(44, 47)], [(158, 162)], [(218, 222)]])}


def _check(got, pinned):
    assert got.keys() == pinned.keys()
    bad = [k for k in got if got[k] != pinned[k]]
    assert not bad, f"changed: {bad}"


@pytest.fixture
def user_file(tmp_path):
    f = tmp_path / "user.txt"
    f.write_text(USER_TEXT, encoding="utf-8")
    return str(f)


def test_tables_pinned():
    assert tables() == PINNED_TABLES


def test_byte_prompts_pinned(user_file):
    _check(byte_cases(user_file), PINNED_BYTE)


def test_mixture_rows_pinned():
    assert mixture_cases() == PINNED_MIXTURE


def test_byte_pairs_pinned():
    _check(pair_cases(), PINNED_PAIRS)


def test_hf_prompts_and_pairs_pinned():
    from retrieval_heads.hf.testing import tiny_tokenizer

    _check(hf_cases({"bytelevel": tiny_tokenizer(), "metaspace": tiny_tokenizer("metaspace")}), PINNED_HF)



# --------------------------------------------------------------------- the plan itself
def test_variants_have_named_fields():
    from retrieval_heads.tasks.plan import Variant, get_variant

    assert all(isinstance(v, Variant) for v in VARIANTS.values())
    mk = VARIANTS["multikey_1"]
    assert (mk.haystack, mk.key_kind, mk.value_kind, mk.n_distractors, mk.n_values, mk.n_queries) == \
        ("essay", "words", "numbers", 3, 1, 1)
    assert VARIANTS["multivalue"].n_answers == 4 and VARIANTS["multiquery"].n_needles == 4
    assert mk.n_needles == 4 and mk.n_answers == 1
    with pytest.raises(ValueError, match="variant: unknown 'nope'; valid: single_1"):
        get_variant("nope")
    with pytest.raises(ValueError, match="value_kind"):
        Variant("essay", "words", "dates")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_value_len_bounds_every_drawn_value(variant):
    """mixture.answer_reserve reads the Variant's value length: no drawn value is longer."""
    from retrieval_heads.tasks.plan import needle_plan

    v = VARIANTS[variant]
    lens = {len(x) for seed in range(200) for x in needle_plan(variant, seed=seed, depth=0.5).values}
    assert max(lens) <= v.value_len
    if v.value_kind != "words":
        assert lens == {v.value_len}
    n = v.n_answers
    assert answer_reserve(variant) == n * v.value_len + 2 * (n - 1) + 1


def test_plan_is_pure_and_streams_are_apart():
    from retrieval_heads.tasks.plan import needle_plan

    a = needle_plan("multikey_1", seed=3, depth=0.25)
    assert a == needle_plan("multikey_1", seed=3, depth=0.25)
    assert list(zip(range(5), a.filler())) == list(zip(range(5), a.filler()))  # filler() restarts
    assert a.depths[0] == 0.25 and sorted(a.order, key=lambda j: (a.depths[j], j)) == list(a.order)
    assert [n.gold for n in a.needles] == [True, False, False, False] and a.values == [a.needles[0].value]
    assert all(n.text[n.value_offset:].startswith(n.value + ". ") for n in a.needles)
    h = needle_plan("multikey_1", seed=3, depth=0.25, stream="hf")
    assert h.keys != a.keys  # the HF prompts draw from their own stream
    with pytest.raises(ValueError, match="depth"):
        needle_plan("single_1", seed=0, depth=1.5)
    with pytest.raises(ValueError, match="stream"):
        needle_plan("single_1", seed=0, depth=0.5, stream="gpt")


def test_both_encoders_render_the_same_kind_of_plan():
    """One plan, two encoders: the byte prompt is the plan's text, byte for byte; the HF prompt
    is the HF-stream plan's text with the query's trailing space stripped."""
    from retrieval_heads.hf import hf_needle_batch
    from retrieval_heads.hf.testing import tiny_tokenizer
    from retrieval_heads.tasks import TOKENIZER
    from retrieval_heads.tasks.plan import needle_plan

    for variant in ("single_2", "multikey_1", "multiquery", "multikey_3"):
        L = min_context_len(variant) + 40
        s = make_sample(context_len=L, depth=0.4, seed=5, variant=variant)
        p = needle_plan(variant, seed=5, depth=0.4)
        budget = L - 1 - sum(len(n.text) for n in p.needles) - len(p.query)
        sents, bounds = [], [0]
        for x in p.filler():  # ASCII haystacks: characters are byte tokens
            sents.append(x)
            bounds.append(bounds[-1] + len(x))
            if bounds[-1] >= budget:
                break
        filler = "".join(sents)[:budget]
        text, where = p.assemble(filler, p.points([b for b in bounds if b <= budget], budget),
                                 [n.text for n in p.needles], p.query)
        assert TOKENIZER.decode(s.tokens[1:]) == text and s.needle_pos == 1 + where[0]
        assert s.values == p.values and s.keys == list(p.keys)
    tok = tiny_tokenizer()
    b = hf_needle_batch(tok, n=2, context_len=300, seed=1, variant="multiquery")
    for i, s in enumerate(b.samples):
        p = needle_plan("multiquery", seed=1 * 100_003 + i, depth=b.depths[i], stream="hf")
        assert s.values == p.values and s.keys == list(p.keys)
        assert b.texts[i].endswith(p.query.rstrip()) and all(n.text in b.texts[i] for n in p.needles)


def test_pairs_live_in_tasks_and_are_reexported():
    import ast
    from pathlib import Path

    import retrieval_heads.hf.needles as hn
    import retrieval_heads.interventions as iv
    import retrieval_heads.interventions.patching as patching
    import retrieval_heads.tasks as tasks
    from retrieval_heads.tasks import pairs

    assert iv.NeedlePair is patching.NeedlePair is tasks.NeedlePair is pairs.NeedlePair is hn.NeedlePair
    assert iv.needle_pairs is patching.needle_pairs is pairs.needle_pairs
    tree = ast.parse(Path(hn.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any("interventions" in (m or "") for m in imported), imported
    assert pairs.needle_pairs(n=1, context_len=200).errors == []


def test_corruption_rules():
    import random

    from retrieval_heads.tasks.pairs import corrupt_value, redraw_value
    from retrieval_heads.tasks.vocab import NOUNS

    rng = random.Random(0)
    for v in ("1234567", "9000001", "3f2a9c1e-07b4-4d2e-8a6f-0123456789ab", "tiger", "Ab1-"):
        for _ in range(50):
            c = corrupt_value(v, rng)  # byte rule: same length, every alphanumeric changed
            assert len(c) == len(v) and all((a != b) == a.isalnum() for a, b in zip(v, c))
            assert all(b.isdigit() for a, b in zip(v, c) if a.isdigit()) and not c.startswith("0")
            assert all(b in "0123456789abcdef" for a, b in zip(v, c) if a in "abcdef")
    words = {redraw_value("tiger", rng) for _ in range(50)}  # HF rule: another noun
    assert "tiger" not in words and words <= set(NOUNS)
    nums = {redraw_value("1234567", rng) for _ in range(300)}
    assert all(len(x) == 7 and x.isdigit() for x in nums) and "1234567" not in nums

if __name__ == "__main__":  # print the current values, to pin them (only on purpose)
    import pprint
    import tempfile
    from pathlib import Path

    from retrieval_heads.hf.testing import tiny_tokenizer

    d = Path(tempfile.mkdtemp())
    (d / "user.txt").write_text(USER_TEXT, encoding="utf-8")
    for name, val in (("PINNED_TABLES", tables()), ("PINNED_BYTE", byte_cases(str(d / "user.txt"))),
                      ("PINNED_MIXTURE", mixture_cases()), ("PINNED_PAIRS", pair_cases()),
                      ("PINNED_HF", hf_cases({"bytelevel": tiny_tokenizer(),
                                               "metaspace": tiny_tokenizer("metaspace")}))):
        sys.stdout.write(f"{name} = {pprint.pformat(val, width=110, compact=True)}\n")
