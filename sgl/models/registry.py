"""Model architectures by the names found in ``config.json`` ``architectures``."""

from __future__ import annotations

from typing import Sequence, Type

from torch import nn

from sgl.models.llama import LlamaForCausalLM
from sgl.models.qwen2 import Qwen2ForCausalLM
from sgl.core.registry import Registry

MODELS: Registry[nn.Module] = Registry("model architecture")
MODELS.register("LlamaForCausalLM")(LlamaForCausalLM)
MODELS.register("Qwen2ForCausalLM")(Qwen2ForCausalLM)


def get_model_class(architectures: Sequence[str]) -> Type[nn.Module]:
    """First of ``architectures`` (from ``config.json``) that we implement.

    Raises:
        ValueError: when none is supported; the message names them and the
            supported ones.
    """
    for arch in architectures or ():
        if arch in MODELS.names():
            return MODELS.get(arch)
    raise ValueError(f"unsupported model architectures {list(architectures or [])}; "
                     f"supported: {MODELS.names()}")
