"""The model vocabulary as byte strings: what each token id writes into the output.

A constrained decoder works on the bytes a token appends to the text, not on
its display string.  Three tokenizer families are handled:

* byte-level BPE (GPT-2, Llama-3, Qwen, SmolLM2): every byte is written as a
  printable unicode character (GPT-2's ``bytes_to_unicode`` table); the byte
  string is recovered by inverting that table.
* SentencePiece with byte fallback (Llama-2, Mistral): ``<0xAB>`` tokens are
  single bytes and ``\u2581`` stands for a space.
* anything else: the token string's UTF-8 encoding.

Special tokens (``all_special_ids`` and added tokens flagged ``special``) and
ids in ``[len(tokenizer), vocab_size)`` (padding rows of the logits) get no
bytes: a grammar never allows them, except EOS in accepting states.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from typing import FrozenSet, Iterable, List, Optional, Sequence

import numpy as np


def bytes_to_unicode() -> dict:
    """GPT-2's reversible byte -> printable unicode character table (256 entries).

    Source: openai/gpt-2 ``encoder.py`` (also used by HF ``tokenizers`` ByteLevel).
    """
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) \
        + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# str.translate table: byte-level unicode char -> the latin-1 char of its byte.
_BYTE_LEVEL_TRANSLATE = {ord(c): chr(b) for b, c in bytes_to_unicode().items()}


def _decoder_kind(tokenizer, pieces: Sequence[Optional[str]]) -> str:
    """'byte_level' | 'sentencepiece' | 'plain' for the tokenizer's decoder."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    if decoder is not None:
        try:  # the decoder's own JSON (a Sequence lists its parts)
            text = json.dumps(json.loads(decoder.__getstate__()))
        except Exception:  # pragma: no cover - exotic backends
            text = ""
        if '"ByteLevel"' in text:
            return "byte_level"
        if '"ByteFallback"' in text or '"Metaspace"' in text:
            return "sentencepiece"
    present = {p for p in pieces[:4096] if p is not None}
    if "<0x0A>" in present or any(p.startswith("\u2581") for p in present):
        return "sentencepiece"
    return "plain"


def _piece_bytes(piece: str, kind: str) -> bytes:
    if kind == "byte_level":
        try:
            return piece.translate(_BYTE_LEVEL_TRANSLATE).encode("latin-1")
        except UnicodeEncodeError:  # a piece outside the byte alphabet: take it literally
            return piece.encode("utf-8")
    if kind == "sentencepiece":
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        return piece.replace("\u2581", " ").encode("utf-8")
    return piece.encode("utf-8")


@dataclass(frozen=True, eq=False)
class TokenVocab:
    """Byte strings of a vocabulary as numpy tables, built once per tokenizer.

    Attributes:
        vocab_size: width of the model's logits (>= ``len(tokenizer)``).
        token_bytes: per id, the bytes the token writes (``b""`` = never allowed:
            special tokens, padding ids, empty pieces).
        columns: uint8 ``[max_len, vocab_size]``; ``columns[j, t]`` is byte ``j`` of
            token ``t`` (0-padded), stored column-major for fast per-column gathers.
        lengths: int32 ``[vocab_size]``, byte length of each token (0 = never allowed).
        by_length: int64 ``[n]``, ids of the allowed-as-text tokens sorted by
            decreasing length (ties by id).
        eos_token_ids: ids that end a generation (allowed exactly in accepting states).
        special_ids: all special-token ids (never allowed as text).
    """

    vocab_size: int
    token_bytes: List[bytes]
    columns: np.ndarray
    lengths: np.ndarray
    by_length: np.ndarray
    eos_token_ids: FrozenSet[int]
    special_ids: FrozenSet[int]

    @classmethod
    def from_tokenizer(cls, tokenizer, vocab_size: Optional[int] = None,
                       eos_token_ids: Optional[Iterable[int]] = None) -> "TokenVocab":
        """Build the byte tables of a HF tokenizer.

        Args:
            tokenizer: a ``transformers`` tokenizer (fast or slow).
            vocab_size: the model's logits width; default ``len(tokenizer)``.
            eos_token_ids: ids that end generation; default ``{tokenizer.eos_token_id}``.

        Raises:
            ValueError: ``vocab_size < len(tokenizer)``.
        """
        n_tok = len(tokenizer)
        vocab_size = n_tok if vocab_size is None else int(vocab_size)
        if vocab_size < n_tok:
            raise ValueError(f"vocab_size={vocab_size} is smaller than the tokenizer ({n_tok} tokens)")
        if eos_token_ids is None:
            eos = getattr(tokenizer, "eos_token_id", None)
            eos_token_ids = [] if eos is None else [eos]
        eos_ids = frozenset(int(t) for t in eos_token_ids)
        special = set(int(i) for i in getattr(tokenizer, "all_special_ids", []))
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        special |= {int(i) for i, t in added.items() if getattr(t, "special", False)}
        pieces = tokenizer.convert_ids_to_tokens(list(range(n_tok)))
        kind = _decoder_kind(tokenizer, pieces)
        token_bytes: List[bytes] = [b""] * vocab_size
        for i, piece in enumerate(pieces):
            if piece is None or i in special:
                continue
            if i in added:  # non-special added tokens are literal text, not byte-encoded
                token_bytes[i] = piece.encode("utf-8")
            else:
                token_bytes[i] = _piece_bytes(piece, kind)
        lengths = np.fromiter((len(b) for b in token_bytes), dtype=np.int32, count=vocab_size)
        max_len = max(int(lengths.max()), 1)
        columns = np.zeros((max_len, vocab_size), dtype=np.uint8)
        flat = np.frombuffer(b"".join(token_bytes), dtype=np.uint8)
        token_of_byte = np.repeat(np.arange(vocab_size), lengths)
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        columns[np.arange(flat.size) - starts, token_of_byte] = flat
        order = np.argsort(-lengths, kind="stable")
        by_length = order[lengths[order] > 0].astype(np.int64)
        return cls(vocab_size, token_bytes, columns, lengths, by_length, eos_ids, frozenset(special))

    def decode_bytes(self, token_ids: Iterable[int]) -> bytes:
        """Concatenated bytes of ``token_ids`` (special tokens contribute nothing)."""
        return b"".join(self.token_bytes[t] for t in token_ids)


_VOCAB_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def get_token_vocab(tokenizer, vocab_size: Optional[int] = None,
                    eos_token_ids: Optional[Iterable[int]] = None) -> TokenVocab:
    """``TokenVocab.from_tokenizer`` memoized per (tokenizer object, vocab_size, eos ids).

    With no ``vocab_size`` and no ``eos_token_ids``, any vocab already built for
    this tokenizer is returned (token bytes do not depend on them).
    """
    key = (vocab_size if vocab_size is not None else len(tokenizer),
           None if eos_token_ids is None else frozenset(eos_token_ids))
    try:
        per_tok = _VOCAB_CACHE.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: no memo
        return TokenVocab.from_tokenizer(tokenizer, vocab_size, eos_token_ids)
    if vocab_size is None and eos_token_ids is None and per_tok:
        return next(iter(per_tok.values()))
    if key not in per_tok:
        per_tok[key] = TokenVocab.from_tokenizer(tokenizer, vocab_size, eos_token_ids)
    return per_tok[key]
