"""Jump-forward on the compressed FSM: boundary re-tokenization keeps the text
exact and reuses the unchanged prefix; jump on vs off gives identical greedy
text with fewer forward passes."""

from __future__ import annotations

import pytest
import regex as regex_mod

from sgl.grammar import jump_forward_retokenize, make_grammar_backend
from sgl.grammar.simulate import (TargetTextLogits, random_logits, sample_match,
                                  simulate_decode)
from sgl.grammar.examples import CHARACTER_REGEX as CHARACTER
from sgl.grammar.examples import IPV4_REGEX as IPV4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def backend(tok):
    return make_grammar_backend("builtin", tok, len(tok))


UNICODE = r"(你好|世界|😀){4}"


def _decode_bytes(backend, ids):
    return backend.vocab.decode_bytes(ids)


TEXTS = ['{\n    "name": "Harry Potter', "192.168.0", "héllo wörld, ça va", "你好世界", "x😀😀😀",
         "    indented", "end with space ", ""]
JUMPS = ['",\n    "house": "', ".", "!!", "界😀", " done", "\n", "a"]


@pytest.mark.parametrize("text", TEXTS)
def test_retokenize_keeps_text_exact(backend, tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    for jump in JUMPS:
        keep, tail = jump_forward_retokenize(tok, ids, jump)
        assert tail, (text, jump)
        assert 0 <= keep <= len(ids) and keep >= len(ids) - 12
        new = ids[:keep] + tail
        assert _decode_bytes(backend, new) == text.encode() + jump.encode()
        assert tok.decode(new) == text + jump
        assert new[:keep] == ids[:keep]


def test_retokenize_merges_across_the_boundary(tok):
    ids = tok.encode('{"na', add_special_tokens=False)
    keep, tail = jump_forward_retokenize(tok, ids, 'me": ')
    assert ids[:keep] + tail == tok.encode('{"name": ', add_special_tokens=False)
    assert keep < len(ids)  # the last token was re-tokenized ("na" + "me" -> "name")


def test_retokenize_widens_window_to_a_character_boundary(backend, tok):
    ids = tok.encode("ab😀", add_special_tokens=False)  # the emoji spans two tokens
    assert len(backend.vocab.token_bytes[ids[-1]]) < 4
    keep, tail = jump_forward_retokenize(tok, ids, "!", window=1)
    assert tail and tok.decode(ids[:keep] + tail) == "ab😀!"
    assert backend.vocab.token_bytes[ids[keep - 1] if keep else ids[0]]


def test_retokenize_falls_back_when_output_ends_inside_a_character(tok):
    ids = tok.encode("ab😀", add_special_tokens=False)[:-1]  # cut inside the emoji
    assert jump_forward_retokenize(tok, ids, "x") == (len(ids), [])
    assert jump_forward_retokenize(tok, [5, 6], "") == (2, [])  # nothing to jump


def test_retokenize_never_crosses_special_tokens(tok):
    ids = tok.encode("hi", add_special_tokens=False) + [2] + tok.encode("yo", add_special_tokens=False)
    keep, tail = jump_forward_retokenize(tok, ids, "u")
    assert keep >= ids.index(2) + 1
    assert tok.decode(ids[:keep] + tail) == tok.decode(ids) + "u"


@pytest.mark.parametrize("regex,n_targets", [(CHARACTER, 3), (IPV4, 4), (UNICODE, 3)])
def test_jump_forward_same_greedy_text_fewer_steps(backend, tok, regex, n_targets):
    steps_off = steps_on = 0
    for seed in range(n_targets):
        target = sample_match(backend.compile(regex=regex), backend.vocab, seed=seed)
        results = []
        for jump in (False, True):
            g = backend.compile(regex=regex)
            res = simulate_decode(g, tok, backend.vocab, TargetTextLogits(backend.vocab, target, seed),
                                  max_tokens=500, temperature=0.0, jump_forward=jump)
            assert res.finished and res.text == target
            assert tok.decode(res.output_ids) == target
            results.append(res)
        off, on = results
        assert on.steps <= off.steps
        steps_off += off.steps
        steps_on += on.steps
    if regex is CHARACTER:
        assert steps_on <= 0.6 * steps_off, (steps_on, steps_off)  # >= 40% fewer forward passes
        assert on.jumps >= 10


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_random_decode_with_jump_forward_matches(backend, tok, temperature):
    for seed in range(3):
        g = backend.compile(regex=CHARACTER)
        res = simulate_decode(g, tok, backend.vocab, random_logits(backend.vocab_size, seed), max_tokens=300,
                              temperature=temperature, seed=seed, jump_forward=True)
        assert res.finished and res.jumps >= 8
        assert regex_mod.fullmatch(CHARACTER, res.text)
        assert tok.decode(res.output_ids) == res.text


def test_try_jump_forward_does_not_change_state(backend):
    g = backend.compile(regex=CHARACTER)
    s = g.try_jump_forward()
    assert s == '{\n    "name":'  # the forced '{\n    "name": "' minus its last token ' "'
    assert g.try_jump_forward() == s and not g.is_accepting()
    g.accept_string(s)
    assert g.try_jump_forward() is None  # one forced token left: the model writes it


def test_jump_without_holdback_takes_the_whole_forced_string(tok):
    be = make_grammar_backend("builtin", tok, len(tok), jump_holdback=False)
    g = be.compile(regex=CHARACTER)
    assert g.try_jump_forward() == '{\n    "name": "'
    g.accept_string('{\n    "name": "')
    assert g.try_jump_forward() is None  # the name is a free choice
