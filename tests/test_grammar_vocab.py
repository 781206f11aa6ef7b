"""Token byte tables: byte-level BPE (the bundled SmolLM2 tokenizer) and
SentencePiece byte-fallback vocabularies; special and padding ids get no bytes."""

from __future__ import annotations

import random

import pytest
import torch
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from sgl.grammar import BuiltinGrammarBackend
from sgl.models.loader import load_bundled_tokenizer
from sgl.grammar.vocab import TokenVocab, bytes_to_unicode, get_token_vocab


def test_byte_unicode_table_is_a_bijection():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256


def test_bundled_tokenizer_bytes_match_decode():
    tok = load_bundled_tokenizer()
    vocab = get_token_vocab(tok, len(tok) + 7)
    assert vocab.columns.shape == (int(vocab.lengths.max()), len(tok) + 7)
    assert vocab.special_ids >= {0, 1, 2} and all(vocab.token_bytes[i] == b"" for i in vocab.special_ids)
    assert all(vocab.token_bytes[i] == b"" for i in range(len(tok), len(tok) + 7))
    rng = random.Random(0)
    checked = 0
    for i in rng.sample(range(17, len(tok)), 3000):
        b = vocab.token_bytes[i]
        assert vocab.columns[: len(b), i].tobytes() == b and vocab.lengths[i] == len(b)
        try:
            text = b.decode("utf-8")
        except UnicodeDecodeError:  # a piece of a multi-byte character
            continue
        assert tok.decode([i]) == text
        checked += 1
    assert checked > 2500
    # multi-byte characters split across tokens reassemble exactly
    ids = tok.encode("你好 😀 ça", add_special_tokens=False)
    assert vocab.decode_bytes(ids) == "你好 😀 ça".encode()
    lengths = vocab.lengths[vocab.by_length]
    assert (lengths[:-1] >= lengths[1:]).all() and (lengths > 0).all()


@pytest.fixture(scope="module")
def sp_tokenizer():
    """A tiny SentencePiece-style tokenizer with byte fallback, built locally."""
    pieces = ["<unk>", "<s>", "</s>", "\u2581hello", "\u2581world", "<0x0A>", "é", "<0xC3>", "<0xA9>", "hello", "!"]
    tk = Tokenizer(models.WordLevel({p: i for i, p in enumerate(pieces)}, unk_token="<unk>"))
    tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def test_sentencepiece_byte_fallback_vocab(sp_tokenizer):
    vocab = TokenVocab.from_tokenizer(sp_tokenizer)
    tb = vocab.token_bytes
    assert tb[3] == b" hello" and tb[5] == b"\n" and tb[6] == "é".encode() and tb[7] == b"\xc3"
    assert tb[0] == tb[1] == tb[2] == b"" and vocab.eos_token_ids == {2}
    be = BuiltinGrammarBackend(sp_tokenizer, len(sp_tokenizer), jump_holdback=False)
    g = be.compile(regex=r" hello(é|!)\n")
    mask = torch.zeros(len(sp_tokenizer), dtype=torch.bool)
    g.fill_vocab_mask(mask)
    assert mask.nonzero().flatten().tolist() == [3]
    g.accept_token(3)
    g.fill_vocab_mask(mask)
    assert mask.nonzero().flatten().tolist() == [6, 7, 10]  # é whole or its first byte, or !
    g.accept_token(7)  # 0xC3: inside a character now
    g.fill_vocab_mask(mask)
    assert mask.nonzero().flatten().tolist() == [8]
    assert g.try_jump_forward() is None  # not at a character boundary
    g.accept_token(8)
    assert g.try_jump_forward() == "\n"
    holding = BuiltinGrammarBackend(sp_tokenizer, len(sp_tokenizer)).compile(regex=r" hello(é|!)\n")
    holding.accept_string(" helloé")
    assert holding.try_jump_forward() is None  # a single forced token is left to the model
    g.accept_token(5)
    g.fill_vocab_mask(mask)
    assert mask.nonzero().flatten().tolist() == [2]  # only EOS
    assert g.is_terminated()
