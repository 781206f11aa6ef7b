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


def to_overrides(argv: list[str]) -> list[str]:
    """Hydra overrides for the tokens of ``argv`` (see the module docstring).

    Raises:
        ValueError: a token that is not ``key=value``, or an unknown bare field name.
    """
    import yaml

    from sgl.config import GROUPS, kwargs_to_overrides

    out: list[str] = []
    for token in argv:
        key, sep, raw = token.partition("=")
        bare = key.lstrip("+~")
        if not sep or not bare:
            raise ValueError(f"expected key=value, got {token!r}")
        if "." in bare or bare in GROUPS or bare == "experiment" or key != bare:
            out.append(token)
        else:
            out.extend(kwargs_to_overrides({bare: yaml.safe_load(raw) if raw else ""}))
    return out


def main(argv: list[str] | None = None) -> None:
    """Entry point; see the module docstring."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return
    from sgl.config import compose_config
    from sgl.launch import serve
    from sgl.server.serve import setup_logging

    setup_logging()
    serve(compose_config(to_overrides(argv)))


if __name__ == "__main__":
    main()
