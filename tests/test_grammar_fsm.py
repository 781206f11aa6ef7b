"""Regex -> lazy byte DFA: agreement with Python's ``re`` on full matches, UTF-8
lowering (partial characters, overlong / surrogate bytes), and input errors."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from sgl.grammar.fsm import ByteDFA
from sgl.grammar.jump_forward import forced_string

REGEXES = [
    r"((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)",
    r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}",
    r"(你好|世界|😀){4}",
    r"\$\d+\.\d{2} \(USD\)|\[[a-f]{2,4}\]\\",
    r'"([^"\\\x00-\x1F]|\\["\\/bfnrt])*"',
    r"(?i)yes|no",
    r"a.b",
    r"[^a-c]{1,3}x?",
    r"(ab|a)*b+?",
    r"^start[0-9]*end$",
    r"é+|ü{2}",
    r"[\u4e00-\u9fff]{1,2}",
]


def _random_strings(rng: random.Random, n: int):
    alphabet = "0123456789.abcxyzABC@_-$()[]\\\" \n你好世界😀éü一龥\t"
    for _ in range(n):
        yield "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))


def _random_match(dfa: ByteDFA, rng: random.Random, max_bytes: int = 200):
    state, out = dfa.initial, bytearray()
    while len(out) < max_bytes:
        allowed = np.flatnonzero(dfa.transitions[state] != dfa.dead) if dfa.degree(state) else []
        if dfa.accepting[state] and (not len(allowed) or rng.random() < 0.3):
            return out.decode("utf-8")
        b = int(rng.choice(list(allowed)))
        out.append(b)
        state = dfa.next_state(state, b)
    return None


def _accepts(dfa: ByteDFA, s: str) -> bool:
    st = dfa.walk(dfa.initial, s.encode("utf-8"))
    return st != dfa.dead and bool(dfa.accepting[st])


@pytest.mark.parametrize("regex", REGEXES)
def test_dfa_agrees_with_re_fullmatch(regex):
    dfa = ByteDFA(regex)
    rng = random.Random(0)
    matches = [m for m in (_random_match(dfa, rng) for _ in range(150)) if m is not None]
    assert len(matches) > 60
    for m in matches:  # every walk to an accepting state spells a full match
        assert re.fullmatch(regex, m), (regex, m)
    for s in list(_random_strings(rng, 400)) + matches:
        assert _accepts(dfa, s) == bool(re.fullmatch(regex, s)), (regex, s)


def test_live_states_only_every_prefix_extends_to_a_match():
    dfa = ByteDFA(r"ab(c|d)e|abx")
    dfa.expand_all()
    for s in range(1, dfa.n_states):  # no dead ends: some accepting state is reachable
        frontier, seen = [s], {s}
        while frontier and not any(dfa.accepting[f] for f in frontier):
            nxt = {int(t) for f in frontier for t in dfa.transitions[f] if t != dfa.dead} - seen
            seen |= nxt
            frontier = list(nxt)
        assert any(dfa.accepting[f] for f in frontier), s
    assert dfa.walk(dfa.initial, b"aby") == dfa.dead


def test_multibyte_characters_have_intermediate_states():
    dfa = ByteDFA("你好")
    b = "你".encode()
    s1 = dfa.walk(dfa.initial, b[:1])
    s2 = dfa.walk(dfa.initial, b[:2])
    s3 = dfa.walk(dfa.initial, b)
    assert s1 != dfa.dead and s2 != dfa.dead and s3 != dfa.dead
    assert not dfa.char_boundary[s1] and not dfa.char_boundary[s2] and dfa.char_boundary[s3]
    assert dfa.degree(s1) == 1 and dfa.degree(s2) == 1
    assert _accepts(dfa, "你好") and not _accepts(dfa, "你")


def test_dot_rejects_invalid_utf8():
    dfa = ByteDFA(r".")
    for bad in (b"\xc0\x80", b"\xc1\xbf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf5", b"\x80", b"\xe0\x80\x80"):
        st = dfa.walk(dfa.initial, bad)
        assert st == dfa.dead or not dfa.accepting[st], bad
    for good in ("\x7f", "\u0080", "\u07ff", "\u0800", "\ud7ff", "\ue000", "\uffff", "\U00010000", "\U0010ffff"):
        assert _accepts(dfa, good), repr(good)
    assert not _accepts(dfa, "\n")  # '.' excludes newline without DOTALL
    assert _accepts(ByteDFA(r"(?s)."), "\n")


def test_negated_class_costs_few_states():
    dfa = ByteDFA(r'"[^"]*"')
    assert dfa.expand_all() < 20  # shared continuation chains, not one state per code point


def test_lazy_construction_expands_on_demand():
    dfa = ByteDFA(r"(a|b)*c[0-9]{50}")
    built = dfa.n_states
    assert built <= 3
    dfa.walk(dfa.initial, b"abc012")
    assert dfa.n_states > built
    assert dfa.expand_all() >= 52


def test_forced_string_compressed_fsm():
    dfa = ByteDFA(r'\{"name": "(Harry|Hermione)", "age": [0-9]+\}')
    assert forced_string(dfa, dfa.initial) == '{"name": "H'  # both names start with H
    s = dfa.walk(dfa.initial, b'{"name": "H')
    assert forced_string(dfa, s) is None  # "a" vs "e": a real choice
    s = dfa.walk(dfa.initial, b'{"name": "Ha')
    assert forced_string(dfa, s) == 'rry", "age": '
    s = dfa.walk(dfa.initial, b'{"name": "Harry", "age": 3')
    assert forced_string(dfa, s) is None  # digit or '}'
    # stops at accepting states (EOS is an alternative) and cuts to whole characters
    assert forced_string(ByteDFA("ab(c)?"), ByteDFA("ab(c)?").initial) == "ab"
    d = ByteDFA("你(好|坏)")
    assert forced_string(d, d.initial) == "你"  # 好 and 坏 share their lead byte, not the char
    assert forced_string(d, d.walk(d.initial, "你".encode()[:1])) is None  # not at a char boundary


@pytest.mark.parametrize("regex,fragment", [
    ("", "empty"),
    ("(", "invalid regex"),
    ("a{2,1}", "invalid regex"),
    ("a(?=b)", "lookaround"),
    (r"(a)\1", "backreference"),
    (r"\bword", "AT_BOUNDARY"),
    ("a^b", "anchor"),
    (r"[^\x00-\U0010FFFF]", "unsatisfiable"),
    (r"[\ud800-\udfff]", "unsatisfiable"),
])
def test_bad_regex_raises_value_error(regex, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        ByteDFA(regex)


def test_non_string_regex_raises():
    with pytest.raises(ValueError, match="must be a str"):
        ByteDFA(123)  # type: ignore[arg-type]
