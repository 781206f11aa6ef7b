"""``python -m sgl.server key=value ...``: compose the config, build an ``sgl.Engine``, serve it.

A light twin of ``python -m sgl.launch`` (same config and overrides, no Hydra
app: no output directories, no ``+experiment``). Each token is either a Hydra
override (``cache=none``, ``scheduler.max_total_tokens=4096``,
``server.port=30010``, ``server.api_key=secret``) or an ``sgl.Engine`` keyword
with a bare field name (``max_total_tokens=4096``, ``log_interval=0``), whose
value is parsed as YAML.
"""

from __future__ import annotations

import sys

USAGE = __doc__


def main(argv: list[str] | None = None) -> None:
    """Entry point; see the module docstring."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return
    from sgl.core.config import argv_to_overrides, compose_config
    from sgl.server.serve import serve_config, setup_logging

    setup_logging()
    serve_config(compose_config(argv_to_overrides(argv)))


if __name__ == "__main__":
    main()
