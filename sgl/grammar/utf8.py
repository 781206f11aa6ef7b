"""Lower a character-level transition function to UTF-8 bytes.

Given, for one character-DFA state, a map from unicode code points to target
states (as sorted runs), :class:`Utf8Lowering` emits the byte-level
transitions: ASCII bytes go straight to the target; a lead byte goes to an
intermediate state that expects the remaining continuation bytes.  Blocks of
code points that all go to the same target share one "any k continuation
bytes, then target" chain, so a negated class like ``[^"]`` costs a handful of
states, not a million.  Overlong forms, surrogates (U+D800-U+DFFF) and code
points above U+10FFFF get no transition (RFC 3629, section 4).

This is the standard construction used by RE2 / Rust ``regex-syntax``'s
``Utf8Sequences``, specialised to a DFA whose states we allocate lazily here.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np

DEAD = 0  # the dead state's id in every ByteDFA: "no transition"
# (first lead byte, last lead byte, continuation bytes, lowest and highest valid code point)
_LEADS = ((0xC2, 0xDF, 1, 0x80, 0x7FF), (0xE0, 0xEF, 2, 0x800, 0xFFFF),
          (0xF0, 0xF4, 3, 0x10000, 0x10FFFF))
_SURROGATES = (0xD800, 0xDFFF)


class CodepointRuns:
    """A total map code point -> target as sorted runs.

    Attributes:
        starts: int64 ``[r]``, first code point of each run (``starts[0] == 0``).
        targets: int64 ``[r]``, target state of each run (``DEAD`` = no transition).
    """

    def __init__(self, starts: np.ndarray, targets: np.ndarray):
        self.starts, self.targets = starts, targets

    @classmethod
    def from_explicit(cls, cps: np.ndarray, cp_targets: np.ndarray, default: int) -> "CodepointRuns":
        """Runs for: code point ``cps[i]`` -> ``cp_targets[i]``, every other one -> ``default``.

        ``cps`` must be sorted and unique (int64).
        """
        k = cps.size
        starts = np.empty(2 * k + 1, dtype=np.int64)
        targets = np.empty(2 * k + 1, dtype=np.int64)
        starts[0], targets[0] = 0, default
        starts[1::2], targets[1::2] = cps, cp_targets
        starts[2::2], targets[2::2] = cps + 1, default
        # drop empty gaps (consecutive code points), then merge equal neighbours
        nonempty = np.ones(starts.size, dtype=bool)
        nonempty[:-1] = starts[:-1] != starts[1:]
        starts, targets = starts[nonempty], targets[nonempty]
        keep = np.ones(starts.size, dtype=bool)
        keep[1:] = targets[1:] != targets[:-1]
        return cls(starts[keep], targets[keep])

    def lookup(self, cps: np.ndarray) -> np.ndarray:
        """Targets of the code points ``cps`` (int64 array)."""
        return self.targets[np.searchsorted(self.starts, cps, side="right") - 1]

    def uniform(self, lo: int, hi: int):
        """The single target of all code points in ``[lo, hi]``, or None if they differ."""
        i = int(np.searchsorted(self.starts, lo, side="right")) - 1
        if i + 1 < self.starts.size and self.starts[i + 1] <= hi:
            return None
        return int(self.targets[i])


class Utf8Lowering:
    """Allocates byte-level states for the UTF-8 sequences of character transitions.

    Args:
        alloc: called with a finished int32 ``[256]`` byte row (``DEAD`` = no
            transition) of a new intermediate state; returns the state's id.
    """

    def __init__(self, alloc: Callable[[np.ndarray], int]):
        self._new_state = alloc
        self._chains: Dict[Tuple[int, int], int] = {}

    def chain(self, target: int, k: int) -> int:
        """State that reads any ``k`` continuation bytes (0x80-0xBF), then is ``target``."""
        if k == 0:
            return target
        key = (target, k)
        if key not in self._chains:
            row = np.full(256, DEAD, dtype=np.int32)
            row[0x80:0xC0] = self.chain(target, k - 1)
            self._chains[key] = self._new_state(row)
        return self._chains[key]

    def _block(self, runs: CodepointRuns, lo: int, size: int, k: int, vmin: int, vmax: int) -> int:
        """State after a prefix covering code points ``[lo, lo+size)`` with ``k`` bytes to go."""
        hi = lo + size - 1
        if hi < vmin or lo > vmax or (lo >= _SURROGATES[0] and hi <= _SURROGATES[1]):
            return DEAD
        fully_valid = lo >= vmin and hi <= vmax and (hi < _SURROGATES[0] or lo > _SURROGATES[1])
        if fully_valid:
            t = runs.uniform(lo, hi)
            if t is not None:
                return DEAD if t == DEAD else self.chain(t, k)
        if k == 0:  # single code point that is not fully valid: impossible by the checks above
            return DEAD
        sub = size // 64
        row = np.full(256, DEAD, dtype=np.int32)
        for c in range(64):
            row[0x80 + c] = self._block(runs, lo + c * sub, sub, k - 1, vmin, vmax)
        if (row == DEAD).all():
            return DEAD
        return self._new_state(row)

    def lower(self, runs: CodepointRuns) -> np.ndarray:
        """The int32 ``[256]`` byte row of a character state whose transitions are ``runs``."""
        row = np.full(256, DEAD, dtype=np.int32)
        row[:0x80] = runs.lookup(np.arange(0x80, dtype=np.int64))
        if runs.uniform(0x80, 0x10FFFF) == DEAD:  # ASCII-only state: the common case
            return row
        for first, last, k, vmin, vmax in _LEADS:
            size = 64 ** k
            for lead in range(first, last + 1):
                lo = (lead & (0x3F >> k)) << (6 * k)
                row[lead] = self._block(runs, lo, size, k, vmin, vmax)
        return row
