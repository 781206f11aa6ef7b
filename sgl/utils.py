"""Helpers for starting and stopping a server from notebooks, scripts and tests.

Used as in SGLang's documentation::

    from sgl.utils import launch_server_cmd, wait_for_server, terminate_process

    proc, port = launch_server_cmd("python -m sgl.launch server.host=127.0.0.1")
    wait_for_server(f"http://127.0.0.1:{port}")
    ...
    terminate_process(proc)
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from typing import IO

import requests

_HYDRA_PORT = re.compile(r"(?:^|\s)\+*server\.port=(\d+)(?=\s|$)")
_FLAG_PORT = re.compile(r"(?:^|\s)--port(?:=|\s+)(\d+)(?=\s|$)")


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def launch_server_cmd(command: str, host: str = "127.0.0.1", port: int | None = None,
                      stdout: IO | int | None = None, stderr: IO | int | None = None,
                      env: dict | None = None) -> tuple[subprocess.Popen, int]:
    """Start a server command in a child process and return ``(process, port)``.

    The command is a shell-like string such as ``"python -m sgl.launch model=... "``
    or ``"python -m sgl.server cache=none"`` (Hydra-style ``key=value``
    overrides), or an argparse-style one using ``--port``. If it names a port
    (``server.port=N`` / ``--port N``) that port is returned; otherwise ``port``
    (or a free loopback port) is appended in the command's own style. A leading
    ``python`` is replaced by the running interpreter, so the child uses the same
    virtual environment.

    The child runs in its own process group, so :func:`terminate_process` stops
    it together with anything it spawned. Its output goes to ``stdout``/``stderr``
    (inherited by default).

    Raises:
        ValueError: an empty command.
    """
    args = shlex.split(command)
    if not args:
        raise ValueError("command: empty")
    if args[0] in ("python", "python3"):
        args[0] = sys.executable
    found = _HYDRA_PORT.search(command) or _FLAG_PORT.search(command)
    if found:
        port = int(found.group(1))
    else:
        port = port or find_free_port(host)
        argparse_style = any(a.startswith("--") for a in args[1:])
        args += ["--port", str(port)] if argparse_style else [f"server.port={port}"]
    process = subprocess.Popen(args, stdout=stdout, stderr=stderr, env=env, start_new_session=True)
    return process, port


def wait_for_server(base_url: str, timeout: float | None = None, api_key: str | None = None,
                    process: subprocess.Popen | None = None, interval: float = 0.5) -> None:
    """Block until ``GET {base_url}/health`` answers 200.

    Args:
        base_url: e.g. ``"http://127.0.0.1:30000"``.
        timeout: seconds to wait (None = forever).
        api_key: sent as a Bearer token (``/health`` does not need it; harmless).
        process: if given, fail fast when it exits before the server is up.

    Raises:
        TimeoutError: not up within ``timeout`` seconds.
        RuntimeError: ``process`` exited first (its return code is in the message).
    """
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    start = time.monotonic()
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server process exited with code {process.returncode} before it was ready")
        try:
            if requests.get(f"{base_url.rstrip('/')}/health", headers=headers, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"server at {base_url} not ready after {timeout:.0f} s")
        time.sleep(interval)


def terminate_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a process started by :func:`launch_server_cmd` and everything in its group.

    Sends SIGTERM to the group, waits up to ``timeout`` seconds, then SIGKILLs it.
    Safe to call twice.
    """
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=timeout)
