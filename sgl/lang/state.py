"""``ProgramState`` (the ``s`` of a program) and ``ProgramStateGroup`` (forks).

Follows SGLang's user-facing API (python/sglang/lang/interpreter.py):
``s += expr``, ``s["var"]``, ``s.text()``, ``s.messages()``,
``s.get_meta_info("var")``, ``s.error()``, ``s.fork(n)``, ``with s.user():``,
``s.text_iter()`` and ``async for piece in s.text_async_iter()``.

When the program fails, value reads (``s["x"]``, ``text()``, ``messages()``,
``get_meta_info``, ``sync()``, ``fork()``, ``join()``) raise
:class:`~sgl.lang.interpreter.ProgramError` chained to the program's
exception, ``text_iter`` re-raises that exception after the pieces produced
before it, and ``error()`` returns it; no read waits on a failed program (see
:mod:`sgl.lang.interpreter`).
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from typing import Iterator, List, Optional

from sgl.lang.interpreter import ProgramError, StreamExecutor  # noqa: F401 (re-export)
from sgl.lang.ir import SglConcateAndAppend, SglExpr, SglExprList, SglRoleBegin, SglRoleEnd, SglVarScopeBegin, SglVarScopeEnd, _as_expr


_ITER_POLL_S = 0.5


class _Submitted(SglExprList):
    """Returned by ``s.user(expr)`` (which submits at once) so that the SGLang
    idiom ``s += s.user(expr)`` does not append the message twice."""

    def __init__(self):
        super().__init__([])


class ProgramState:
    """The state of one running program (see module doc)."""

    def __init__(self, stream_executor: StreamExecutor):
        self.stream_executor = stream_executor
        self.ret_value = None

    # -- appending -----------------------------------------------------------------
    def __iadd__(self, other):
        if other is None:
            raise ValueError("cannot append None to a program state")
        if isinstance(other, _Submitted):
            return self
        self.stream_executor.submit(_as_expr(other))
        return self

    def _role_common(self, name: str, expr=None):
        if expr is not None:
            self.stream_executor.submit(SglExprList([SglRoleBegin(name), _as_expr(expr), SglRoleEnd(name)]))
            return _Submitted()

        @contextmanager
        def role_scope():
            self.stream_executor.submit(SglRoleBegin(name))
            yield
            self.stream_executor.submit(SglRoleEnd(name))

        return role_scope()

    def system(self, expr=None):
        """``s.system(text)`` appends a system message; ``with s.system():`` scopes one."""
        return self._role_common("system", expr)

    def user(self, expr=None):
        """``s.user(text)`` appends a user message; ``with s.user():`` scopes one."""
        return self._role_common("user", expr)

    def assistant(self, expr=None):
        """``s.assistant(expr)`` appends an assistant message; ``with s.assistant():`` scopes one."""
        return self._role_common("assistant", expr)

    @contextmanager
    def var_scope(self, name: str):
        """Capture all text appended inside the ``with`` block into variable ``name``."""
        self.stream_executor.submit(SglVarScopeBegin(name))
        yield
        self.stream_executor.submit(SglVarScopeEnd(name))

    # -- fork ------------------------------------------------------------------------
    def fork(self, size: int = 1) -> "ProgramStateGroup":
        """``size`` states continuing from this one; see :meth:`StreamExecutor.fork`."""
        return ProgramStateGroup([ProgramState(e) for e in self.stream_executor.fork(size)], self)

    @contextmanager
    def copy(self):
        """``with s.copy() as c:`` a single fork, joined back on exit."""
        group = self.fork(1)
        try:
            yield group[0]
        finally:
            group.join()

    # -- reading ---------------------------------------------------------------------
    def text(self) -> str:
        """The full prompt + generated text (waits for pending expressions)."""
        return self.stream_executor.text()

    def messages(self) -> List[dict]:
        """Finished chat messages in OpenAI format (``{"role", "content"}``)."""
        return self.stream_executor.messages()

    def sync(self) -> None:
        """Wait for every appended expression; raises ProgramError if the program failed."""
        self.stream_executor.sync()

    def error(self) -> Optional[BaseException]:
        """The exception that stopped this program (None when it succeeded)."""
        return self.stream_executor.error()

    def get_var(self, name: str):
        return self.stream_executor.get_var(name)

    def set_var(self, name: str, value) -> None:
        self.stream_executor.variables[name] = value

    def get_meta_info(self, name: str):
        """The backend's meta info for variable ``name`` (token counts, logprobs, choice scores)."""
        return self.stream_executor.get_meta_info(name)

    def __getitem__(self, name: str):
        return self.get_var(name)

    def __setitem__(self, name: str, value) -> None:
        self.set_var(name, value)

    def __contains__(self, name: str) -> bool:
        return name in self.stream_executor.variables

    def __repr__(self) -> str:
        exe = self.stream_executor
        exe.drain()
        if exe.error_ is not None:  # repr never raises
            return f"ProgramState(<failed: {type(exe.error_).__name__}: {exe.error_}>, text={exe.text_!r})"
        return f"ProgramState({exe.text_!r})"

    # -- streaming ---------------------------------------------------------------------
    def _raise_if_failed(self):
        err = self.stream_executor.error_
        if err is not None:
            raise err

    def text_iter(self, var_name: Optional[str] = None) -> Iterator[str]:
        """Yield text pieces as they are produced (of the whole text, or of one variable).

        The pieces concatenate to ``self.text()`` (or ``self[var_name]``).  On
        a non-streaming state, yields the final value once.  If the program
        fails, the pieces produced before the failure are yielded and then the
        program's own exception is raised; the iterator stops as soon as the
        failure happens, not when the program body returns.
        """
        exe = self.stream_executor
        if not exe.stream:
            exe.drain()
            self._raise_if_failed()
            yield self.text() if var_name is None else self.get_var(var_name)
            return
        prev = 0
        # Read first, then wait: a second iterator (or one started after the end)
        # must not wait for a signal that was already consumed; the timed wait is a
        # safety net for several concurrent iterators clearing the same event.
        if var_name is None:
            event = exe.stream_text_event
            while True:
                finished = exe.is_finished or exe.error_ is not None
                out = exe.text_[prev:]
                prev += len(out)
                if out:
                    yield out
                if finished:
                    break
                event.wait(_ITER_POLL_S)
                event.clear()
            self._raise_if_failed()
            return
        event = self._wait_var_event(var_name)
        if event is None:
            self._raise_if_failed()
            return
        while True:
            done = exe.variable_event[var_name].is_set() or exe.is_finished or exe.error_ is not None
            out = str(exe.variables.get(var_name, ""))[prev:]
            prev += len(out)
            if out:
                yield out
            if done:
                break
            event.wait(_ITER_POLL_S)
            event.clear()
        self._raise_if_failed()

    def _wait_var_event(self, var_name: str):
        exe = self.stream_executor
        while var_name not in exe.stream_var_event:
            if exe.is_finished or exe.error_ is not None:
                return None
            exe.stream_text_event.wait(0.05)
        return exe.stream_var_event[var_name]

    async def text_async_iter(self, var_name: Optional[str] = None):
        """Async version of :meth:`text_iter` (waits in a thread, never blocks the loop)."""
        loop = asyncio.get_running_loop()
        it = self.text_iter(var_name)
        sentinel = object()
        while True:
            piece = await loop.run_in_executor(None, next, it, sentinel)
            if piece is sentinel:
                return
            yield piece


class ProgramStateGroup:
    """The states returned by ``s.fork(n)``; index, iterate, ``+=`` and ``join()``."""

    def __init__(self, states: List[ProgramState], src_state: ProgramState):
        self.states = states
        self.src_state = src_state

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __iter__(self):
        return iter(self.states)

    def __len__(self) -> int:
        return len(self.states)

    def __iadd__(self, other):
        """Append to every fork: a callable ``f(i)``, one expr for all, or a list (one per fork)."""
        if isinstance(other, (list, tuple)):
            if len(other) != len(self.states):
                raise ValueError(f"got {len(other)} expressions for {len(self.states)} forks")
            for s, e in zip(self.states, other):
                s += e
        elif callable(other) and not isinstance(other, SglExpr):
            for i, s in enumerate(self.states):
                s += other(i)
        else:
            for s in self.states:
                s += other
        return self

    def join(self, mode: str = "gather_variable") -> None:
        """Merge the forks back into the source state.

        Modes:
            ``gather_variable``: each variable a fork created is copied into the
                source as a list (one entry per fork).
            ``concate_and_append``: the text each fork added is appended to the
                source, in fork order.

        Raises:
            ValueError: unknown mode.
            ProgramError: a fork (or the source) failed; chained to its exception.
        """
        src = self.src_state.stream_executor
        if mode == "gather_variable":
            for child in self.states:
                child.stream_executor.sync()
            src.sync()
            before = set(src.variables)
            for child in self.states:
                for k in set(child.stream_executor.variables) - before:
                    src.variables.setdefault(k, []).append(child.stream_executor.variables[k])
        elif mode == "concate_and_append":
            self.src_state += SglConcateAndAppend(self.states)
            src.sync()
        else:
            raise ValueError(f"join mode must be 'gather_variable' or 'concate_and_append', got {mode!r}")
        for child in self.states:
            child.stream_executor.end()


__all__ = ["ProgramError", "ProgramState", "ProgramStateGroup"]
