"""Attention backends over the paged KV pool, chosen by name.

``make_attention_backend("torch")`` gives the PyTorch reference;
``make_attention_backend("triton")`` the Triton kernels (GPU, or CPU under
``TRITON_INTERPRET=1``). Triton is imported only when that backend is made.
"""

from __future__ import annotations

from sgl.layers.attention.base import AttentionBackend
from sgl.core.registry import Registry

ATTENTION_BACKENDS: Registry[AttentionBackend] = Registry("attention backend")


@ATTENTION_BACKENDS.register("torch")
def _make_torch(**kw) -> AttentionBackend:
    from sgl.layers.attention.torch_backend import TorchAttentionBackend
    return TorchAttentionBackend(**kw)


@ATTENTION_BACKENDS.register("triton")
def _make_triton(**kw) -> AttentionBackend:
    from sgl.layers.attention.triton_backend import TritonAttentionBackend
    return TritonAttentionBackend(**kw)


def make_attention_backend(name: str, **kw) -> AttentionBackend:
    """Construct the backend registered as ``name`` with keyword args ``kw``.

    Raises:
        ValueError: for an unknown name (lists the known ones).
    """
    return ATTENTION_BACKENDS.get(name)(**kw)


__all__ = ["AttentionBackend", "ATTENTION_BACKENDS", "make_attention_backend"]
