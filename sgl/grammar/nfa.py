"""Regex -> Thompson NFA over code-point ranges.

The regex is parsed by Python's own parser (``re._parser``, the module behind
``re.compile``), so the accepted syntax and the error messages are Python's.
The NFA (Thompson, 1968) has epsilon edges and edges labelled with sorted,
disjoint, inclusive code-point ranges; its language is the set of strings
the regex *fully* matches.

Semantics, as in Outlines / interegular: ``\\d``, ``\\w``, ``\\s`` are the
ASCII classes (so every generated string also matches under Python's Unicode
classes); lazy quantifiers match the same language as greedy ones; ``^`` /
``\\A`` at the start and ``$`` / ``\\Z`` at the end are no-ops.  Unsupported
(ValueError naming the feature): backreferences, lookarounds, word
boundaries, anchors elsewhere, atomic groups and possessive quantifiers.
Surrogate code points (U+D800-U+DFFF) are dropped: UTF-8 cannot encode them.
"""

from __future__ import annotations

import contextlib
import gc
import re
from collections import deque
from typing import List, Sequence, Tuple

from sgl.grammar.limits import MAX_REGEX_DEPTH, check_regex_depth

try:  # Python >= 3.11
    from re import _constants as C
    from re import _parser as sre_parse
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as C  # type: ignore
    import sre_parse  # type: ignore

Ranges = Tuple[Tuple[int, int], ...]
MAX_CODEPOINT = 0x10FFFF
MAX_NFA_STATES = 1_000_000

_DIGIT = ((48, 57),)
_WORD = ((48, 57), (65, 90), (95, 95), (97, 122))
_SPACE = ((9, 13), (32, 32))
_VALID = ((0, 0xD7FF), (0xE000, MAX_CODEPOINT))


def normalize(ranges) -> Ranges:
    """Sort, merge and drop surrogates from inclusive ``(lo, hi)`` ranges."""
    out: List[List[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return intersect(tuple((a, b) for a, b in out), _VALID)


def intersect(a: Ranges, b: Ranges) -> Ranges:
    """Intersection of two normalized range lists."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def complement(ranges: Ranges) -> Ranges:
    """All encodable code points not in ``ranges`` (normalized)."""
    out, nxt = [], 0
    for lo, hi in ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CODEPOINT:
        out.append((nxt, MAX_CODEPOINT))
    return normalize(out)


_CATEGORIES = {
    C.CATEGORY_DIGIT: _DIGIT, C.CATEGORY_NOT_DIGIT: complement(_DIGIT),
    C.CATEGORY_WORD: _WORD, C.CATEGORY_NOT_WORD: complement(_WORD),
    C.CATEGORY_SPACE: _SPACE, C.CATEGORY_NOT_SPACE: complement(_SPACE),
}


_FEATURE_NAMES = {
    "ASSERT": "lookaround assertion (?=...) / (?<=...)",
    "ASSERT_NOT": "negative lookaround assertion (?!...) / (?<!...)",
    "GROUPREF": "backreference (\\1, (?P=name))",
    "GROUPREF_EXISTS": "conditional group (?(id)yes|no)",
    "ATOMIC_GROUP": "atomic group (?>...)",
    "POSSESSIVE_REPEAT": "possessive quantifier (*+, ++, ?+)",
}


def _case_variants(ranges: Ranges) -> Ranges:
    """Add upper/lower-case variants (code points of small ranges; ASCII letters of large ones)."""
    extra = []
    for lo, hi in ranges:
        if hi - lo < 4096:
            cps = range(lo, hi + 1)
        else:
            cps = [c for a, b in intersect(((lo, hi),), ((65, 90), (97, 122))) for c in range(a, b + 1)]
        for c in cps:
            for v in {chr(c).lower(), chr(c).upper(), chr(c).swapcase()}:
                if len(v) == 1:
                    extra.append((ord(v), ord(v)))
    return normalize(list(ranges) + extra)


class NFA:
    """Thompson NFA.  ``eps[s]``: epsilon successors; ``edges[s]``: ``(ranges, target)`` pairs.

    Attributes:
        start, accept: the start and the (single) accepting state.
        live: bool list; ``live[s]`` iff ``accept`` is reachable from ``s``.
    """

    def __init__(self):
        self.eps: List[List[int]] = []
        self.edges: List[List[Tuple[Ranges, int]]] = []
        self.start = self.accept = -1
        self.live: List[bool] = []

    def new_state(self) -> int:
        if len(self.eps) >= MAX_NFA_STATES:
            raise ValueError(f"regex is too large (more than {MAX_NFA_STATES} NFA states)")
        self.eps.append([])
        self.edges.append([])
        return len(self.eps) - 1

    def closure(self, states) -> frozenset:
        """Epsilon closure of ``states``, restricted to live states."""
        seen = set(states)
        todo = list(seen)
        while todo:
            for t in self.eps[todo.pop()]:
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return frozenset(s for s in seen if self.live[s])

    def _compute_live(self) -> None:
        preds: List[List[int]] = [[] for _ in self.eps]
        for s in range(len(self.eps)):
            for t in self.eps[s]:
                preds[t].append(s)
            for _, t in self.edges[s]:
                preds[t].append(s)
        live = [False] * len(self.eps)
        live[self.accept] = True
        todo = deque([self.accept])
        while todo:
            for p in preds[todo.popleft()]:
                if not live[p]:
                    live[p] = True
                    todo.append(p)
        self.live = live


class _Builder:
    def __init__(self, regex: str):
        self.regex = regex
        self.nfa = NFA()

    def unsupported(self, what: str):
        return ValueError(f"unsupported regex feature in {self.regex!r}: {what}")

    def seq(self, items: Sequence, flags: int, at_start: bool, at_end: bool) -> Tuple[int, int]:
        s = e = self.nfa.new_state()
        for i, item in enumerate(items):
            a, b = self.node(item, flags, at_start and i == 0, at_end and i == len(items) - 1)
            self.nfa.eps[e].append(a)
            e = b
        return s, e

    def edge(self, ranges: Ranges) -> Tuple[int, int]:
        s, e = self.nfa.new_state(), self.nfa.new_state()
        if ranges:
            self.nfa.edges[s].append((ranges, e))
        return s, e

    def char_class(self, op, av, flags: int) -> Ranges:
        """Code-point ranges of a one-character item (LITERAL, NOT_LITERAL, ANY, IN)."""
        if op is C.ANY:
            return normalize([(0, MAX_CODEPOINT)]) if flags & re.DOTALL else complement(((10, 10),))
        negate, parts = op is C.NOT_LITERAL, []
        if op in (C.LITERAL, C.NOT_LITERAL):
            parts.append((av, av))
        else:  # IN
            for iop, iav in av:
                if iop is C.NEGATE:
                    negate = True
                elif iop is C.LITERAL:
                    parts.append((iav, iav))
                elif iop is C.RANGE:
                    parts.append(iav)
                elif iop is C.CATEGORY:
                    if iav not in _CATEGORIES:
                        raise self.unsupported(f"character category {iav}")
                    parts.extend(_CATEGORIES[iav])
                else:
                    raise self.unsupported(f"{iop} inside a character class")
        r = normalize(parts)
        if flags & re.IGNORECASE:
            r = _case_variants(r)
        return complement(r) if negate else r

    def node(self, item, flags: int, at_start: bool, at_end: bool) -> Tuple[int, int]:
        op, av = item
        if op in (C.LITERAL, C.NOT_LITERAL, C.ANY, C.IN):
            return self.edge(self.char_class(op, av, flags))
        if op is C.SUBPATTERN:
            _, add, remove, sub = av
            return self.seq(list(sub), (flags | add) & ~remove, at_start, at_end)
        if op is C.BRANCH:
            s, e = self.nfa.new_state(), self.nfa.new_state()
            for alt in av[1]:
                a, b = self.seq(list(alt), flags, at_start, at_end)
                self.nfa.eps[s].append(a)
                self.nfa.eps[b].append(e)
            return s, e
        if op in (C.MAX_REPEAT, C.MIN_REPEAT):
            return self.repeat(av, flags)
        if op is C.AT:
            if (av in (C.AT_BEGINNING, C.AT_BEGINNING_STRING) and at_start) or \
                    (av in (C.AT_END, C.AT_END_STRING) and at_end):
                return self.seq([], flags, False, False)
            raise self.unsupported(f"anchor {av} (only ^ at the start and $ at the end are allowed)")
        raise self.unsupported(_FEATURE_NAMES.get(str(op), str(op)))

    def repeat(self, av, flags: int) -> Tuple[int, int]:
        lo, hi, sub = av
        unbounded = hi is C.MAXREPEAT or hi == C.MAXREPEAT
        if lo > 100_000 or (not unbounded and hi > 100_000):
            raise ValueError(f"regex {self.regex!r}: repetition count above 100000")
        s = e = self.nfa.new_state()
        for _ in range(lo):
            a, b = self.seq(list(sub), flags, False, False)
            self.nfa.eps[e].append(a)
            e = b
        if unbounded:  # e -> (sub)* : loop through one more copy
            a, b = self.seq(list(sub), flags, False, False)
            self.nfa.eps[e].append(a)
            self.nfa.eps[b].append(e)
            return s, e
        end = self.nfa.new_state()
        self.nfa.eps[e].append(end)
        for _ in range(hi - lo):  # nested optionals: x(x(x)?)?
            a, b = self.seq(list(sub), flags, False, False)
            self.nfa.eps[e].append(a)
            self.nfa.eps[b].append(end)
            e = b
        return s, end


@contextlib.contextmanager
def gc_paused():
    """Pause the cyclic garbage collector: building an NFA allocates many small
    lists, and in a process holding a tokenizer and a model the collections
    they trigger cost more than the build itself (2-5x measured)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def build_nfa(regex: str) -> NFA:
    """Parse ``regex`` (Python syntax) into an :class:`NFA` of its full matches.

    Raises:
        ValueError: not a str, empty, invalid (Python's message), or using an
            unsupported feature (named in the message).
    """
    if not isinstance(regex, str):
        raise ValueError(f"regex must be a str, got {type(regex).__name__}")
    if regex == "":
        raise ValueError("regex is empty")
    check_regex_depth(regex)  # Python's parser and our builder recurse once per group level
    try:
        parsed = sre_parse.parse(regex)
    except RecursionError:
        raise ValueError(f"regex nesting depth exceeds {MAX_REGEX_DEPTH}") from None
    except (re.error, OverflowError) as e:
        raise ValueError(f"invalid regex {regex!r}: {e}") from None
    b = _Builder(regex)
    with gc_paused():
        try:
            s, e = b.seq(list(parsed), parsed.state.flags, True, True)
        except RecursionError:
            raise ValueError(f"regex nesting depth exceeds {MAX_REGEX_DEPTH}") from None
        b.nfa.start, b.nfa.accept = s, e
        b.nfa._compute_live()
    return b.nfa
