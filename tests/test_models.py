"""Our Llama / Qwen2 vs transformers' own implementations on small random
configs: batched prefill, batched decode, extend after a cached (and shared)
prefix, weight-loading rules, RoPE frequencies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_utils import KVBook, hf_logits, random_hf_model, tiny_config

from sgl.layers.attention import make_attention_backend
from sgl.layers.rotary import compute_inv_freq, rope_parameters
from sgl.models.registry import get_model_class

ATOL = 1e-4
LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                   high_freq_factor=4.0, original_max_position_embeddings=32)
LINEAR_ROPE = dict(rope_type="linear", rope_theta=500.0, factor=4.0)

CONFIGS = {
    "llama-untied": ("llama", {}),
    "llama-tied-llama3rope": ("llama", dict(tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE)),
    "llama-bias-linearrope": ("llama", dict(attention_bias=True, mlp_bias=True, rope_parameters=LINEAR_ROPE)),
    "qwen2-untied": ("qwen2", {}),
    "qwen2-tied": ("qwen2", dict(tie_word_embeddings=True)),
}


def build(arch: str, overrides: dict, seed: int = 0):
    cfg = tiny_config(arch, **overrides)
    hf = random_hf_model(cfg, seed)
    ours = get_model_class(cfg.architectures)(cfg, make_attention_backend("torch")).eval()
    ours.load_weights(hf.state_dict().items())
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    return cfg, hf, ours, KVBook(cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim)


def run(model, fb) -> torch.Tensor:
    with torch.no_grad():
        return model.compute_logits(model(fb))


def rand_tokens(n: int, gen: torch.Generator, vocab: int = 128):
    return torch.randint(0, vocab, (n,), generator=gen).tolist()


@pytest.fixture(params=list(CONFIGS))
def setup(request):
    arch, overrides = CONFIGS[request.param]
    return build(arch, overrides)


def test_batched_prefill_matches_hf(setup):
    cfg, hf, ours, book = setup
    gen = torch.Generator().manual_seed(1)
    seqs = [rand_tokens(n, gen) for n in (5, 9, 3)]
    rows = [book.new_request() for _ in seqs]
    logits = run(ours, book.extend(rows, seqs))
    assert logits.shape == (17, cfg.vocab_size) and logits.dtype == torch.float32
    ref = torch.cat([hf_logits(hf, s) for s in seqs])
    assert ref.abs().max() > 0.5  # weights are large enough for errors to show
    torch.testing.assert_close(logits, ref, atol=ATOL, rtol=0)


def test_batched_decode_matches_hf(setup):
    cfg, hf, ours, book = setup
    gen = torch.Generator().manual_seed(2)
    seqs = [rand_tokens(n, gen) for n in (4, 11, 7, 1)]
    rows = [book.new_request() for _ in seqs]
    run(ours, book.extend(rows, seqs))
    for _ in range(3):
        nxt = rand_tokens(len(seqs), gen)
        for s, t in zip(seqs, nxt):
            s.append(t)
        logits = run(ours, book.decode(rows, nxt))
        ref = torch.stack([hf_logits(hf, s)[-1] for s in seqs])
        torch.testing.assert_close(logits, ref, atol=ATOL, rtol=0)


def test_extend_after_cached_prefix_matches_hf(setup):
    """Request A extends its own cached prefix; B reuses A's first 6 KV slots
    (a prefix-cache hit) and extends them; C is new. One EXTEND batch."""
    cfg, hf, ours, book = setup
    gen = torch.Generator().manual_seed(3)
    a = rand_tokens(6, gen)
    row_a = book.new_request()
    run(ours, book.extend([row_a], [a]))
    row_b = book.new_request(shared_prefix_from=row_a, prefix_len=6)
    row_c = book.new_request()
    new_a, new_b, c = rand_tokens(4, gen), rand_tokens(3, gen), rand_tokens(5, gen)
    fb = book.extend([row_a, row_b, row_c], [new_a, new_b, c])
    assert fb.extend_prefix_lens_cpu == (6, 6, 0)
    logits = run(ours, fb)
    ref = torch.cat([hf_logits(hf, a + new_a)[6:], hf_logits(hf, a + new_b)[6:], hf_logits(hf, c)])
    torch.testing.assert_close(logits, ref, atol=ATOL, rtol=0)
    # and a decode step after the mixed extend
    logits = run(ours, book.decode([row_a, row_b, row_c], [5, 6, 7]))
    ref = torch.stack([hf_logits(hf, a + new_a + [5])[-1], hf_logits(hf, a + new_b + [6])[-1],
                       hf_logits(hf, c + [7])[-1]])
    torch.testing.assert_close(logits, ref, atol=ATOL, rtol=0)


def test_missing_lm_head_ties_to_embedding():
    cfg = tiny_config("llama")
    hf = random_hf_model(cfg)
    ours = get_model_class(cfg.architectures)(cfg, make_attention_backend("torch"))
    ours.load_weights((k, v) for k, v in hf.state_dict().items() if k != "lm_head.weight")
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    with torch.no_grad():
        hf.lm_head.weight.copy_(hf.model.embed_tokens.weight)
    book = KVBook(2, 2, 16)
    toks = [3, 17, 99, 5]
    logits = run(ours, book.extend([book.new_request()], [toks]))
    torch.testing.assert_close(logits, hf_logits(hf, toks), atol=ATOL, rtol=0)


def test_fused_weights_land_in_the_right_rows():
    cfg = tiny_config("qwen2")
    hf = random_hf_model(cfg)
    ours = get_model_class(cfg.architectures)(cfg, make_attention_backend("torch"))
    ours.load_weights(hf.state_dict().items())
    attn, hf_attn = ours.model.layers[1].self_attn, hf.model.layers[1].self_attn
    q, k, v = attn.qkv_proj.bias.split([64, 32, 32])
    assert torch.equal(q, hf_attn.q_proj.bias) and torch.equal(v, hf_attn.v_proj.bias)
    assert torch.equal(k, hf_attn.k_proj.bias) and attn.o_proj.bias is None
    gate, up = ours.model.layers[0].mlp.gate_up_proj.weight.split(128)
    assert torch.equal(gate, hf.model.layers[0].mlp.gate_proj.weight)
    assert torch.equal(up, hf.model.layers[0].mlp.up_proj.weight)


def test_load_weights_rejects_bad_checkpoints():
    cfg = tiny_config("llama")
    sd = random_hf_model(cfg).state_dict()
    make = lambda: get_model_class(cfg.architectures)(cfg, make_attention_backend("torch"))  # noqa: E731
    with pytest.raises(ValueError, match="model.layers.9.mlp.up_proj.weight"):
        make().load_weights(list(sd.items()) + [("model.layers.9.mlp.up_proj.weight", torch.zeros(1))])
    with pytest.raises(ValueError, match=r"qkv_proj.weight\[k\]"):
        make().load_weights((k, v) for k, v in sd.items() if k != "model.layers.0.self_attn.k_proj.weight")
    with pytest.raises(ValueError, match="shape"):
        make().load_weights([(k, v[:-1] if k.endswith("v_proj.weight") else v) for k, v in sd.items()])


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        get_model_class(["GPT2LMHeadModel"])
    assert get_model_class(["Foo", "Qwen2ForCausalLM"]).__name__ == "Qwen2ForCausalLM"


@pytest.mark.parametrize("rope", [None, LLAMA3_ROPE, LINEAR_ROPE])
def test_inv_freq_matches_transformers(rope):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = tiny_config("llama", **({"rope_parameters": rope} if rope else {}))
    params = rope_parameters(cfg)
    ours = compute_inv_freq(16, params, cfg.max_position_embeddings)
    if params["rope_type"] == "default":
        ref = 1.0 / (params["rope_theta"] ** (torch.arange(0, 16, 2, dtype=torch.float) / 16))
    else:
        ref, _ = ROPE_INIT_FUNCTIONS[params["rope_type"]](cfg, "cpu")
    assert torch.equal(ours, ref)
    if rope is not None:  # scaling actually changed something
        plain = compute_inv_freq(16, dict(rope_type="default", rope_theta=params["rope_theta"]), 256)
        assert not torch.equal(ours, plain)


def test_rope_parameters_reads_v4_style_configs():
    class Old:  # transformers v4 attribute layout
        rope_theta = 500000.0
        rope_scaling = {"type": "linear", "factor": 2.0}

    assert rope_parameters(Old()) == {"type": "linear", "factor": 2.0, "rope_theta": 500000.0, "rope_type": "linear"}
    with pytest.raises(ValueError, match="yarn"):
        compute_inv_freq(16, {"rope_type": "yarn", "rope_theta": 1e4}, 256)


@pytest.mark.parametrize("name", ["llama-bias-linearrope", "qwen2-tied"])
def test_cpu_prepacked_linears_match_hf(name):
    from sgl.layers.linear import prepack_linears_cpu

    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build")
    cfg, hf, ours, book = build(*CONFIGS[name])
    assert prepack_linears_cpu(ours) == 2 * 4 + 1  # qkv, o, gate_up, down per layer + lm_head
    gen = torch.Generator().manual_seed(5)
    seqs = [rand_tokens(n, gen) for n in (6, 2)]
    rows = [book.new_request() for _ in seqs]
    logits = run(ours, book.extend(rows, seqs))
    torch.testing.assert_close(logits, torch.cat([hf_logits(hf, s) for s in seqs]), atol=ATOL, rtol=0)
    logits = run(ours, book.decode(rows, [1, 2]))
    ref = torch.stack([hf_logits(hf, s + [t])[-1] for s, t in zip(seqs, [1, 2])])
    torch.testing.assert_close(logits, ref, atol=ATOL, rtol=0)
    ours.load_weights(hf.state_dict().items())  # reloading drops the (now stale) packed copies
    assert all(m.packed_weight is None for m in ours.modules() if hasattr(m, "packed_weight"))
    assert all(layer.mlp.gate_up_proj.packed_gate_up is None for layer in ours.model.layers)


def test_gemm_post_ops_match_separate_ops():
    """Linear.forward_add and GateUpLinear.forward_silu_mul, eager and with oneDNN post-ops."""
    from sgl.layers.activation import silu_and_mul
    from sgl.layers.linear import GateUpLinear, Linear

    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 16, generator=gen)
    lin, gu = Linear(16, 24, bias=True), GateUpLinear(16, 12, bias=True)
    for p in (lin.weight, lin.bias, gu.weight, gu.bias):
        p.data.copy_(torch.randn(p.shape, generator=gen))
    residual = torch.randn(5, 24, generator=gen)
    assert torch.equal(lin.forward_add(x, residual), F.linear(x, lin.weight, lin.bias) + residual)
    ref = silu_and_mul(F.linear(x, gu.weight, gu.bias))
    assert torch.equal(gu.forward_silu_mul(x), ref)
    assert lin.prepack_cpu() and gu.prepack_cpu()
    assert gu.packed_weight is None and len(gu.packed_gate_up) == 2  # gate and up packed apart
    assert torch.equal(lin.forward_add(x, residual), lin(x) + residual)  # the post-op add is exact
    torch.testing.assert_close(gu.forward_silu_mul(x), ref, atol=1e-5, rtol=1e-6)  # oneDNN's swish
    torch.testing.assert_close(gu(x), F.linear(x, gu.weight, gu.bias), atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("name", ["llama-bias-linearrope", "qwen2-tied"])
def test_torch_compiled_single_token_steps_match_hf(name, monkeypatch):
    """Through the runner's CompiledDecode, one-token extends and batch-1 decodes take the compiled
    regions (counted) and still match transformers; a 2-row decode stays eager."""
    from sgl.executor.compiled_decode import CompiledDecode

    cfg, hf, model, book = build(*CONFIGS[name])
    ours = CompiledDecode(model)
    assert ours.max_rows == 1
    ours.compile()
    calls = []
    original = CompiledDecode.layer_post_attention
    monkeypatch.setattr(CompiledDecode, "layer_post_attention",
                        staticmethod(lambda *a: calls.append(1) or original(*a)))
    gen = torch.Generator().manual_seed(6)
    seqs = [rand_tokens(1, gen), rand_tokens(5, gen)]
    rows = [book.new_request() for _ in seqs]
    torch.testing.assert_close(run(ours, book.extend(rows[:1], seqs[:1])), hf_logits(hf, seqs[0]), atol=ATOL, rtol=0)
    assert len(calls) == cfg.num_hidden_layers
    run(ours, book.extend(rows[1:], seqs[1:]))
    for step in range(3):
        nxt = rand_tokens(2, gen)
        logits = run(ours, book.decode(rows[:1], nxt[:1]))  # batch 1: compiled
        seqs[0].append(nxt[0])
        torch.testing.assert_close(logits, hf_logits(hf, seqs[0])[-1:], atol=ATOL, rtol=0)
        seqs[1].append(nxt[1])
        seqs[0].append(nxt[0])  # batch 2: eager
        logits = run(ours, book.decode(rows, [nxt[0], nxt[1]]))
        ref = torch.stack([hf_logits(hf, s)[-1] for s in seqs])
        torch.testing.assert_close(logits, ref, atol=ATOL, rtol=0)
    assert len(calls) == 4 * cfg.num_hidden_layers


def test_failed_torch_compile_leaves_the_model_eager(monkeypatch, caplog):
    import sgl.executor.compiled_decode as compiled_decode
    from sgl.executor.compiled_decode import CompiledDecode
    from sgl.executor.model_runner import ModelRunner

    def broken(fn):
        def call(*args):
            raise OSError("no C++ compiler")
        return call

    cfg, hf, ours, book = build(*CONFIGS["llama-untied"])
    monkeypatch.setattr(compiled_decode, "compiled", broken)
    with pytest.raises(RuntimeError, match="torch.compile of the single-token path failed: no C\\+\\+ compiler"):
        CompiledDecode(ours).compile()
    with caplog.at_level("WARNING", logger="sgl"):
        runner = ModelRunner(ours, cfg, 64, 2, 32, torch.float32, "cpu", torch_compile=True)
    assert not runner.torch_compiled and runner.compiled_decode is None
    assert "no C++ compiler; serving with the eager model" in caplog.text
    row = book.new_request()
    torch.testing.assert_close(run(ours, book.extend([row], [[3]])), hf_logits(hf, [3]), atol=ATOL, rtol=0)


def test_enable_torch_compile_configures_the_calling_thread():
    """dynamo's config is per thread: an engine's scheduler thread gets the raised recompile limit."""
    import threading

    import torch._dynamo.config as dynamo_config

    from sgl.executor.compiled_decode import CompiledDecode

    cfg, hf, ours, book = build(*CONFIGS["llama-untied"])
    seen = []

    def serve():
        CompiledDecode(ours).compile()
        seen.append(dynamo_config.recompile_limit)

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join()
    assert seen == [64]
