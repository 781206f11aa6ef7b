"""sgl: structured LLM programs on a pure-PyTorch serving runtime.

``sgl.Engine`` is the in-process engine; the frontend language (``function``,
``gen``, ``select``, roles, ...) is re-exported from ``sgl.lang`` when present.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy: importing sgl must stay cheap (no torch/transformers until needed).
    if name == "Engine":
        from sgl.engine.engine import Engine
        return Engine
    raise AttributeError(f"module 'sgl' has no attribute {name!r}")
