"""Test helpers: a tiny stand-in for the scheduler's KV bookkeeping that
builds EXTEND and DECODE ForwardBatches over real memory pools, plus small
random transformers configs/models used as references."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from sgl.executor.forward_batch import ForwardBatch, ForwardMode
from sgl.executor.memory_pool import ReqToTokenPool, TokenToKVPool


class KVBook:
    """Owns a ReqToTokenPool + TokenToKVPool and tracks each request row's length.

    Free KV slots are shuffled (seeded) so a request's KV is scattered across
    the pool, which exercises the paged gather in the attention backends.
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, kv_size: int = 512,
                 max_reqs: int = 8, max_context_len: int = 256, seed: int = 0,
                 dtype: torch.dtype = torch.float32, device: str = "cpu"):
        self.req_to_token_pool = ReqToTokenPool(max_reqs, max_context_len, device)
        self.token_to_kv_pool = TokenToKVPool(kv_size, num_layers, num_kv_heads, head_dim, dtype, device)
        gen = torch.Generator().manual_seed(seed)
        free = self.token_to_kv_pool.free_slots
        self.token_to_kv_pool.free_slots = free[torch.randperm(free.numel(), generator=gen)]
        self.seq_lens: Dict[int, int] = {}
        self.device = device

    def new_request(self, shared_prefix_from: Optional[int] = None, prefix_len: int = 0) -> int:
        """Allocate a request row. With ``shared_prefix_from``, the new row's first
        ``prefix_len`` positions reuse that row's KV slots (as a prefix cache hit does)."""
        row = self.req_to_token_pool.alloc()
        assert row is not None, "test pool out of request rows"
        self.seq_lens[row] = 0
        if shared_prefix_from is not None and prefix_len:
            slots = self.req_to_token_pool.req_to_token[shared_prefix_from, :prefix_len].clone()
            self.req_to_token_pool.write(row, 0, slots)
            self.seq_lens[row] = prefix_len
        return row

    def extend(self, rows: Sequence[int], new_tokens: Sequence[Sequence[int]]) -> ForwardBatch:
        """EXTEND batch appending ``new_tokens[i]`` to request ``rows[i]``."""
        prefix = [self.seq_lens[r] for r in rows]
        ext = [len(t) for t in new_tokens]
        locs = []
        for r, p, e in zip(rows, prefix, ext):
            slots = self.token_to_kv_pool.alloc(e)
            self.req_to_token_pool.write(r, p, slots)
            locs.append(slots)
            self.seq_lens[r] = p + e
        positions = [torch.arange(p, p + e) for p, e in zip(prefix, ext)]
        return self._batch(ForwardMode.EXTEND, rows, [t for ts in new_tokens for t in ts],
                           torch.cat(positions), torch.cat(locs), prefix, ext)

    def decode(self, rows: Sequence[int], tokens: Sequence[int]) -> ForwardBatch:
        """DECODE batch appending one token to each request."""
        positions = torch.tensor([self.seq_lens[r] for r in rows])
        slots = self.token_to_kv_pool.alloc(len(rows))
        for i, r in enumerate(rows):
            self.req_to_token_pool.write(r, self.seq_lens[r], slots[i:i + 1])
            self.seq_lens[r] += 1
        return self._batch(ForwardMode.DECODE, rows, list(tokens), positions, slots, None, None)

    def _batch(self, mode, rows, input_ids, positions, out_cache_loc, prefix, ext) -> ForwardBatch:
        dev = self.device
        seq = [self.seq_lens[r] for r in rows]
        as_t = lambda xs: torch.tensor(list(xs), dtype=torch.int64, device=dev)  # noqa: E731
        return ForwardBatch(
            forward_mode=mode, input_ids=as_t(input_ids), positions=positions.to(dev),
            req_pool_indices=as_t(rows), req_pool_indices_cpu=tuple(rows), seq_lens=as_t(seq), out_cache_loc=out_cache_loc.to(dev),
            seq_lens_cpu=tuple(seq), req_to_token_pool=self.req_to_token_pool,
            token_to_kv_pool=self.token_to_kv_pool,
            extend_prefix_lens=None if prefix is None else as_t(prefix),
            extend_seq_lens=None if ext is None else as_t(ext),
            extend_prefix_lens_cpu=None if prefix is None else tuple(prefix),
            extend_seq_lens_cpu=None if ext is None else tuple(ext))


def tiny_config(arch: str = "llama", **overrides):
    """A 2-layer, hidden-64, 4-head (2 KV heads), vocab-128 transformers config."""
    from transformers import LlamaConfig, Qwen2Config

    kw = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              rms_norm_eps=1e-6, tie_word_embeddings=False, attn_implementation="eager")
    kw.update(overrides)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    cfg = cls(**kw)
    cfg.architectures = [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]]
    return cfg


def random_hf_model(cfg, seed: int = 0):
    """transformers' own model for ``cfg`` with weights large enough that
    mistakes show (linear ~N(0, 0.1), norms ~1 + N(0, 0.1), biases ~N(0, 0.1))."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.1)
    return model


def hf_logits(model, tokens: List[int]) -> torch.Tensor:
    """float32 logits ``[len(tokens), vocab]`` of ``tokens`` run as one sequence without cache."""
    with torch.no_grad():
        return model(torch.tensor([tokens]), use_cache=False).logits[0].float()
