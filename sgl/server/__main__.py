"""``python -m sgl.server key=value ...``: build an ``sgl.Engine`` and serve it.

A small stand-alone entry (``python -m sgl.launch`` is the full Hydra one).
Keys ``server.host``, ``server.port``, ``server.api_key``,
``server.served_model_name``, ``server.log_requests`` configure the HTTP layer;
every other ``key=value`` is passed to ``sgl.Engine(**overrides)`` with the value
parsed as YAML (``cache=none``, ``max_total_tokens=4096``, ``log_interval=0``).
"""

from __future__ import annotations

import sys

import yaml

USAGE = __doc__


def parse_overrides(argv: list[str]) -> tuple[dict, dict]:
    """Split ``key=value`` tokens into (server settings, engine overrides).

    Raises:
        ValueError: a token without ``=``.
    """
    server, engine = {}, {}
    for token in argv:
        key, sep, raw = token.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {token!r}")
        value = yaml.safe_load(raw) if raw != "" else ""
        if key.startswith("server."):
            server[key[len("server."):]] = value
        else:
            engine[key.lstrip("+")] = value
    return server, engine


def main(argv: list[str] | None = None) -> None:
    """Entry point; see the module docstring."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return
    server, overrides = parse_overrides(argv)
    import sgl
    from sgl.server.serve import serve, setup_logging

    setup_logging()
    engine = sgl.Engine(**overrides)
    try:
        serve(engine, **server)
    finally:
        engine.shutdown()


if __name__ == "__main__":
    main()
