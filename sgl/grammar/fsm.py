"""Regex -> lazily determinized byte-level DFA.

The regex becomes a Thompson NFA over code-point ranges (:mod:`sgl.grammar.nfa`);
DFA states are sets of live NFA states (subset construction, Rabin & Scott
1959), created *on demand*, as RE2 does: compiling costs one epsilon closure,
and a state's byte row is built the first time something walks out of it.
Each character transition is lowered to UTF-8 bytes (:mod:`sgl.grammar.utf8`),
so a token that ends inside a multi-byte character lands in an intermediate
state; only states at character boundaries hold NFA sets.

State ids: 0 is the absorbing dead state (every missing transition goes
there); every other state is *live* (an accepting state is reachable from
it), because NFA states that cannot reach the accept state are dropped from
every set.  Rows of states not yet expanded read as all-dead: call
:meth:`ByteDFA.ensure` before reading ``transitions`` directly.
"""

from __future__ import annotations

import bisect
import threading
from typing import Dict, List, Optional

import numpy as np

from sgl.grammar.nfa import NFA, build_nfa
from sgl.grammar.utf8 import DEAD, CodepointRuns, Utf8Lowering


class ByteDFA:
    """Lazily built DFA over bytes for the full matches of a regex.

    Attributes:
        regex: the source regex.
        initial: the start state.
        dead: 0, the absorbing dead state.
        transitions: int32 ``[capacity, 256]``; valid for expanded states.
        accepting: bool ``[capacity]``.
        char_boundary: bool ``[capacity]``; True for states reached after whole characters.
        expanded: bool ``[capacity]``; True once the state's row is built.
        out_degree: int32 ``[capacity]``; allowed bytes per expanded state.
        lock: re-entrant lock guarding expansion (shared by everything built on this DFA).

    Raises:
        ValueError: from :func:`sgl.grammar.nfa.build_nfa`, or when no string matches.
    """

    dead = DEAD

    def __init__(self, regex: str):
        self.regex = regex
        self.nfa: NFA = build_nfa(regex)
        self.lock = threading.RLock()
        cap = 64
        self.transitions = np.zeros((cap, 256), dtype=np.int32)
        self.accepting = np.zeros(cap, dtype=bool)
        self.char_boundary = np.zeros(cap, dtype=bool)
        self.expanded = np.zeros(cap, dtype=bool)
        self.out_degree = np.zeros(cap, dtype=np.int32)
        self.n_states = 1  # state 0 = dead
        self.expanded[DEAD] = True
        self._sets: List[Optional[frozenset]] = [None]
        self._ids: Dict[frozenset, int] = {}
        self._lowering = Utf8Lowering(self._alloc_intermediate)
        self.initial = self._state_for(self.nfa.closure([self.nfa.start]))
        if self.initial == DEAD:
            raise ValueError(f"regex {regex!r} is unsatisfiable: no string fully matches it")

    # ------------------------------------------------------------ allocation
    def _grow(self) -> None:
        cap = 2 * self.transitions.shape[0]
        for name in ("transitions", "accepting", "char_boundary", "expanded", "out_degree"):
            old = getattr(self, name)
            new = np.zeros((cap,) + old.shape[1:], dtype=old.dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)

    def _alloc(self, nfa_set: Optional[frozenset]) -> int:
        if self.n_states == self.transitions.shape[0]:
            self._grow()
        s = self.n_states
        self.n_states += 1
        self._sets.append(nfa_set)
        return s

    def _alloc_intermediate(self, row: np.ndarray) -> int:
        s = self._alloc(None)
        self.transitions[s] = row
        self.out_degree[s] = int(np.count_nonzero(row))
        self.expanded[s] = True
        return s

    def _state_for(self, closed: frozenset) -> int:
        """Id of the character state for an epsilon-closed set of live NFA states."""
        if not closed:
            return DEAD
        s = self._ids.get(closed)
        if s is None:
            s = self._alloc(closed)
            self._ids[closed] = s
            self.char_boundary[s] = True
            self.accepting[s] = self.nfa.accept in closed
        return s

    # ------------------------------------------------------------ expansion
    def _runs(self, nfa_set: frozenset) -> CodepointRuns:
        edges = [e for s in nfa_set for e in self.nfa.edges[s]]
        points = sorted({0}.union(*({lo, hi + 1} for ranges, _ in edges for lo, hi in ranges)))
        cover: List[set] = [set() for _ in points]
        for ranges, target in edges:
            for lo, hi in ranges:
                for i in range(bisect.bisect_left(points, lo), bisect.bisect_left(points, hi + 1)):
                    cover[i].add(target)
        memo: Dict[frozenset, int] = {}
        targets = np.empty(len(points), dtype=np.int64)
        for i, raw in enumerate(cover):
            key = frozenset(raw)
            if key not in memo:
                memo[key] = self._state_for(self.nfa.closure(key)) if key else DEAD
            targets[i] = memo[key]
        starts = np.asarray(points, dtype=np.int64)
        keep = np.ones(starts.size, dtype=bool)
        keep[1:] = targets[1:] != targets[:-1]
        return CodepointRuns(starts[keep], targets[keep])

    def expand(self, state: int) -> None:
        """Build the byte row of ``state`` (no-op if already built)."""
        with self.lock:
            if self.expanded[state]:
                return
            row = self._lowering.lower(self._runs(self._sets[state]))
            self.transitions[state] = row
            self.out_degree[state] = int(np.count_nonzero(row))
            self.expanded[state] = True

    def ensure(self, states: np.ndarray) -> None:
        """Expand every state in the int array ``states`` (cheap when all are built)."""
        if not self.expanded[states].all():
            for s in np.unique(states[~self.expanded[states]]).tolist():
                self.expand(s)

    # ------------------------------------------------------------ queries
    def next_state(self, state: int, byte: int) -> int:
        if not self.expanded[state]:
            self.expand(state)
        return int(self.transitions[state, byte])

    def walk(self, state: int, data: bytes) -> int:
        """State after reading ``data`` from ``state`` (``dead`` once it leaves the language)."""
        for b in data:
            if state == DEAD:
                break
            state = self.next_state(state, b)
        return state

    def degree(self, state: int) -> int:
        """Number of bytes allowed in ``state``."""
        if not self.expanded[state]:
            self.expand(state)
        return int(self.out_degree[state])

    def is_final(self, state: int) -> bool:
        """Accepting and without any outgoing byte: nothing but EOS can follow."""
        return bool(self.accepting[state]) and self.degree(state) == 0

    def expand_all(self, max_states: int = 1_000_000) -> int:
        """Expand every reachable state (for benchmarks and tests); returns the state count."""
        todo = [self.initial]
        seen = {self.initial}
        while todo:
            s = todo.pop()
            self.expand(s)
            for t in np.unique(self.transitions[s]).tolist():
                if t != DEAD and t not in seen:
                    seen.add(t)
                    todo.append(t)
            if len(seen) > max_states:
                raise ValueError(f"regex {self.regex!r} has more than {max_states} DFA states")
        return len(seen) + 1
