"""The interpreter: executes a program's expressions in a worker thread.

Each program state owns a :class:`StreamExecutor`.  ``s += expr`` only
*submits* ``expr`` to the executor's queue and returns at once; a worker
thread executes the queue in order against the backend.  Reading a variable
(``s["x"]``) blocks until the expression that sets it has run.  Because
submission is asynchronous, forks (``s.fork(n)``) and batched programs issue
their model calls concurrently and the engine batches them.

Failure semantics.  A program fails when its body raises (recorded by
:mod:`sgl.lang.run` through :meth:`StreamExecutor.fail`) or when an expression
raises in the worker (a backend error, a bad role, ...).  The first error
wins and is kept in ``error_``; from then on:

* every waiter is woken at once (variable readers, ``sync``, streaming
  iterators), and nothing waits on work that will not run: the worker skips
  the rest of its queue and stops a streaming gen in flight;
* every value read -- ``s["x"]`` / ``get_var``, ``get_meta_info``,
  ``text()``, ``messages()``, ``sync()``, ``fork()`` -- raises
  :class:`ProgramError` (a ``RuntimeError``) naming the program, with the
  program's exception as ``__cause__`` (and as ``.error``).  This holds also
  for variables that were produced before the failure, so a read gives the
  same answer however the worker raced the failing body; ``.partial_text``
  and ``.variables`` on the error keep what had been produced, for debugging;
* ``text_iter()`` yields the pieces produced before the failure, then
  re-raises the program's own exception (streaming consumers see the real
  error type);
* ``error()`` returns the exception and never raises;
* the failure propagates to the program's forks (their reads raise too); a
  fork's own failure reaches the parent when the parent reads the fork's
  variables or joins it.

If the worker thread itself dies with work left in its queue (it should
not), readers notice it (they re-check the thread while waiting) and the
state fails with a ``ProgramError`` instead of blocking forever.

Design follows SGLang's ``StreamExecutor`` (python/sglang/lang/interpreter.py).
"""

from __future__ import annotations

import base64
import queue
import threading
import time
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
_POLL_S = 0.2  # how often a waiting reader re-checks that the worker thread is alive


class ProgramError(RuntimeError):
    """A read of a program state whose program failed (see the module doc).

    Attributes:
        program: the program's name (forks: ``name[fork i]``).
        error: the program's exception (also ``__cause__``).
        partial_text: the state's text when the read was made.
        variables: a copy of the variables produced before the failure.
    """

    def __init__(self, message: str, program: str = "program", error: Optional[BaseException] = None,
                 partial_text: str = "", variables: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.program = program
        self.error = error
        self.partial_text = partial_text
        self.variables = dict(variables or {})


class StreamExecutor:
    """Executes submitted expressions for one program state (see module doc).

    Args:
        backend: the :class:`~sgl.backends.base.Backend` to call.
        arguments: the program's keyword arguments (kept for introspection).
        default_sampling_params: the ``.run()`` defaults every gen() merges over.
        chat_template: overrides ``backend.get_chat_template()``.
        stream: generate with ``backend.generate_stream`` and signal progress.
        name: the program's name, used in error messages.
    """

    def __init__(self, backend: "Backend", arguments: Dict[str, Any], default_sampling_params: SglSamplingParams,
                 chat_template=None, stream: bool = False, name: str = "program"):
        self.sid = uuid.uuid4().hex
        self.name = name
        self.backend = backend
        self.arguments = arguments
        self.default_sampling_params = default_sampling_params
        self.stream = stream
        self.chat_template = chat_template or backend.get_chat_template()

        self.variables: Dict[str, Any] = {}
        self.variable_event: Dict[str, threading.Event] = {}
        self._pending: Dict[str, int] = {}  # queued producers per variable name
        self._var_lock = threading.Lock()
        self._cond = threading.Condition(self._var_lock)  # notified when a variable is done or the state fails
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
            failed = self.error_ is not None
            for leaf in iter_leaves(expr):
                name = getattr(leaf, "name", None)
                if isinstance(leaf, (SglGen, SglSelect, SglVarScopeBegin)) and name is not None:
                    # A later producer of the same name makes readers wait for it (program order).
                    self._pending[name] = self._pending.get(name, 0) + 1
                    ev = self.variable_event.setdefault(name, threading.Event())
                    if self.stream:
                        sev = self.stream_var_event.setdefault(name, threading.Event())
                        if failed:
                            sev.set()
                    if failed:
                        ev.set()  # it will be skipped: readers must not wait for it
                    else:
                        ev.clear()
        self.queue.put(expr)

    def fail(self, error: BaseException) -> None:
        """Record that the program failed with ``error`` (the first error wins),
        wake every waiter and fail the forks too.  Safe from any thread."""
        with self._cond:
            if self.error_ is not None:
                return
            self.error_ = error
            events = list(self.variable_event.values()) + list(self.stream_var_event.values())
            children = list(self.children)
            self._cond.notify_all()
        for ev in events:
            ev.set()
        if self.stream_text_event is not None:
            self.stream_text_event.set()
        with self.queue.all_tasks_done:
            self.queue.all_tasks_done.notify_all()  # wake sync() so it can see the failure
        for child in children:
            child.fail(error)

    def program_error(self, what: str, verb: str = "is not available") -> ProgramError:
        """The :class:`ProgramError` for a read of ``what`` from this failed state."""
        err = self.error_
        e = ProgramError(f"{what} of program {self.name!r} {verb} because the program failed: "
                         f"{type(err).__name__}: {err}", program=self.name, error=err,
                         partial_text=self.text_, variables=self.variables)
        e.__cause__ = err
        return e

    def _check_worker(self) -> None:
        """Fail the state if the worker thread is gone while work is still owed."""
        if self.error_ is None and not self.worker.is_alive() and self.queue.unfinished_tasks:
            self.fail(RuntimeError(f"the interpreter thread of program {self.name!r} exited with "
                                   f"{self.queue.unfinished_tasks} expression(s) not executed"))

    def drain(self) -> None:
        """Wait until every submitted expression has been executed or skipped, or
        the program has failed (never raises; a failed worker skips the rest)."""
        q = self.queue
        while True:
            with q.all_tasks_done:
                if not q.unfinished_tasks or self.error_ is not None:
                    break
                q.all_tasks_done.wait(_POLL_S)
            self._check_worker()

    def raise_if_failed(self, what: str) -> None:
        if self.error_ is not None:
            raise self.program_error(what)

    def sync(self) -> None:
        """Block until every submitted expression has been executed.

        Raises:
            ProgramError: the program failed (at once, even if work is queued).
        """
        self.drain()
        self.raise_if_failed("the result")

    def end(self) -> None:
        """Let the worker exit once its queue is drained; ends forks too."""
        if self._ended:
            return
        self._ended = True
        self.queue.put(_STOP)
        for child in self.children:
            child.end()

    # -- reading ----------------------------------------------------------------------
    def _wait_var(self, name: str, timeout: Optional[float] = None) -> bool:
        """Wait until no producer of ``name`` is pending or the state failed;
        False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                if self._pending.get(name, 0) == 0 or self.error_ is not None:
                    return True
                left = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
                if left <= 0:
                    return False
                self._cond.wait(left)
            self._check_worker()

    def _var_error(self, name: str) -> ProgramError:
        produced = name in self.variables and self._pending.get(name, 0) == 0
        return self.program_error(f"variable {name!r}", "is not available" if produced else "was not produced")

    def get_var(self, name: str):
        """The value of variable ``name``, waiting for it to be produced.

        Raises:
            ProgramError: the program failed (before or after producing it).
            KeyError: no such variable.
        """
        self._wait_var(name)
        if self.error_ is not None:
            raise self._var_error(name)
        if name in self.variables:
            return self.variables[name]
        raise KeyError(f"no variable {name!r} in this program state; known: {sorted(map(str, self.variables))}")

    def get_meta_info(self, name: str, timeout: Optional[float] = None):
        """The meta info of variable ``name`` (None when it has none).

        Raises:
            TimeoutError: not produced within ``timeout`` seconds.
            ProgramError: the program failed.
        """
        if not self._wait_var(name, timeout):
            raise TimeoutError(f"timed out waiting for variable {name!r}")
        if self.error_ is not None:
            raise self._var_error(name)
        return self.meta_info.get(name)

    def text(self) -> str:
        """The text once every submitted expression has run (raises ProgramError on failure)."""
        self.drain()
        self.raise_if_failed("text()")
        return self.text_

    def messages(self) -> List[Dict[str, Any]]:
        """The chat messages once every submitted expression has run (raises ProgramError on failure)."""
        self.drain()
        self.raise_if_failed("messages()")
        return self.messages_

    def error(self) -> Optional[BaseException]:
        """The program's exception, or None once its queue has run without one (never
        raises).  On a streaming state whose body is still running, None means
        "no failure so far"."""
        self.drain()
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
        self.raise_if_failed("fork()")
        if size > 1:
            self.submit(SglCommitLazy())
        self.drain()
        self.raise_if_failed("fork()")
        children = []
        n0 = len(self.children)
        for i in range(size):
            c = StreamExecutor(self.backend, self.arguments, self.default_sampling_params, self.chat_template, self.stream,
                               name=f"{self.name}[fork {n0 + i}]")
            c.variables = dict(self.variables)
            c.text_ = self.text_
            c.messages_ = list(self.messages_)
            c.cur_role, c.submit_role = self.cur_role, self.submit_role
            c.cur_role_begin_pos = self.cur_role_begin_pos
            c.images_ = list(self.images_)
            c.fork_start_text_pos = len(self.text_)
            children.append(c)
        with self._cond:
            self.children.extend(children)
            err = self.error_
        if err is not None:  # failed (from another thread) while forking
            for c in children:
                c.fail(err)
        return children

    # -- worker -------------------------------------------------------------------------
    def _worker_loop(self) -> None:
        try:
            while True:
                expr = self.queue.get()
                try:
                    if expr is _STOP:
                        break
                    if self.error_ is None:
                        try:
                            self._execute(expr)
                        except BaseException as e:  # recorded and surfaced to readers / run()
                            self.fail(e)
                finally:
                    self.queue.task_done()
                    if self.stream_text_event is not None:
                        self.stream_text_event.set()
        except BaseException as e:  # the loop itself broke: never leave readers waiting
            self.fail(RuntimeError(f"the interpreter thread of program {self.name!r} crashed: "
                                   f"{type(e).__name__}: {e}"))
        finally:
            self.is_finished = True
            if self.stream_text_event is not None:
                self.stream_text_event.set()
            for ev in list(self.stream_var_event.values()):
                ev.set()
            with self._cond:
                self._cond.notify_all()

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
                exe.drain()
                if exe.error_ is not None:  # the fork failed: so does this program
                    raise exe.program_error("the text")
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
        with self._cond:
            self._pending[name] -= 1
            if self._pending[name] == 0:
                self.variable_event[name].set()
                self._cond.notify_all()

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
        pieces = self.backend.generate_stream(prompt, params)
        try:
            for delta, meta in pieces:
                if self.error_ is not None:  # the program failed meanwhile: stop generating
                    return
                self.text_ += delta
                if name is not None:
                    self.variables[name] += delta
                    self.meta_info[name] = meta
                    self.stream_var_event[name].set()
                self.stream_text_event.set()
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
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
