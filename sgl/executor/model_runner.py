"""ModelRunner: owns the model, its decode fast path and the KV pools, turns a ModelWorkerBatch into
a ForwardBatch, runs the model and returns the logits rows that were asked for. It never sees a ``Req``."""

from __future__ import annotations

import logging
import os
import time

import torch

from sgl.executor.compiled_decode import CompiledDecode
from sgl.executor.forward_batch import ForwardBatch, ForwardMode
from sgl.executor.memory_pool import ReqToTokenPool, TokenToKVPool
from sgl.executor.model_worker_batch import ModelWorkerBatch

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
        torch_compile: run steps of few tokens through :class:`~sgl.executor.compiled_decode.CompiledDecode`
            (SGLang's ``enable_torch_compile``; ~1.5x batch-1 decode on CPU), compiled here (~2 s with a
            warm Inductor cache). If the model lacks the standard decoder layers or compilation fails,
            the runner serves the eager model and logs a warning.

    Attributes:
        model: the eager model.
        compiled_decode: the CompiledDecode wrapper in use, or None (eager).
    """

    def __init__(self, model, hf_config, max_total_tokens: int, max_running_requests: int,
                 context_len: int, dtype: torch.dtype, device: str, torch_compile: bool = False):
        self.model = model
        self.compiled_decode = self._compile(model) if torch_compile else None
        self.device = torch.device(device)
        heads = hf_config.num_attention_heads
        kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
        self.req_to_token_pool = ReqToTokenPool(max_running_requests, context_len + 1, self.device)
        self.token_to_kv_pool = TokenToKVPool(max_total_tokens, hf_config.num_hidden_layers, kv_heads,
                                              head_dim, dtype, self.device)
        logger.info("KV pool: %d tokens, %.1f MiB", max_total_tokens, self.token_to_kv_pool.bytes() / 2**20)

    @staticmethod
    def _compile(model):
        """:class:`CompiledDecode` of ``model``, compiled now; None (with a warning) if it cannot be."""
        if not CompiledDecode.supports(model):
            logger.warning("%s has no standard decoder layers for the compiled decode path; serving eager",
                           type(model).__name__)
            return None
        fast, started = CompiledDecode(model), time.perf_counter()
        try:
            fast.compile()
        except RuntimeError as e:
            logger.warning("%s; serving with the eager model", e)
            return None
        logger.info("torch.compile of the decode path (steps of <= %d tokens): %.1f s", fast.max_rows,
                    time.perf_counter() - started)
        return fast

    @property
    def torch_compiled(self) -> bool:
        """Whether few-token steps run compiled."""
        return self.compiled_decode is not None

    def _tensor(self, values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=self.device)

    def forward_batch(self, batch: ModelWorkerBatch) -> ForwardBatch:
        """The ForwardBatch of ``batch``: its tensors on the runner's device, plus the KV pools."""
        extend = batch.forward_mode.is_extend()
        rows = tuple(batch.req_pool_indices)
        return ForwardBatch(
            forward_mode=batch.forward_mode,
            input_ids=batch.input_ids.to(self.device), positions=batch.positions.to(self.device),
            req_pool_indices=self._tensor(rows), req_pool_indices_cpu=rows,
            seq_lens=self._tensor(batch.seq_lens), seq_lens_cpu=tuple(batch.seq_lens),
            out_cache_loc=batch.out_cache_loc.to(self.device),
            req_to_token_pool=self.req_to_token_pool, token_to_kv_pool=self.token_to_kv_pool,
            extend_prefix_lens=self._tensor(batch.prefix_lens) if extend else None,
            extend_seq_lens=self._tensor(batch.extend_lens) if extend else None,
            extend_prefix_lens_cpu=tuple(batch.prefix_lens) if extend else None,
            extend_seq_lens_cpu=tuple(batch.extend_lens) if extend else None)

    @torch.inference_mode()
    def forward(self, batch: ModelWorkerBatch) -> torch.Tensor:
        """Run one step: the new tokens' K/V go into the pool at ``batch.out_cache_loc``.

        Returns:
            float32 ``[len(batch.logits_rows), vocab]``, the logits of the new tokens
            ``batch.logits_rows`` (for DECODE usually every token, in request order).
        """
        fb = self.forward_batch(batch)
        rows = batch.logits_rows
        all_rows = batch.forward_mode is ForwardMode.DECODE and rows == tuple(range(fb.input_ids.numel()))
        return self._run_model(fb, None if all_rows else self._tensor(rows))

    def _run_model(self, fb: ForwardBatch, logits_rows) -> torch.Tensor:
        """The model (or its compiled decode path) on ``fb``; logits of the new tokens ``logits_rows``
        (int64 ``[m]``, None = all)."""
        model = self.compiled_decode or self.model
        hidden = model.forward(fb)
        return model.compute_logits(hidden if logits_rows is None else hidden[logits_rows])
