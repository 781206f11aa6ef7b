"""Run the HTTP server for an engine with uvicorn: ``serve(engine, host, port, api_key)``."""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

from sgl.server.app import ServerSettings, create_app

logger = logging.getLogger(__name__)

LOG_FORMAT = "[%(asctime)s] %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    """SGLang-like log lines (``[time] message``) on stderr, unless logging is configured already."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
    logging.getLogger("sgl").setLevel(level)


def serve(engine: Any, host: str = "127.0.0.1", port: int = 30000, api_key: str | None = None,
          **settings: Any) -> None:
    """Serve ``engine`` over HTTP until SIGINT/SIGTERM; blocks.

    Args:
        engine: an ``sgl.Engine``; not shut down here (its owner does that).
        host: interface to bind (loopback by default; ``0.0.0.0`` to expose).
        port: TCP port.
        api_key: optional Bearer token required on every route except ``/health``.
        **settings: other :class:`~sgl.server.app.ServerSettings` fields
            (``served_model_name``, ``log_requests``).
    """
    setup_logging()
    config = ServerSettings.from_config({**settings, "host": host, "port": int(port), "api_key": api_key})
    app = create_app(engine, config)
    logger.info("Serving %s on http://%s:%d (api_key %s)", config.served_model_name, host, int(port),
                "required" if api_key else "off")
    uvicorn.run(app, host=host, port=int(port), log_level="info", access_log=False,
                timeout_graceful_shutdown=5, timeout_keep_alive=30)
