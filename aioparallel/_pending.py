"""What ``Parallel(...)(calls)`` returns in list mode: a coroutine that names the fix when it
is used the joblib way.

A joblib user's first line is ``results = Parallel(n_jobs=2)(calls)`` without ``await``. A
bare coroutine then fails far away (``'coroutine' object is not subscriptable``) and warns
at exit about ``Parallel._gather``. This wrapper is a real coroutine (``asyncio.run``,
``create_task``, ``gather``, trio and anyio task groups accept it) whose misuses say what to
write instead, and whose "never awaited" warning names the call. The misuses are every way a
list is used: indexing, iterating, ``len``, ``in``, ``==``, ``np.array`` and ``async for``.

A task that returns one (joblib's nesting, ``return Parallel(n_jobs=2)(calls)`` in a plain
``def``) fails with ``returned_by_task``'s error, on every backend: the process and dask
workers find it when the result does not pickle (``__reduce__`` refuses), the in-process
backends when the run receives it.
"""

from __future__ import annotations

import warnings
from collections.abc import Coroutine, Generator
from typing import Any, NoReturn, TypeVar

__all__ = ["PendingResults", "not_awaited_hint", "returned_hint"]

R = TypeVar("R")


def not_awaited_hint(what: str) -> str:
    return (
        f"{what} is awaitable, not the results: write 'results = await {what}' in async "
        f"code (a notebook cell too), or 'results = asyncio.run({what})' from sync code"
    )


def returned_hint(what: str, how: str) -> str:
    """Why a task's result is refused: it is ``what``, a Parallel call it never awaited."""
    return (
        f"the task returned {what} without awaiting it: the inner call was never awaited, "
        f"so nothing ran, and it is no result. {how}"
    )


def _list_how(what: str) -> str:
    return (
        f"In a sync task write 'results = asyncio.run({what})'; or make the task an "
        f"'async def' and write 'results = await {what}'"
    )


class PendingResults(Coroutine[Any, Any, R]):
    """The result list of one ``Parallel(...)(calls)``, once awaited."""

    __slots__ = ("_coro", "_started", "_what")

    def __init__(self, coro: Coroutine[Any, Any, R], what: str):
        self._coro = coro
        self._what = what
        self._started = False

    def __await__(self) -> Generator[Any, None, R]:
        self._started = True
        return self._coro.__await__()

    def send(self, value: Any) -> Any:
        self._started = True
        return self._coro.send(value)

    def throw(self, *args: Any) -> Any:
        self._started = True
        return self._coro.throw(*args)

    def close(self) -> None:
        self._started = True
        self._coro.close()

    def __repr__(self) -> str:
        return f"<{self._what}: not awaited yet; use 'await' or asyncio.run()>"

    def __del__(self) -> None:
        if not self._started:
            self._coro.close()  # instead of Python's warning about an internal coroutine
            warnings.warn(
                f"{self._what} was never awaited, so nothing ran. {not_awaited_hint(self._what)}",
                RuntimeWarning,
                stacklevel=2,
            )

    def returned_by_task(self) -> TypeError:
        """The error of a task that returned this call: it is closed (nothing ran, and
        nothing warns about it later), the error says how to await it."""
        self.close()
        return TypeError(returned_hint(self._what, _list_how(self._what)))

    def __reduce__(self) -> NoReturn:  # a worker pickling a task's result; copy.copy
        raise TypeError(returned_hint(self._what, _list_how(self._what)))

    def _misused(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(not_awaited_hint(self._what))

    __iter__ = __getitem__ = __len__ = __contains__ = _misused

    def __array__(self, *args: Any, **kwargs: Any) -> NoReturn:
        """``np.array(pending)``: numpy would make a 0-d object array of it, silently."""
        self._misused()

    def __eq__(self, other: object) -> bool:
        """``results == [...]`` would be False, silently; identity still holds."""
        if other is self:
            return True
        self._misused()

    __hash__ = object.__hash__

    def __aiter__(self) -> NoReturn:
        raise TypeError(
            f"{self._what} returns a coroutine in return_as='list' mode, not an async "
            f"iterator: write 'results = await {self._what}', or pass return_as='generator' "
            "to read results with 'async for' as they come"
        )

    def __bool__(self) -> bool:  # asyncio tests ``if task._coro:``: never ask __len__
        return True
