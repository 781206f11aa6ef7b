"""Allowed-token sets per DFA state, computed lazily and vectorized over the vocabulary.

For a DFA state ``s`` the allowed tokens are those whose bytes, read from
``s``, never hit the dead state (the DFA is pruned to live states, so this is
exactly "the text stays a prefix of some match").  Instead of a Python loop
over 49k tokens, all tokens advance together one byte column at a time
through the transition table (``state = T[state, byte[:, j]]``, a numpy
gather): tokens are sorted by length, so the ones still running at column
``j`` are a prefix of the alive set, and tokens are dropped as soon as they
die.  The work per state is the total number of bytes of the tokens that
survive each column -- for a digit state a few hundred, for "any string
character" about the vocabulary's byte count -- typically 0.1-5 ms.

Masks are cached per state (bool ``[vocab_size]`` tensors), so a state is
computed once per (tokenizer, regex) no matter how many requests visit it.
This is the "index" of Willard & Louf (2023, "Efficient Guided Generation for
LLMs", Outlines), built on demand instead of up front.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch

from sgl.grammar.fsm import ByteDFA
from sgl.grammar.vocab import TokenVocab


class TokenIndex:
    """Lazily computed allowed-token masks of one (vocabulary, DFA) pair.

    Args:
        vocab: the tokenizer's byte tables (see :class:`TokenVocab`).
        dfa: the regex's byte DFA.
    """

    def __init__(self, vocab: TokenVocab, dfa: ByteDFA):
        self.vocab = vocab
        self.dfa = dfa
        self._neg_len = -vocab.lengths[vocab.by_length].astype(np.int64)  # ascending
        self._eos = np.array(sorted(vocab.eos_token_ids), dtype=np.int64)
        self._masks: Dict[int, np.ndarray] = {}
        self._device_masks: Dict[Tuple[int, torch.device], torch.Tensor] = {}

    def allowed_token_ids(self, state: int) -> np.ndarray:
        """Sorted int64 ids of the non-special tokens allowed in ``state`` (EOS not included)."""
        return np.sort(self._allowed_unsorted(state))

    def _allowed_unsorted(self, state: int) -> np.ndarray:
        dfa, columns = self.dfa, self.vocab.columns
        idx, neg_len = self.vocab.by_length, self._neg_len
        if state == dfa.dead:
            return np.zeros(0, dtype=np.int64)
        dfa.expand(state)
        st = dfa.transitions[state][columns[0][idx]]  # column 0: one row, a 1-D gather
        alive = st != dfa.dead
        idx, st, neg_len = idx[alive], st[alive], neg_len[alive]
        done = []
        j = 1
        while idx.size:
            n = int(np.searchsorted(neg_len, -j, side="left"))  # tokens longer than j bytes
            if n < idx.size:
                fin, fin_st = idx[n:], st[n:]
                done.append(fin[fin_st != dfa.dead])
                idx, st, neg_len = idx[:n], st[:n], neg_len[:n]
                if n == 0:
                    break
            dfa.ensure(st)
            flat = st.astype(np.int64)
            flat *= 256
            flat += columns[j][idx]
            st = dfa.transitions.reshape(-1).take(flat)
            alive = st != dfa.dead
            n_alive = int(np.count_nonzero(alive))
            if n_alive < 0.8 * alive.size:  # compact; else dead tokens just stay dead
                idx, st, neg_len = idx[alive], st[alive], neg_len[alive]
            j += 1
        return np.concatenate(done) if done else np.zeros(0, dtype=np.int64)

    def mask(self, state: int) -> np.ndarray:
        """bool ``[vocab_size]``: True for tokens allowed in ``state``, EOS iff accepting.

        Computed on first use and cached; callers must not modify it.
        """
        m = self._masks.get(state)
        if m is None:
            with self.dfa.lock:
                m = self._masks.get(state)
                if m is None:
                    m = np.zeros(self.vocab.vocab_size, dtype=bool)
                    if state != self.dfa.dead:
                        m[self._allowed_unsorted(state)] = True
                        if self.dfa.accepting[state]:
                            m[self._eos] = True
                    m.flags.writeable = False
                    self._masks[state] = m
        return m

    def fill(self, state: int, mask_row: torch.Tensor) -> None:
        """Write ``mask(state)`` into the bool ``[vocab_size]`` tensor ``mask_row`` (any device)."""
        m = self.mask(state)
        if mask_row.device.type == "cpu":
            mask_row.numpy()[...] = m  # numpy copy: no torch thread-pool wake-up per row
            return
        key = (state, mask_row.device)
        dm = self._device_masks.get(key)
        if dm is None:
            dm = self._device_masks[key] = torch.from_numpy(m.copy()).to(mask_row.device)
        mask_row.copy_(dm, non_blocking=True)

    @property
    def n_cached(self) -> int:
        """Number of states whose mask has been computed."""
        return len(self._masks)
