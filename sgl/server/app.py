"""FastAPI application factory: ``create_app(engine, server_config)``.

The app serves SGLang's native routes (:mod:`sgl.server.native_routes`) and
the OpenAI-compatible ``/v1`` routes (:mod:`sgl.server.openai_completions`,
:mod:`sgl.server.openai_chat`) over one in-process ``sgl.Engine``. It does not
own the engine: whoever built it shuts it down.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, Mapping

from fastapi import FastAPI

from sgl.server.errors import install_error_handlers
from sgl.server.generation import GenerationService
from sgl.server.metrics import ServerMetrics
from sgl.server.middleware import AccessLogMiddleware, APIKeyMiddleware, JSONContentTypeMiddleware


@dataclass
class ServerSettings:
    """Settings of the HTTP layer (Hydra group ``server``).

    Attributes:
        host: interface to bind; loopback unless told otherwise.
        port: TCP port.
        api_key: when set, every route except ``/health`` needs ``Authorization: Bearer <api_key>``.
        served_model_name: model id reported by ``/v1/models`` and in responses;
            defaults to the engine's ``model_path``.
        log_requests: write one access-log line per request.
    """

    host: str = "127.0.0.1"
    port: int = 30000
    api_key: str | None = None
    served_model_name: str | None = None
    log_requests: bool = True

    @classmethod
    def from_config(cls, config: Any) -> "ServerSettings":
        """Build from a ServerSettings, another dataclass (``sgl.core.config.ServerConfig``), a mapping
        or an OmegaConf node; unknown keys are ignored."""
        if isinstance(config, cls):
            return config
        if config is None:
            return cls()
        if is_dataclass(config) and not isinstance(config, type):
            config = asdict(config)  # e.g. sgl.core.config.ServerConfig
        elif not isinstance(config, Mapping):
            try:
                from omegaconf import OmegaConf
                config = OmegaConf.to_container(config, resolve=True)
            except Exception as exc:  # noqa: BLE001
                raise ValueError(f"server_config: expected a mapping, got {type(config).__name__}") from exc
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(config).items() if k in names})

    def public_dict(self) -> dict:
        """The settings with the API key redacted."""
        out = asdict(self)
        out["api_key"] = "***" if self.api_key else None
        return out


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
        server_config: :class:`ServerSettings`, a mapping, or an OmegaConf node with its fields.

    Returns:
        The ASGI app; ``app.state`` holds ``engine``, ``generation``, ``metrics``,
        ``server_settings`` and ``started_at``.
    """
    from sgl.server import native_routes, openai_chat, openai_completions

    settings = ServerSettings.from_config(server_config)
    if not settings.served_model_name:
        settings.served_model_name = str(getattr(engine, "model_path", "default"))
    app = FastAPI(title="sgl server", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = ServerMetrics(queue_len_fn=_queue_len_fn(engine))
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.generation = GenerationService(engine, metrics)
    app.state.server_settings = settings
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
