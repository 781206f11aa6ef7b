"""Attention backends over the paged KV pool vs a naive per-request, per-head
reference; the Triton backend vs the torch backend under TRITON_INTERPRET=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from model_utils import KVBook

from sgl.layers.attention import ATTENTION_BACKENDS, make_attention_backend

ATOL = 1e-5
HEAD_DIM = 16


def naive_attention(q, fb, layer_id, num_heads, num_kv_heads, scaling):
    """Loop over requests, new tokens and heads; softmax over visible keys read from the pool."""
    k_buf, v_buf = fb.token_to_kv_pool.get_kv_buffer(layer_id)
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    if fb.forward_mode.is_decode():
        ext, pre = [1] * fb.batch_size, [s - 1 for s in fb.seq_lens_cpu]
    else:
        ext, pre = fb.extend_seq_lens_cpu, fb.extend_prefix_lens_cpu
    t = 0
    for b in range(fb.batch_size):
        slots = fb.req_to_token_pool.req_to_token[fb.req_pool_indices[b], :fb.seq_lens_cpu[b]]
        for i in range(ext[b]):
            visible = slots[:pre[b] + i + 1]
            for h in range(num_heads):
                kk, vv = k_buf[visible, h // group], v_buf[visible, h // group]
                p = torch.softmax((kk @ q[t, h]) * scaling, dim=0)
                out[t, h] = p @ vv
            t += 1
    return out


def attend(backend, fb, layer_id, num_heads, num_kv_heads, gen):
    n = fb.input_ids.numel()
    q = torch.randn(n, num_heads * HEAD_DIM, generator=gen)
    k = torch.randn(n, num_kv_heads * HEAD_DIM, generator=gen)
    v = torch.randn(n, num_kv_heads * HEAD_DIM, generator=gen)
    backend.init_forward_metadata(fb)
    out = backend.forward(q, k, v, layer_id, num_heads, num_kv_heads, HEAD_DIM, HEAD_DIM ** -0.5, fb)
    k_buf, v_buf = fb.token_to_kv_pool.get_kv_buffer(layer_id)
    assert torch.equal(k_buf[fb.out_cache_loc].reshape(n, -1), k)  # new K/V stored first
    assert torch.equal(v_buf[fb.out_cache_loc].reshape(n, -1), v)
    ref = naive_attention(q.view(n, num_heads, HEAD_DIM), fb, layer_id, num_heads, num_kv_heads, HEAD_DIM ** -0.5)
    return out, ref.reshape(n, -1)


def scenario(backend_name, num_heads, num_kv_heads, seed=0, **backend_kw):
    """Yields (out, ref) for: a batched prefill, an extend over cached and shared
    prefixes, batched decode steps with unequal lengths, and batch-1 steps."""
    gen = torch.Generator().manual_seed(seed)
    backend = make_attention_backend(backend_name, **backend_kw)
    book = KVBook(num_layers=2, num_kv_heads=num_kv_heads, head_dim=HEAD_DIM, seed=seed)
    rows = [book.new_request() for _ in range(3)]
    yield attend(backend, book.extend(rows, [[1] * 7, [1] * 2, [1] * 12]), 0, num_heads, num_kv_heads, gen)
    shared = book.new_request(shared_prefix_from=rows[2], prefix_len=9)
    fb = book.extend([rows[0], shared, rows[1]], [[1] * 5, [1] * 4, [1] * 1])
    yield attend(backend, fb, 0, num_heads, num_kv_heads, gen)
    everyone = rows + [shared]
    for step in range(2):
        yield attend(backend, book.decode(everyone, [1] * 4), 0, num_heads, num_kv_heads, gen)
    solo = book.new_request()
    yield attend(backend, book.extend([solo], [[1] * 6]), 1, num_heads, num_kv_heads, gen)  # causal, no prefix
    yield attend(backend, book.extend([solo], [[1] * 3]), 1, num_heads, num_kv_heads, gen)  # prefix, bs 1
    yield attend(backend, book.decode([solo], [1]), 1, num_heads, num_kv_heads, gen)


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 2), (4, 4), (6, 1)])
def test_torch_backend_matches_naive(num_heads, num_kv_heads):
    steps = list(scenario("torch", num_heads, num_kv_heads))
    assert len(steps) == 7
    for out, ref in steps:
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


def test_registry_names_backends():
    assert {"torch", "triton"} <= set(ATTENTION_BACKENDS.names())
    with pytest.raises(ValueError, match="flashinfer"):
        make_attention_backend("flashinfer")


def test_extend_rejects_empty_request():
    book = KVBook(1, 1, HEAD_DIM)
    row = book.new_request()
    fb = book.extend([row, book.new_request()], [[1, 2], []])
    with pytest.raises(ValueError, match="extend_seq_lens"):
        make_attention_backend("torch").init_forward_metadata(fb)


def compare_triton_to_torch(num_heads: int, num_kv_heads: int) -> int:
    """Run the scenario through both backends; returns the number of steps compared.
    Small tiles and splits make the online softmax cross key blocks and decode merge splits."""
    triton_kw = dict(block_m=8, block_n=8, split_tokens=4, max_kv_splits=4)
    steps = 0
    for (out_tr, _), (out_ref, _) in zip(scenario("triton", num_heads, num_kv_heads, seed=4, **triton_kw),
                                         scenario("torch", num_heads, num_kv_heads, seed=4)):
        torch.testing.assert_close(out_tr, out_ref, atol=ATOL, rtol=0)
        steps += 1
    return steps


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 2), (6, 1)])
def test_triton_backend_matches_torch(num_heads, num_kv_heads):
    """Triton kernels vs the torch backend. On CPU they run under Triton's
    interpreter, which must be switched on before triton is first imported,
    hence a fresh interpreter process."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        assert compare_triton_to_torch(num_heads, num_kv_heads) == 7
        return
    here = Path(__file__).resolve().parent
    code = (f"import sys; sys.path[:0] = [{str(here)!r}, {str(here.parent)!r}]\n"
            f"from test_attention import compare_triton_to_torch\n"
            f"print('steps', compare_triton_to_torch({num_heads}, {num_kv_heads}))")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().endswith("steps 7")


def test_triton_backend_refuses_cpu_without_interpreter(monkeypatch):
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        make_attention_backend("triton")
