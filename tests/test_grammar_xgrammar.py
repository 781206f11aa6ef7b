"""The optional ``grammar=xgrammar`` backend (skipped when xgrammar is not
installed): valid outputs, masks identical to the builtin backend, errors."""

from __future__ import annotations

import random

import pytest
import regex as regex_mod
import torch

from sgl.grammar import make_grammar_backend
from sgl.grammar.examples import IPV4_REGEX as IPV4
from sgl.grammar.simulate import random_logits, sample_match, simulate_decode

xgrammar = pytest.importorskip("xgrammar")
UNICODE = r"(你好|世界|😀){4}"


@pytest.fixture(scope="module")
def backend(tok):
    return make_grammar_backend("builtin", tok, len(tok))


@pytest.fixture(scope="module")
def xgr_backend(tok):
    return make_grammar_backend("xgrammar", tok, len(tok))


def test_xgrammar_backend_decodes_valid_outputs(xgr_backend, backend, tok):
    for seed in range(4):
        g = xgr_backend.compile(regex=IPV4)
        res = simulate_decode(g, tok, backend.vocab, random_logits(len(tok), seed), max_tokens=30,
                              temperature=1.0, seed=seed)
        assert res.finished and regex_mod.fullmatch(IPV4, res.text), res.text


def test_xgrammar_masks_agree_with_builtin(xgr_backend, backend, tok):
    rng = random.Random(0)
    for regex in (IPV4, UNICODE):
        ours, theirs = backend.compile(regex=regex), xgr_backend.compile(regex=regex)
        target = sample_match(ours, backend.vocab, seed=rng.randrange(100))
        for t in tok.encode(target, add_special_tokens=False)[:4]:
            a = torch.zeros(len(tok), dtype=torch.bool)
            b = torch.zeros(len(tok), dtype=torch.bool)
            ours.fill_vocab_mask(a)
            theirs.fill_vocab_mask(b)
            assert torch.equal(a, b)
            ours.accept_token(t)
            theirs.accept_token(t)


def test_xgrammar_errors(xgr_backend):
    with pytest.raises(ValueError):
        xgr_backend.compile(regex="(ab")
    with pytest.raises(ValueError, match="empty"):
        xgr_backend.compile(regex="")
