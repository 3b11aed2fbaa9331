"""The async iterator behind ``return_as="generator"`` and ``"generator_unordered"``.

A plain ``async for`` gives us no task group to run in, and an async generator may not yield
from inside one (its finalizer would exit the cancel scope from another task). So the run is
hosted in a task of its own (an asyncio task, or a trio system task) and results cross over
through the sink. ``aclose()`` (or leaving ``async with``) cancels the host, which then cleans
up exactly as a cancelled ``await`` does, and waits for the cleanup to finish.

Python's ``async for`` does not close its iterator on ``break``: a stream held in a variable
keeps its run going until it is closed or garbage-collected. The finalizer still cancels the
run (from whatever thread the collector runs in: the cancel goes through the run's own loop),
but warns (``ResourceWarning``) so the missing ``async with`` gets noticed.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

import anyio

from .._detached import spawn_detached
from .._pending import returned_hint
from .results import Sink

__all__ = ["ResultStream"]

R = TypeVar("R")


class ResultStream(AsyncIterator[R], Generic[R]):
    """Results streamed from a run; the run starts on the first ``__anext__``."""

    def __init__(
        self,
        make_run: Callable[[], tuple[Sink[R], Callable[[], Coroutine[Any, Any, None]]]],
        what: str = "Parallel(return_as='generator')(…)",
    ):
        self._make_run = make_run
        self._what = what
        self._sink: Any = None
        self._cancel: Callable[[], None] | None = None
        self._finished: anyio.Event | None = None
        self._closed = False

    def __aiter__(self) -> ResultStream[R]:
        return self

    async def __anext__(self) -> R:
        if self._closed:
            raise StopAsyncIteration
        if self._sink is None:
            self._start()
        result: R = await self._sink.get()
        return result

    def _start(self) -> None:
        sink, execute = self._make_run()
        finished = anyio.Event()

        async def host() -> None:
            try:
                await execute()
            except BaseException as exc:  # handed to the consumer, never lost
                if exc is sink.error or not isinstance(exc, anyio.get_cancelled_exc_class()):
                    sink.close(exc)  # the run's error, even a task's own CancelledError
                else:
                    sink.close(RuntimeError("the run was cancelled"))
                    raise
            else:
                sink.close()
            finally:
                finished.set()

        self._sink, self._finished = sink, finished
        self._cancel = spawn_detached(host)

    async def aclose(self) -> None:
        """Stop the run (if still going) and wait until its workers and files are cleaned up."""
        self._closed = True
        if self._cancel is None or self._finished is None:
            return
        if not self._finished.is_set():
            self._cancel()
            with anyio.CancelScope(shield=True):
                await self._finished.wait()

    def __del__(self) -> None:
        if self._cancel is not None and self._finished is not None and not self._finished.is_set():
            try:
                self._cancel()
            except RuntimeError:  # the loop is already gone
                pass
            # after the cancel: with warnings as errors, warn() raises
            warnings.warn(
                "a result stream was not closed while its run was still going; it is "
                "cancelled now, at garbage collection. Use 'async with Parallel(...)(calls) "
                "as stream:' (or contextlib.aclosing) so that leaving the loop stops the run",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )

    def returned_by_task(self) -> TypeError:
        """The error of a task that returned this stream instead of reading it; a stream
        not started holds nothing to close."""
        self._closed = True
        return TypeError(returned_hint(self._what, self._how()))

    def __reduce__(self) -> NoReturn:  # a worker pickling a task's result; copy.copy
        raise TypeError(returned_hint(self._what, self._how()))

    def _how(self) -> str:
        return (
            "In an 'async def' task read it there: 'results = [r async for r in stream]'; "
            "in a sync task, pass return_as='list' and write "
            "'results = asyncio.run(Parallel(...)(calls))'"
        )

    if not TYPE_CHECKING:  # at runtime only: type checkers keep refusing 'await stream'

        def __await__(self) -> NoReturn:
            raise TypeError(
                f"{self._what} is an async iterator, not awaitable: read it with "
                "'async for r in stream' (better: 'async with Parallel(...)(calls) as "
                "stream: async for r in stream'), or pass return_as='list' to write "
                "'results = await Parallel(...)(calls)'"
            )

    def __eq__(self, other: object) -> bool:
        """``stream == [...]`` would be False, silently; identity still holds."""
        if other is self:
            return True
        raise TypeError(
            f"{self._what} is an async iterator, not the results: collect them with "
            "'[r async for r in stream]', or pass return_as='list' and "
            "'results = await Parallel(...)(calls)'"
        )

    __hash__ = object.__hash__

    def __iter__(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(
            "a result stream is asynchronous: read it with 'async for r in stream' in async "
            "code (better: 'async with Parallel(...)(calls) as stream: async for r in stream')"
        )

    # used as a list (``len``, ``[i]``, ``np.array``, which would make a 0-d object array)
    __len__ = __getitem__ = __array__ = __iter__

    def __bool__(self) -> bool:  # not __len__'s refusal
        return True

    def __enter__(self) -> NoReturn:
        raise TypeError("use 'async with Parallel(...)(calls) as stream:' (in async code)")

    def __exit__(self, *exc_info: object) -> None:  # pragma: no cover - __enter__ raises
        return None

    async def __aenter__(self) -> ResultStream[R]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
