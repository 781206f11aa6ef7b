"""Run the HTTP server for an engine with uvicorn: ``serve(engine, host, port, api_key)``."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import uvicorn

from sgl.core.config import ServerConfig
from sgl.server.app import create_app

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
        **settings: other :class:`~sgl.core.config.ServerConfig` fields
            (``served_model_name``, ``log_requests``).

    Raises:
        ValueError: a keyword that is not a ServerConfig field.
    """
    setup_logging()
    config = ServerConfig.from_config({**settings, "host": host, "port": int(port), "api_key": api_key})
    app = create_app(engine, config)
    logger.info("Serving %s on http://%s:%d (api_key %s)", app.state.server_config.served_model_name, host,
                int(port), "required" if api_key else "off")
    uvicorn.run(app, host=host, port=int(port), log_level="info", access_log=False,
                timeout_graceful_shutdown=5, timeout_keep_alive=30)


def serve_config(cfg) -> None:
    """Build an ``sgl.Engine`` from a composed :class:`~sgl.core.config.EngineConfig`, serve it on
    ``cfg.server.host:port`` until SIGINT/SIGTERM, then shut the engine down (``python -m sgl.launch``
    and ``python -m sgl.server``)."""
    from sgl.engine.engine import Engine

    engine = Engine(config=cfg)
    try:
        serve(engine, **dataclasses.asdict(cfg.server))
    finally:
        engine.shutdown()


class BackgroundServer:
    """Serve an engine from a daemon thread of this process (tests, notebooks).

    A real uvicorn server on ``host:port``; the engine is shared with the
    caller, so in-process and HTTP requests see the same caches. Use as a
    context manager or call :meth:`start` / :meth:`stop`.

    Args:
        engine: an ``sgl.Engine`` (not shut down by :meth:`stop`).
        host: interface to bind.
        port: TCP port; None picks a free one.
        api_key: optional Bearer token (see :func:`serve`).
        **settings: other :class:`~sgl.core.config.ServerConfig` fields.
    """

    def __init__(self, engine: Any, host: str = "127.0.0.1", port: int | None = None,
                 api_key: str | None = None, **settings: Any) -> None:
        import threading

        from sgl.utils import find_free_port

        self.host = host
        self.port = int(port) if port else find_free_port(host)
        config = ServerConfig.from_config({**settings, "host": host, "port": self.port, "api_key": api_key})
        self.app = create_app(engine, config)
        self._server = uvicorn.Server(uvicorn.Config(self.app, host=host, port=self.port, log_level="warning",
                                                     access_log=False, timeout_graceful_shutdown=2))
        self._thread = threading.Thread(target=self._server.run, name=f"sgl-http-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:30000``."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        """Start serving; returns once the socket accepts connections.

        Raises:
            TimeoutError: not started within ``timeout`` seconds.
        """
        import time

        setup_logging()
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise TimeoutError(f"HTTP server on {self.url} did not start")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit and wait for the thread."""
        self._server.should_exit = True
        self._thread.join(timeout=timeout)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
