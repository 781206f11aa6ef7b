"""The process-wide default backend used by programs run without ``backend=``.

Nothing is loaded until a program first needs a backend: then, if none was
set, the local :class:`~sgl.backends.engine_backend.EngineBackend` is created
with the default engine config (the bundled model).
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Optional, Tuple

_lock = threading.Lock()
_default_backend = None
_wrapped_engines: Dict[int, Tuple[Any, Any]] = {}


def as_backend(obj):
    """Coerce what a user may pass as a backend into a :class:`~sgl.backends.base.Backend`.

    Accepts a Backend, an object with an ``endpoint`` Backend (SGLang's
    ``Runtime`` style), or an ``sgl.Engine`` (wrapped once in an EngineBackend).

    Raises:
        TypeError: anything else.
    """
    from sgl.backends.base import Backend

    if isinstance(obj, Backend):
        return obj
    endpoint = getattr(obj, "endpoint", None)
    if isinstance(endpoint, Backend):
        return endpoint
    if callable(getattr(obj, "generate", None)) and hasattr(obj, "tokenizer"):
        with _lock:
            hit = _wrapped_engines.get(id(obj))
            if hit is None or hit[0] is not obj:
                from sgl.backends.engine_backend import EngineBackend

                hit = (obj, EngineBackend(engine=obj))
                _wrapped_engines[id(obj)] = hit
            return hit[1]
    raise TypeError(f"expected a Backend, a Runtime or an sgl.Engine as backend, got {type(obj).__name__}")


def set_default_backend(backend) -> None:
    """Use ``backend`` (a Backend, Runtime or sgl.Engine) for programs run without ``backend=``."""
    global _default_backend
    b = as_backend(backend)
    with _lock:
        _default_backend = b


def get_default_backend(create: bool = True):
    """The default backend; creates the local engine backend on first use when ``create``."""
    global _default_backend
    with _lock:
        if _default_backend is None and create:
            from sgl.backends.engine_backend import EngineBackend

            _default_backend = EngineBackend()
        return _default_backend


def resolve_backend(backend: Optional[Any]):
    """``backend`` coerced with :func:`as_backend`, or the default one when None."""
    return as_backend(backend) if backend is not None else get_default_backend()
