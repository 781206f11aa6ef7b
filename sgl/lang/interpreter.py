"""The interpreter: executes a program's expressions in a worker thread.

Each program state owns a :class:`StreamExecutor`.  ``s += expr`` only
*submits* ``expr`` to the executor's queue and returns at once; a worker
thread executes the queue in order against the backend.  Reading a variable
(``s["x"]``) blocks until the expression that sets it has run.  Because
submission is asynchronous, forks (``s.fork(n)``) and batched programs issue
their model calls concurrently and the engine batches them.

After an error in the worker, the executor records it (``error()``), releases
every waiter, and skips the rest of its queue; reading a variable that was
never produced raises a ``RuntimeError`` chained to the original error.

Design follows SGLang's ``StreamExecutor`` (python/sglang/lang/interpreter.py).
"""

from __future__ import annotations

import base64
import queue
import threading
import uuid
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from sgl.lang.ir import (
    SglCommitLazy,
    SglConcateAndAppend,
    SglConstantText,
    SglExpr,
    SglExprList,
    SglGen,
    SglImage,
    SglRoleBegin,
    SglRoleEnd,
    SglSamplingParams,
    SglSelect,
    SglVarScopeBegin,
    SglVarScopeEnd,
    iter_leaves,
)

if TYPE_CHECKING:  # avoid an import cycle sgl.backends.base -> sgl.lang -> here
    from sgl.backends.base import Backend, Prompt

_STOP = object()  # queue sentinel


class StreamExecutor:
    """Executes submitted expressions for one program state (see module doc).

    Args:
        backend: the :class:`~sgl.backends.base.Backend` to call.
        arguments: the program's keyword arguments (kept for introspection).
        default_sampling_params: the ``.run()`` defaults every gen() merges over.
        chat_template: overrides ``backend.get_chat_template()``.
        stream: generate with ``backend.generate_stream`` and signal progress.
    """

    def __init__(self, backend: "Backend", arguments: Dict[str, Any], default_sampling_params: SglSamplingParams,
                 chat_template=None, stream: bool = False):
        self.sid = uuid.uuid4().hex
        self.backend = backend
        self.arguments = arguments
        self.default_sampling_params = default_sampling_params
        self.stream = stream
        self.chat_template = chat_template or backend.get_chat_template()

        self.variables: Dict[str, Any] = {}
        self.variable_event: Dict[str, threading.Event] = {}
        self._pending: Dict[str, int] = {}  # queued producers per variable name
        self._var_lock = threading.Lock()
        self.meta_info: Dict[str, Any] = {}
        self.error_: Optional[BaseException] = None
        self.is_finished = False

        self.text_ = ""
        self.messages_: List[Dict[str, Any]] = []
        self.cur_role: Optional[str] = None
        self.cur_role_begin_pos: Optional[int] = None
        self.images_: List[tuple] = []
        self.cur_images: List[tuple] = []
        self.fork_start_text_pos: Optional[int] = None
        self.children: List["StreamExecutor"] = []

        # Role bookkeeping at submit time, so role errors raise in the program body.
        self.submit_role: Optional[str] = None

        self.stream_text_event = threading.Event() if stream else None
        self.stream_var_event: Dict[str, threading.Event] = {}

        self._ended = False
        self.queue: "queue.Queue" = queue.Queue()
        self.worker = threading.Thread(target=self._worker_loop, name=f"sgl-exec-{self.sid[:8]}", daemon=True)
        self.worker.start()

    # -- submission -----------------------------------------------------------------
    def submit(self, expr: SglExpr) -> None:
        """Validate ``expr`` against the open role and queue it for execution.

        Raises:
            ValueError: nested roles, an end for a role that is not open, an
                unknown role, or an image on a text-only backend.
            RuntimeError: the program has already finished.
        """
        if self._ended:
            raise RuntimeError("this program state has finished; it cannot be appended to "
                               "(run the program again, or append inside the program)")
        role = self.submit_role
        for leaf in iter_leaves(expr):
            if isinstance(leaf, SglRoleBegin):
                if role is not None:
                    raise ValueError(
                        f"nested roles are not allowed: role {leaf.role!r} begins while role {role!r} is open "
                        f"(close it first with {role}_end())")
                self.chat_template.get_prefix_and_suffix(leaf.role, [])  # raises on an unknown role
                role = leaf.role
            elif isinstance(leaf, SglRoleEnd):
                if role != leaf.role:
                    raise ValueError(f"{leaf.role}_end() without a matching {leaf.role}_begin() (open role: {role!r})")
                role = None
            elif isinstance(leaf, SglImage) and not self.backend.supports_images:
                raise ValueError(
                    f"image(): the backend's model ({_model_name(self.backend)}) is text-only; "
                    "multimodal models are not supported by this backend")
        self.submit_role = role
        with self._var_lock:
            for leaf in iter_leaves(expr):
                name = getattr(leaf, "name", None)
                if isinstance(leaf, (SglGen, SglSelect, SglVarScopeBegin)) and name is not None:
                    # A later producer of the same name makes readers wait for it (program order).
                    self._pending[name] = self._pending.get(name, 0) + 1
                    self.variable_event.setdefault(name, threading.Event()).clear()
                    if self.stream:
                        self.stream_var_event.setdefault(name, threading.Event())
        self.queue.put(expr)

    def sync(self) -> None:
        """Block until every submitted expression has been executed (or skipped)."""
        self.queue.join()

    def end(self) -> None:
        """Let the worker exit once its queue is drained; ends forks too."""
        if self._ended:
            return
        self._ended = True
        self.queue.put(_STOP)
        for child in self.children:
            child.end()

    # -- reading ----------------------------------------------------------------------
    def get_var(self, name: str):
        """The value of variable ``name``, waiting for it to be produced.

        Raises:
            RuntimeError: the program failed before producing it (chained).
            KeyError: no such variable.
        """
        if name in self.variable_event:
            self.variable_event[name].wait()
        if name in self.variables:
            return self.variables[name]
        if self.error_ is not None:
            raise RuntimeError(f"variable {name!r} was not produced because the program failed: "
                               f"{type(self.error_).__name__}: {self.error_}") from self.error_
        raise KeyError(f"no variable {name!r} in this program state; known: {sorted(map(str, self.variables))}")

    def get_meta_info(self, name: str, timeout: Optional[float] = None):
        if name in self.variable_event and not self.variable_event[name].wait(timeout):
            raise TimeoutError(f"timed out waiting for variable {name!r}")
        return self.meta_info.get(name)

    def text(self) -> str:
        self.sync()
        return self.text_

    def messages(self) -> List[Dict[str, Any]]:
        self.sync()
        return self.messages_

    def error(self) -> Optional[BaseException]:
        self.sync()
        return self.error_

    def snapshot(self) -> "Prompt":
        """The current prompt as a read-only :class:`~sgl.backends.base.Prompt`."""
        from sgl.backends.base import Prompt

        role_text = self.text_[self.cur_role_begin_pos:] if self.cur_role is not None else ""
        return Prompt(text=self.text_, messages=tuple(dict(m) for m in self.messages_), cur_role=self.cur_role,
                      cur_role_text=role_text, images=tuple(self.images_))

    # -- fork ---------------------------------------------------------------------------
    def fork(self, size: int = 1) -> List["StreamExecutor"]:
        """``size`` child executors that start from this one's current state.

        With ``size > 1`` the current prompt is first committed once
        (``backend.commit_lazy_operations``) so the children's requests reuse
        it from the prefix cache instead of each prefilling it.
        """
        size = int(size)
        if size < 1:
            raise ValueError(f"fork size must be >= 1, got {size}")
        if size > 1:
            self.submit(SglCommitLazy())
        self.sync()
        children = []
        for _ in range(size):
            c = StreamExecutor(self.backend, self.arguments, self.default_sampling_params, self.chat_template, self.stream)
            c.variables = dict(self.variables)
            c.text_ = self.text_
            c.messages_ = list(self.messages_)
            c.cur_role, c.submit_role = self.cur_role, self.submit_role
            c.cur_role_begin_pos = self.cur_role_begin_pos
            c.images_ = list(self.images_)
            c.fork_start_text_pos = len(self.text_)
            children.append(c)
        self.children.extend(children)
        return children

    # -- worker -------------------------------------------------------------------------
    def _worker_loop(self) -> None:
        while True:
            expr = self.queue.get()
            if expr is _STOP:
                self.queue.task_done()
                break
            if self.error_ is None:
                try:
                    self._execute(expr)
                except BaseException as e:  # recorded and surfaced to readers / run()
                    self.error_ = e
                    for ev in list(self.variable_event.values()) + list(self.stream_var_event.values()):
                        ev.set()
            self.queue.task_done()
            if self.stream_text_event is not None:
                self.stream_text_event.set()
        self.is_finished = True
        if self.stream_text_event is not None:
            self.stream_text_event.set()
        for ev in self.stream_var_event.values():
            ev.set()

    def _execute(self, expr: SglExpr) -> None:
        if isinstance(expr, str):
            expr = SglConstantText(expr)
        if isinstance(expr, SglExprList):
            for e in expr.expr_list:
                self._execute(e)
        elif isinstance(expr, SglConstantText):
            self.text_ += expr.value
        elif isinstance(expr, SglGen):
            self._execute_gen(expr)
        elif isinstance(expr, SglSelect):
            self._execute_select(expr)
        elif isinstance(expr, SglRoleBegin):
            self._execute_role_begin(expr)
        elif isinstance(expr, SglRoleEnd):
            self._execute_role_end(expr)
        elif isinstance(expr, SglImage):
            self._execute_image(expr)
        elif isinstance(expr, SglVarScopeBegin):
            self.variables[expr.name] = len(self.text_)
        elif isinstance(expr, SglVarScopeEnd):
            self.variables[expr.name] = self.text_[self.variables[expr.name]:]
            self._producer_done(expr.name)
        elif isinstance(expr, SglCommitLazy):
            self.backend.commit_lazy_operations(self.snapshot())
        elif isinstance(expr, SglConcateAndAppend):
            for state in expr.states:
                exe = state.stream_executor
                exe.sync()
                self.text_ += exe.text_[exe.fork_start_text_pos:]
        else:
            raise TypeError(f"unknown expression type {type(expr).__name__}")

    def _set_var(self, name: Optional[str], value, meta) -> None:
        if name is None:
            return
        self.variables[name] = value
        self.meta_info[name] = meta
        self._producer_done(name)
        if name in self.stream_var_event:
            self.stream_var_event[name].set()

    def _producer_done(self, name: str) -> None:
        with self._var_lock:
            self._pending[name] -= 1
            if self._pending[name] == 0:
                self.variable_event[name].set()

    def _execute_gen(self, expr: SglGen) -> None:
        params = self.default_sampling_params.merged(expr.sampling_params, extra_stop=self.chat_template.stop_str)
        prompt = self.snapshot()
        name = expr.name
        if not self.stream:
            text, meta = self.backend.generate(prompt, params)
            self.text_ += text
            self._set_var(name, text, meta)
            return
        if name is not None:
            self.variables[name] = ""
        meta = None
        for delta, meta in self.backend.generate_stream(prompt, params):
            self.text_ += delta
            if name is not None:
                self.variables[name] += delta
                self.meta_info[name] = meta
                self.stream_var_event[name].set()
            self.stream_text_event.set()
        if name is not None:
            self._set_var(name, self.variables[name], meta)

    def _execute_select(self, expr: SglSelect) -> None:
        decision = self.backend.select(self.snapshot(), expr.choices, expr.temperature, expr.choices_method)
        self.text_ += decision.decision
        self._set_var(expr.name, decision.decision, decision.meta_info)

    def _execute_role_begin(self, expr: SglRoleBegin) -> None:
        if self.cur_role is not None:
            raise ValueError(f"nested roles are not allowed: {expr.role!r} inside {self.cur_role!r}")
        default_system = self.chat_template.default_system_prompt
        if not self.messages_ and expr.role != "system" and default_system:
            self._execute_role_begin(SglRoleBegin("system"))
            self.text_ += default_system
            self._execute_role_end(SglRoleEnd("system"))
        prefix, _ = self.chat_template.get_prefix_and_suffix(expr.role, self.messages_)
        self.cur_role = expr.role
        self.text_ += prefix
        self.cur_role_begin_pos = len(self.text_)

    def _execute_role_end(self, expr: SglRoleEnd) -> None:
        if self.cur_role != expr.role:
            raise ValueError(f"{expr.role}_end() but the open role is {self.cur_role!r}")
        content = self.text_[self.cur_role_begin_pos:].lstrip()
        _, suffix = self.chat_template.get_prefix_and_suffix(expr.role, self.messages_)
        self.text_ += suffix
        self.cur_role, self.cur_role_begin_pos = None, None
        if self.cur_images:
            parts: List[Dict[str, Any]] = [{"type": "text", "text": content}]
            for _, b64 in self.cur_images:
                parts.append({"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b64}"}})
            self.messages_.append({"role": expr.role, "content": parts})
            self.cur_images = []
        else:
            self.messages_.append({"role": expr.role, "content": content})

    def _execute_image(self, expr: SglImage) -> None:
        from sgl.lang.utils import load_image

        data, _ = load_image(expr.source)
        b64 = base64.b64encode(data).decode()
        self.images_.append((expr.source, b64))
        self.cur_images.append((expr.source, b64))
        self.text_ += self.chat_template.image_token


def _model_name(backend) -> str:
    try:
        return backend.get_model_name()
    except Exception:
        return type(backend).__name__
