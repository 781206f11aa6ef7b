"""FastAPI application factory: ``create_app(engine, server_config)``.

The app serves SGLang's native routes (:mod:`sgl.server.native_routes`) and
the OpenAI-compatible ``/v1`` routes (:mod:`sgl.server.openai_completions`,
:mod:`sgl.server.openai_chat`) over one in-process ``sgl.Engine``. It does not
own the engine: whoever built it shuts it down.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from fastapi import FastAPI

from sgl.core.config import ServerConfig
from sgl.server.errors import install_error_handlers
from sgl.server.generation import GenerationService
from sgl.server.metrics import ServerMetrics
from sgl.server.middleware import AccessLogMiddleware, APIKeyMiddleware, JSONContentTypeMiddleware


def _queue_len_fn(engine: Any):
    def queue_len() -> int | None:
        info = engine.get_server_info()
        for key in ("num_waiting_reqs", "num_queue_reqs", "waiting"):
            if key in info:
                return int(info[key])
        stats = info.get("scheduler") or info.get("stats") or {}
        for key in ("num_waiting_reqs", "num_queue_reqs", "waiting"):
            if key in stats:
                return int(stats[key])
        return None
    return queue_len


def create_app(engine: Any, server_config: Any = None) -> FastAPI:
    """Build the FastAPI app for ``engine``.

    Args:
        engine: an ``sgl.Engine`` (needs ``async_generate``, ``abort_request``,
            ``flush_cache``, ``get_model_info``, ``get_server_info``, ``tokenizer``,
            ``context_len``, ``model_path``).
        server_config: a :class:`~sgl.core.config.ServerConfig` (the ``server`` group), a mapping
            or an OmegaConf node of its fields, or None for the defaults.

    Returns:
        The ASGI app; ``app.state`` holds ``engine``, ``generation``, ``metrics``,
        ``server_config`` (with ``served_model_name`` filled in) and ``started_at``.

    Raises:
        ValueError: ``server_config`` has a field ServerConfig does not have, or a wrong type.
    """
    from sgl.server import native_routes, openai_chat, openai_completions

    settings = ServerConfig.from_config(server_config)
    if not settings.served_model_name:  # a copy: the caller's config stays as it was
        settings = dataclasses.replace(settings, served_model_name=str(getattr(engine, "model_path", "default")))
    app = FastAPI(title="sgl server", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = ServerMetrics(queue_len_fn=_queue_len_fn(engine))
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.generation = GenerationService(engine, metrics)
    app.state.server_config = settings
    app.state.started_at = int(time.time())

    install_error_handlers(app)
    app.include_router(native_routes.router)
    app.include_router(openai_completions.router)
    app.include_router(openai_chat.router)

    known_paths = {r.path for router in (native_routes.router, openai_completions.router, openai_chat.router)
                   for r in router.routes}

    def count(path: str, status: int) -> None:
        route = path if path in known_paths else "other"
        metrics.requests.labels(route=route, status=str(status)).inc()

    app.add_middleware(JSONContentTypeMiddleware)
    if settings.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key)
    app.add_middleware(AccessLogMiddleware, log=settings.log_requests, on_finish=count)
    return app
