"""sgl: structured LLM programs on a pure-PyTorch serving runtime.

``sgl.Engine`` is the in-process engine; the frontend language (``function``,
``gen``, ``select``, roles, ...) comes from ``sgl.lang``; ``RuntimeEndpoint``,
``OpenAI`` and ``Runtime`` are the remote backends.
"""

from sgl.core.version import __version__  # noqa: F401

from sgl.lang import *  # noqa: E402,F401,F403  (cheap: no torch/transformers import)
from sgl.lang import __all__ as _lang_all  # noqa: E402

_LAZY = {
    "Engine": ("sgl.engine.engine", "Engine"),
    "EngineBackend": ("sgl.backends.engine_backend", "EngineBackend"),
    "RuntimeEndpoint": ("sgl.backends.runtime_endpoint", "RuntimeEndpoint"),
    "OpenAI": ("sgl.backends.openai_backend", "OpenAI"),
    "Runtime": ("sgl.backends.runtime", "Runtime"),
}

__all__ = ["Engine", "EngineBackend", "RuntimeEndpoint", "OpenAI", "Runtime", *_lang_all]


def __getattr__(name):
    # Lazy: importing sgl stays cheap (no torch/transformers until an engine or backend is used).
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'sgl' has no attribute {name!r}")
