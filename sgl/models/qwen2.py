"""Qwen2 decoder (Qwen Team, 2024): the Llama architecture with a bias on the
q/k/v projections and none on ``o_proj``; everything else is shared with
:mod:`sgl.models.llama`."""

from __future__ import annotations

from typing import Tuple

from sgl.layers.attention.base import AttentionBackend
from sgl.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2 causal LM; same API as :class:`~sgl.models.llama.LlamaForCausalLM`.

    Raises:
        ValueError: when the config enables sliding-window attention
            (``use_sliding_window``), which this implementation does not do.
    """

    def __init__(self, hf_config, attn_backend: AttentionBackend):
        if getattr(hf_config, "use_sliding_window", False):
            raise ValueError("Qwen2 config has use_sliding_window=True; sliding-window attention is not supported")
        super().__init__(hf_config, attn_backend)

    @staticmethod
    def attention_biases(hf_config) -> Tuple[bool, bool]:
        """Qwen2 always has q/k/v biases and no o_proj bias."""
        return True, False
