"""What ``Parallel(...)(calls)`` returns in list mode: a coroutine that names the fix when it
is used the joblib way.

A joblib user's first line is ``results = Parallel(n_jobs=2)(calls)`` without ``await``. A
bare coroutine then fails far away (``'coroutine' object is not subscriptable``) and warns
at exit about ``Parallel._gather``. This wrapper is a real coroutine (``asyncio.run``,
``create_task``, ``gather``, trio and anyio task groups accept it) whose misuses say what to
write instead, and whose "never awaited" warning names the call.
"""

from __future__ import annotations

import warnings
from collections.abc import Coroutine, Generator
from typing import Any, NoReturn, TypeVar

__all__ = ["PendingResults", "not_awaited_hint"]

R = TypeVar("R")


def not_awaited_hint(what: str) -> str:
    return (
        f"{what} is awaitable, not the results: write 'results = await {what}' in async "
        f"code (a notebook cell too), or 'results = asyncio.run({what})' from sync code"
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

    def _misused(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(not_awaited_hint(self._what))

    __iter__ = __getitem__ = _misused

    def __bool__(self) -> bool:  # asyncio tests ``if task._coro:``: never ask __len__
        return True
