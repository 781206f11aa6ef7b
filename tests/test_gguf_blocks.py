"""GGUF blocks as block-affine int8 weights: our unpacking of Q4_0/Q4_1/Q8_0
equals gguf-py's dequantization bit for bit, the q/k row permutation is undone,
and a model whose linears carry block weights still matches transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_utils import KVBook, hf_logits, random_hf_model, tiny_config

from sgl.executor.compiled_decode import CompiledDecode
from sgl.layers.attention import make_attention_backend
from sgl.models.gguf_blocks import BlockWeight, decode_blocks, load_block_weights, save_block_weights, unpermute_index
from sgl.models.loader import attach_block_weights
from sgl.models.registry import get_model_class

gguf = pytest.importorskip("gguf")


def quantize(w: torch.Tensor, type_name: str) -> np.ndarray:
    return gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType[type_name])


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q8_0"])
def test_decoded_blocks_equal_gguf_dequantize(type_name):
    w = torch.randn(48, 96, generator=torch.Generator().manual_seed(0))
    raw = quantize(w, type_name)
    block = decode_blocks(raw, type_name, 96)
    ref = torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[type_name]))
    assert block.shape == (48, 96) and block.codes.dtype == torch.int8 and block.scales.shape == (48, 3)
    assert (block.mins is None) == (type_name != "Q4_1")
    assert torch.equal(block.dequantize(), ref)
    lo, hi = {"Q4_0": (-8, 7), "Q4_1": (0, 15), "Q8_0": (-127, 127)}[type_name]
    assert lo <= int(block.codes.min()) and int(block.codes.max()) <= hi


def test_unsupported_types_and_shapes_are_not_decoded():
    assert decode_blocks(np.zeros((4, 144), np.uint8), "Q4_K", 256) is None
    assert decode_blocks(np.zeros((4, 40), np.uint8), "Q4_1", 48) is None  # 48 columns: not whole blocks


def test_unpermute_index_undoes_llama_cpp_permute():
    def permute(w, n_head):  # llama.cpp convert_hf_to_gguf.py
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = torch.arange(24 * 3).view(24, 3)
    for n_head in (2, 3, 6):
        assert torch.equal(permute(w, n_head)[unpermute_index(24, n_head)], w)


def test_block_file_round_trip(tmp_path):
    blocks = {"a.weight": BlockWeight(torch.ones(2, 32, dtype=torch.int8), torch.full((2, 1), 0.5)),
              "b.weight": BlockWeight(torch.zeros(1, 64, dtype=torch.int8), torch.ones(1, 2), torch.ones(1, 2))}
    save_block_weights(blocks, tmp_path / "blocks.safetensors")
    loaded = dict(load_block_weights(tmp_path / "blocks.safetensors"))
    assert sorted(loaded) == ["a.weight", "b.weight"] and loaded["a.weight"].mins is None
    assert torch.equal(loaded["b.weight"].dequantize(), torch.ones(1, 64))


@pytest.mark.parametrize("arch,mlp_type", [("llama", "Q4_1"), ("qwen2", "Q8_0")])
def test_model_with_block_weights_matches_hf(arch, mlp_type):
    """Every linear weight is quantized (q/k/v Q4_1, MLP ``mlp_type``, head Q4_0), the HF model
    gets the dequantized weights; our 1- and 2-token steps read the blocks (the layers' float32
    copies are zeroed to prove it) and agree."""
    from sgl.layers.linear import Linear

    cfg = tiny_config(arch, hidden_size=64, intermediate_size=128)
    hf = random_hf_model(cfg)
    state = hf.state_dict()
    blocks = {}
    for name, w in state.items():
        if w.dim() == 2 and (name.endswith("_proj.weight") or name == "lm_head.weight"):
            kind = "Q4_0" if name == "lm_head.weight" else mlp_type if ".mlp." in name else "Q4_1"
            blocks[name] = decode_blocks(quantize(w, kind), kind, w.shape[1])
            state[name] = blocks[name].dequantize()
    hf.load_state_dict(state)
    model = get_model_class(cfg.architectures)(cfg, make_attention_backend("torch")).eval()
    model.load_weights(state.items())
    assert attach_block_weights(model, blocks.items()) == 2 * 4 + 1
    assert model.model.layers[0].self_attn.qkv_proj.block_weight[0].shape == (128, 64)
    ours = CompiledDecode(model)
    ours.compile()
    assert ours.max_rows == 2
    for module in model.model.modules():  # the layers' float32 copies (the head keeps its own: 2 rows are eager)
        if isinstance(module, Linear):
            module.weight.data.zero_()
    book = KVBook(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads)
    a, b = [5, 9, 77, 3], [11, 12, 13]
    rows = [book.new_request(), book.new_request()]
    with torch.no_grad():
        la = [ours.compute_logits(ours(book.extend(rows[:1], [a[:1]])))]  # 1 token
        lb = [ours.compute_logits(ours(book.extend(rows[1:], [b[:2]])))]  # 2 tokens
        for i in (1, 2):  # two-row decodes
            both = ours.compute_logits(ours(book.decode(rows, [a[i], b[i + 1] if i + 1 < 3 else 1])))
            la.append(both[:1])
            lb.append(both[1:])
        la.append(ours.compute_logits(ours(book.decode(rows[:1], [a[3]]))))  # 1 row again
    torch.testing.assert_close(torch.cat(la), hf_logits(hf, a), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cat(lb), hf_logits(hf, b + [1]), atol=1e-4, rtol=0)


def test_mismatched_shards_keep_float32():
    cfg = tiny_config("llama")
    ours = get_model_class(cfg.architectures)(cfg, make_attention_backend("torch"))
    q = BlockWeight(torch.zeros(64, 64, dtype=torch.int8), torch.ones(64, 2))
    k16 = BlockWeight(torch.zeros(32, 64, dtype=torch.int8), torch.ones(32, 4))  # 16-wide blocks
    layer = ours.model.layers[0].self_attn.qkv_proj
    assert attach_block_weights(ours, [("model.layers.0.self_attn.q_proj.weight", q)]) == 0  # k, v missing
    assert not layer.set_block_weight({"q": q, "k": k16, "v": k16})
    assert layer.block_weight is None and layer.gemv_weight is layer.weight
