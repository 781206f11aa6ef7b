"""ModelRunner: owns the model and the KV pools, turns scheduled requests into
a ForwardBatch, runs the model and returns the logits rows that were asked for."""

from __future__ import annotations

import logging
import os
from typing import List, Sequence

import torch

from sgl.executor.forward_batch import ForwardBatch, ForwardMode
from sgl.executor.memory_pool import ReqToTokenPool, TokenToKVPool
from sgl.engine.req import Req

logger = logging.getLogger("sgl")


def kv_bytes_per_token(hf_config, dtype: torch.dtype) -> int:
    """K+V bytes of one token over all layers: ``2 * layers * kv_heads * head_dim * itemsize``."""
    heads = hf_config.num_attention_heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return 2 * hf_config.num_hidden_layers * kv_heads * head_dim * itemsize


def profile_max_total_tokens(hf_config, dtype: torch.dtype, mem_fraction: float, cap: int) -> int:
    """KV pool size in tokens: ``mem_fraction`` of physical memory divided by the bytes per token,
    capped at ``cap`` tokens (max running requests x context length)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
    return max(1, min(cap, int(total * mem_fraction) // kv_bytes_per_token(hf_config, dtype)))


class ModelRunner:
    """Runs one model step.

    Args:
        model: an sgl model (``forward(ForwardBatch) -> hidden [n, hidden]``,
            ``compute_logits(hidden [m, hidden]) -> float32 [m, vocab]``).
        hf_config: the model's transformers config.
        max_total_tokens: KV pool size in tokens.
        max_running_requests: rows of the ReqToTokenPool.
        context_len: max tokens per request.
    """

    def __init__(self, model, hf_config, max_total_tokens: int, max_running_requests: int,
                 context_len: int, dtype: torch.dtype, device: str):
        self.model = model
        self.device = torch.device(device)
        heads = hf_config.num_attention_heads
        kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
        self.req_to_token_pool = ReqToTokenPool(max_running_requests, context_len + 1, self.device)
        self.token_to_kv_pool = TokenToKVPool(max_total_tokens, hf_config.num_hidden_layers, kv_heads,
                                              head_dim, dtype, self.device)
        logger.info("KV pool: %d tokens, %.1f MiB", max_total_tokens, self.token_to_kv_pool.bytes() / 2**20)

    def _tensor(self, values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=self.device)

    @torch.inference_mode()
    def forward_extend(self, reqs: Sequence[Req], extend_lens: Sequence[int], out_cache_loc: torch.Tensor,
                       logits_rows: List[int]) -> torch.Tensor:
        """Extend each request by ``extend_lens[i]`` tokens of its fill_ids from ``req.kv_len``.

        The ReqToTokenPool rows must already map positions ``[0, kv_len + ext)``.
        ``logits_rows`` index the flattened new tokens (``sum(extend_lens)``).

        Returns:
            float32 ``[len(logits_rows), vocab]``.
        """
        input_ids, positions = [], []
        for r, ext in zip(reqs, extend_lens):
            input_ids.extend(r.fill_ids[r.kv_len:r.kv_len + ext])
            positions.extend(range(r.kv_len, r.kv_len + ext))
        prefix_lens = tuple(r.kv_len for r in reqs)
        seq_lens = tuple(p + e for p, e in zip(prefix_lens, extend_lens))
        rows = tuple(r.req_pool_idx for r in reqs)
        fb = ForwardBatch(
            forward_mode=ForwardMode.EXTEND,
            input_ids=self._tensor(input_ids), positions=self._tensor(positions),
            req_pool_indices=self._tensor(rows), req_pool_indices_cpu=rows,
            seq_lens=self._tensor(seq_lens), out_cache_loc=out_cache_loc, seq_lens_cpu=seq_lens,
            req_to_token_pool=self.req_to_token_pool, token_to_kv_pool=self.token_to_kv_pool,
            extend_prefix_lens=self._tensor(prefix_lens), extend_seq_lens=self._tensor(list(extend_lens)),
            extend_prefix_lens_cpu=prefix_lens, extend_seq_lens_cpu=tuple(extend_lens))
        hidden = self.model.forward(fb)
        return self.model.compute_logits(hidden[self._tensor(logits_rows)])

    @torch.inference_mode()
    def forward_decode(self, reqs: Sequence[Req], out_cache_loc: torch.Tensor) -> torch.Tensor:
        """One token per request (its last output token, at position ``kv_len``).

        Returns:
            float32 ``[len(reqs), vocab]``.
        """
        seq_lens = tuple(r.kv_len + 1 for r in reqs)
        rows = tuple(r.req_pool_idx for r in reqs)
        fb = ForwardBatch(
            forward_mode=ForwardMode.DECODE,
            input_ids=self._tensor([r.output_ids[-1] for r in reqs]),
            positions=self._tensor([r.kv_len for r in reqs]),
            req_pool_indices=self._tensor(rows), req_pool_indices_cpu=rows,
            seq_lens=self._tensor(seq_lens), out_cache_loc=out_cache_loc, seq_lens_cpu=seq_lens,
            req_to_token_pool=self.req_to_token_pool, token_to_kv_pool=self.token_to_kv_pool)
        return self.model.compute_logits(self.model.forward(fb))
