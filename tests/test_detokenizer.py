"""IncrementalDetokenizer: UTF-8 split across tokens, special tokens, flush."""

from pathlib import Path

import pytest

from sgl.engine.detokenizer import IncrementalDetokenizer

FFFD = "\ufffd"
TEXTS = [
    "Héllo wörld, naïve café — ça va?",
    "日本語のテキストと中文混合",
    "Emoji: 👍🏽 🤖🎉 👨‍👩‍👧 done",
    "mixed ✓ ∑ ß Ω 😀 end\nnew line\ttab",
]


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The bundled SmolLM2 tokenizer: from the loader's converted cache if it
    exists, else read from the GGUF file (~10 s)."""
    from transformers import AutoTokenizer

    from sgl.models.loader import default_model_path

    gguf = Path(default_model_path())
    try:
        from sgl.models.gguf_convert import gguf_cache_dir, is_complete_cache

        cached = gguf_cache_dir(str(gguf))
        if is_complete_cache(cached):
            return AutoTokenizer.from_pretrained(str(cached), local_files_only=True)
    except ImportError:  # loader layout changed: fall back to the GGUF file
        pass
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@pytest.fixture(scope="session")
def byte_tokenizer():
    """A GPT-2-style byte-level BPE with no merges: every UTF-8 byte is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    assert len(vocab) == 256
    vocab["<|eos|>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|eos|>")
    return tok


def stream(tok, ids, chunk=1, **kw):
    d = IncrementalDetokenizer(tok, **kw)
    deltas = [d.add_tokens(ids[i:i + chunk]) for i in range(0, len(ids), chunk)]
    deltas.append(d.flush())
    return d, deltas


def test_byte_level_4_byte_emoji_split_into_single_bytes(byte_tokenizer):
    ids = byte_tokenizer.encode("a🤖b", add_special_tokens=False)
    assert len(ids) == 6  # 'a', 4 bytes of U+1F916, 'b'
    d, deltas = stream(byte_tokenizer, ids)
    assert deltas == ["a", "", "", "", "🤖", "b", ""]
    assert d.text == "a🤖b" == byte_tokenizer.decode(ids)


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_every_text_no_replacement_char(byte_tokenizer, text):
    ids = byte_tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == len(text.encode("utf-8"))
    for chunk in (1, 2, 5):
        d, deltas = stream(byte_tokenizer, ids, chunk)
        assert all(FFFD not in x for x in deltas)
        assert "".join(deltas) == d.text == text


def test_flush_emits_trailing_incomplete_bytes(byte_tokenizer):
    ids = byte_tokenizer.encode("ok🤖", add_special_tokens=False)[:-2]  # cut the emoji
    d = IncrementalDetokenizer(byte_tokenizer)
    assert d.add_tokens(ids[:2]) == "ok"
    assert d.add_tokens(ids[2:]) == ""  # 2 of the emoji's 4 bytes: held back
    tail = d.flush()
    assert tail and set(tail) == {FFFD}
    assert d.text == byte_tokenizer.decode(ids)
    assert d.flush() == ""


@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_concatenated_deltas_equal_decode(smol_tokenizer, text):
    ids = smol_tokenizer.encode(text, add_special_tokens=False)
    d, deltas = stream(smol_tokenizer, ids)
    assert all(FFFD not in x for x in deltas)
    assert "".join(deltas) == d.text == smol_tokenizer.decode(ids) == text
    assert d.output_ids == ids


def test_smollm2_holds_back_split_cjk_character(smol_tokenizer):
    # the bundled tokenizer splits some CJK/emoji characters over byte tokens
    ids = smol_tokenizer.encode("世界", add_special_tokens=False)
    pieces = [smol_tokenizer.decode([i]) for i in ids]
    assert any(FFFD in p for p in pieces), pieces  # the case under test exists
    d, deltas = stream(smol_tokenizer, ids)
    assert "" in deltas[:-1] and "".join(deltas) == "世界"


def test_smollm2_special_tokens(smol_tokenizer):
    tok = smol_tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    ids = tok.encode("Hi 👋", add_special_tokens=False) + [end]
    d, _ = stream(tok, ids, skip_special_tokens=True)
    assert d.text == "Hi 👋"
    d, _ = stream(tok, ids, skip_special_tokens=False)
    assert d.text == "Hi 👋<|im_end|>" == tok.decode(ids, skip_special_tokens=False)


def test_prompt_context_is_not_emitted(smol_tokenizer):
    tok = smol_tokenizer
    prompt = tok.encode("The answer is", add_special_tokens=False)
    out = tok.encode(" forty-two 🎉", add_special_tokens=False)
    d = IncrementalDetokenizer(tok, prompt_ids=prompt)
    text = "".join(d.add_tokens([t]) for t in out) + d.flush()
    assert text == d.text == " forty-two 🎉"
    assert d.output_ids == out
