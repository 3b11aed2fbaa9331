"""Where finished batches go: a list, or an async iterator in input or completion order.

Every sink releases the ``pre_dispatch`` budget: the list sink when a batch is stored, the
streaming sinks only when the consumer reads a result, so unread results count against the
bound and a slow consumer slows the producer instead of filling memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import anyio

from ._budget import Budget

__all__ = ["ListSink", "OrderedSink", "Sink", "UnorderedSink"]

R = TypeVar("R")


class Sink(Generic[R]):
    """Base: receives ``put(start, values)`` from the run and ``close(error)`` at its end."""

    def __init__(self, budget: Budget):
        self.budget = budget

    def reserve(self, start: int, n: int) -> None:
        """A batch of ``n`` calls starting at ``start`` was taken from the input."""

    def put(self, start: int, values: list[Any]) -> None:
        raise NotImplementedError

    def close(self, error: BaseException | None = None) -> None:
        """The run ended; streaming sinks pass ``error`` on to the consumer."""


class ListSink(Sink[R]):
    """Results in input order, returned all at once."""

    def __init__(self, budget: Budget):
        super().__init__(budget)
        self.results: list[Any] = []

    def reserve(self, start: int, n: int) -> None:
        self.results.extend([None] * n)

    def put(self, start: int, values: list[Any]) -> None:
        self.results[start : start + len(values)] = values
        self.budget.release(len(values))


class _StreamSink(Sink[R]):
    """Shared waiting logic of the streaming sinks."""

    def __init__(self, budget: Budget):
        super().__init__(budget)
        self._changed = anyio.Event()
        self._closed = False
        self._error: BaseException | None = None

    def _notify(self) -> None:
        self._changed.set()

    def close(self, error: BaseException | None = None) -> None:
        self._closed = True
        if self._error is None:
            self._error = error
        self._notify()

    def _ready(self) -> bool:
        raise NotImplementedError

    def _pop(self) -> Any:
        raise NotImplementedError

    async def get(self) -> Any:
        """The next result; ``StopAsyncIteration`` at the end; the run's error if it failed."""
        while True:
            if self._error is not None:
                raise self._error
            if self._ready():
                self.budget.release(1)
                return self._pop()
            if self._closed:
                raise StopAsyncIteration
            await self._changed.wait()
            self._changed = anyio.Event()


class OrderedSink(_StreamSink[R]):
    """Streams results in input order, holding back those that finish early."""

    def __init__(self, budget: Budget):
        super().__init__(budget)
        self._pending: dict[int, list[Any]] = {}
        self._current: deque[Any] = deque()
        self._next = 0

    def put(self, start: int, values: list[Any]) -> None:
        self._pending[start] = values
        if start == self._next:
            self._notify()

    def _ready(self) -> bool:
        if self._current:
            return True
        values = self._pending.pop(self._next, None)
        if values is None:
            return False
        self._current.extend(values)
        self._next += len(values)
        return bool(values)

    def _pop(self) -> Any:
        return self._current.popleft()


class UnorderedSink(_StreamSink[R]):
    """Streams results as soon as their batch finishes."""

    def __init__(self, budget: Budget):
        super().__init__(budget)
        self._ready_values: deque[Any] = deque()

    def put(self, start: int, values: list[Any]) -> None:
        self._ready_values.extend(values)
        self._notify()

    def _ready(self) -> bool:
        return bool(self._ready_values)

    def _pop(self) -> Any:
        return self._ready_values.popleft()


SINKS: dict[str, Callable[[Budget], Sink[Any]]] = {
    "list": ListSink,
    "generator": OrderedSink,
    "generator_unordered": UnorderedSink,
}
