"""``Runtime``: start an sgl server in a child process for a program, and stop it afterwards.

Like SGLang's ``sgl.Runtime``::

    runtime = Runtime(max_total_tokens=8192)      # engine options, as sgl.Engine(**kwargs)
    sgl.set_default_backend(runtime)              # uses runtime.endpoint
    ...
    runtime.shutdown()                            # also runs at interpreter exit

The child runs ``python -m sgl.server`` (the config of ``python -m sgl.launch``)
on a free loopback port; ``shutdown`` stops its whole process group.
"""

from __future__ import annotations

import atexit
import json
import logging
import subprocess
import tempfile
from typing import Any, Dict, List, Optional, Union

from sgl.backends.runtime_endpoint import RuntimeEndpoint
from sgl.utils import launch_server_cmd, terminate_process, wait_for_server

logger = logging.getLogger(__name__)


def _override_token(key: str, value: Any) -> str:
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = repr(value)
    else:
        text = json.dumps(str(value))
    return f"{key}={text}"


class Runtime:
    """A server child process plus a :class:`RuntimeEndpoint` talking to it.

    Args:
        *overrides: Hydra-style tokens for the server (``"cache=none"``, ``"scheduler.policy=fcfs"``).
        host: interface to bind (loopback by default).
        port: TCP port; None picks a free one.
        api_key: Bearer key the server requires (the endpoint sends it).
        launch_timeout: seconds to wait for the server to be ready.
        log_level: ``"error"`` keeps the child's output out of the console (it is shown if
            startup fails); anything else lets it through.
        **engine_kwargs: ``sgl.Engine`` options (``max_total_tokens=8192``, ``log_interval=0``).

    Raises:
        ValueError: an unknown option or bad value (checked before anything starts).
        RuntimeError: the server process died while starting (its output tail is in the message).
        TimeoutError: it did not become ready in ``launch_timeout`` seconds.
    """

    def __init__(self, *overrides: str, host: str = "127.0.0.1", port: Optional[int] = None,
                 api_key: Optional[str] = None, launch_timeout: float = 300.0, log_level: str = "error",
                 **engine_kwargs: Any):
        import shlex

        tokens: List[str] = [*overrides, f"server.host={host}"]
        if api_key:
            tokens.append(_override_token("server.api_key", api_key))
        tokens += [_override_token(k, v) for k, v in engine_kwargs.items()]
        from sgl.core.config import argv_to_overrides, compose_config

        compose_config(argv_to_overrides(tokens))  # bad options raise ValueError here, not in the child
        command = "python -m sgl.server " + " ".join(shlex.quote(t) for t in tokens)
        self._log = tempfile.TemporaryFile() if log_level == "error" else None
        self.process, self.port = launch_server_cmd(command, host=host, port=port, stdout=self._log,
                                                    stderr=subprocess.STDOUT if self._log else None)
        self.url = f"http://{host}:{self.port}"
        self.generate_url = self.url + "/generate"
        atexit.register(self.shutdown)
        try:
            wait_for_server(self.url, timeout=launch_timeout, process=self.process)
        except (RuntimeError, TimeoutError) as e:
            tail = self._log_tail()
            self.shutdown()
            raise type(e)(f"{e}{tail}") from e
        except BaseException:
            self.shutdown()
            raise
        self.endpoint = RuntimeEndpoint(self.url, api_key=api_key)

    def _log_tail(self, n_chars: int = 3000) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        text = self._log.read().decode("utf-8", "replace")[-n_chars:]
        return f"\n--- server output (tail) ---\n{text}" if text else ""

    # -- lifecycle ---------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop the server process (idempotent)."""
        process = getattr(self, "process", None)
        if process is not None:
            terminate_process(process)
            self.process = None
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()
            self._log = None

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def __del__(self) -> None:
        try:
            self.shutdown()
        except Exception:  # noqa: BLE001 - interpreter teardown
            pass

    # -- conveniences (SGLang's Runtime API) ------------------------------------------------------
    def cache_prefix(self, prefix: str) -> None:
        self.endpoint.cache_prefix(prefix)

    def get_tokenizer(self):
        """The server model's tokenizer, loaded from its ``tokenizer_path``."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.endpoint.model_info["tokenizer_path"])

    def get_server_info(self) -> Dict[str, Any]:
        return self.endpoint.get_server_info()

    def generate(self, prompt: Union[str, List[str]], sampling_params: Optional[Dict] = None,
                 return_logprob: bool = False, logprob_start_len: Optional[int] = None,
                 top_logprobs_num: Optional[int] = None) -> Union[Dict[str, Any], List[Dict[str, Any]]]:
        """``POST /generate``; returns the parsed JSON (SGLang's returns it as a JSON string)."""
        data = {"text": prompt, "sampling_params": sampling_params or {}, "return_logprob": return_logprob,
                "logprob_start_len": logprob_start_len, "top_logprobs_num": top_logprobs_num}
        return self.endpoint.raw_generate(data)
