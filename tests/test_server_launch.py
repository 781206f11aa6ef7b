"""``sgl.utils`` launch helpers, and serve mode of ``python -m sgl.launch`` end to end."""

from __future__ import annotations

import os
import signal
import subprocess

import openai
import pytest
import requests

from sgl.core.config import argv_to_overrides as to_overrides
from sgl.utils import find_free_port, launch_server_cmd, terminate_process, wait_for_server

SLEEPER = "python -c 'import time; time.sleep(120)'"


@pytest.mark.parametrize("suffix,style", [("", "hydra"), (" --verbose", "flag")])
def test_launch_appends_a_free_port_in_the_commands_style(suffix, style):
    proc, port = launch_server_cmd(SLEEPER + suffix)
    try:
        assert 1024 < port < 65536
        expected = [f"server.port={port}"] if style == "hydra" else ["--port", str(port)]
        assert proc.args[-len(expected):] == expected
        assert proc.args[0] == __import__("sys").executable
    finally:
        terminate_process(proc)
    assert proc.poll() is not None


def test_launch_keeps_an_explicit_port_and_terminate_kills_the_group():
    port = find_free_port()
    proc, got = launch_server_cmd(SLEEPER + f" server.port={port}")
    try:
        assert got == port and proc.args.count(f"server.port={port}") == 1
        assert os.getpgid(proc.pid) == proc.pid  # its own process group
    finally:
        terminate_process(proc)
        terminate_process(proc)  # idempotent
    assert proc.returncode == -signal.SIGTERM


def test_wait_for_server_fails_fast_when_the_process_dies():
    proc = subprocess.Popen(["python3", "-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="exited with code 3"):
        wait_for_server(f"http://127.0.0.1:{find_free_port()}", timeout=30, process=proc)
    with pytest.raises(TimeoutError):
        wait_for_server(f"http://127.0.0.1:{find_free_port()}", timeout=1)


def test_module_entry_maps_engine_keywords_to_overrides():
    assert to_overrides(["cache=none", "server.port=31000", "max_total_tokens=4096"]) == [
        "cache=none", "server.port=31000", "++scheduler.max_total_tokens=4096"]
    with pytest.raises(ValueError, match="key=value"):
        to_overrides(["oops"])
    with pytest.raises(ValueError, match="unknown engine option"):
        to_overrides(["no_such_field=1"])


@pytest.mark.slow
def test_sgl_launch_serve_mode():
    proc, port = launch_server_cmd("python -m sgl.launch scheduler.max_total_tokens=4096 scheduler.log_interval=0 "
                                   "server.api_key=t0ken", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_server(url, timeout=300, process=proc)
        client = openai.OpenAI(base_url=url + "/v1", api_key="t0ken", max_retries=0)
        res = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
        assert res.usage.completion_tokens == 3
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        res = requests.get(url + "/get_server_info", headers={"Authorization": "Bearer t0ken"}, timeout=30)
        info = res.json()
        assert info["max_total_num_tokens"] == 4096 and info["server"]["port"] == port
        assert "t0ken" not in res.text and info["config"]["server"]["api_key"] == "***"
    finally:
        terminate_process(proc)
    assert proc.returncode is not None
