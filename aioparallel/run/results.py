"""Where finished batches go: a list, or an async iterator in input or completion order.

Every sink releases the ``pre_dispatch`` budget: the list sink when a batch is stored, the
streaming sinks only when the consumer reads a result, so unread results count against the
bound and a slow consumer slows the producer instead of filling memory.

Every sink counts the calls reserved and the results delivered: a run that ends without
error but with a slot unfilled raises instead of returning a short or padded result.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import anyio

from .budget import Budget

__all__ = ["ListSink", "OrderedSink", "Sink", "UnorderedSink"]

R = TypeVar("R")


class Sink(Generic[R]):
    """Base: receives ``put(start, values)`` from the run and ``close(error)`` at its end."""

    def __init__(self, budget: Budget):
        self.budget = budget
        self.reserved = 0
        self.delivered = 0
        #: The run's error, once it ended with one.
        self.error: BaseException | None = None

    def reserve(self, start: int, n: int) -> None:
        """A batch of ``n`` calls starting at ``start`` was taken from the input."""
        self.reserved += n

    def put(self, start: int, values: list[Any]) -> None:
        self.delivered += len(values)

    def close(self, error: BaseException | None = None) -> None:
        """The run ended; streaming sinks pass ``error`` on to the consumer."""
        if self.error is None:
            self.error = error if error is not None else self.shortfall()

    def shortfall(self) -> RuntimeError | None:
        """The error of a run that ended with a result slot unfilled, if it did."""
        if self.delivered == self.reserved:
            return None
        return RuntimeError(
            f"aioparallel bug: the run ended with {self.delivered} of {self.reserved} results "
            "and no error; please report it"
        )


class ListSink(Sink[R]):
    """Results in input order, returned all at once."""

    def __init__(self, budget: Budget):
        super().__init__(budget)
        self.results: list[Any] = []

    def reserve(self, start: int, n: int) -> None:
        super().reserve(start, n)
        self.results.extend([None] * n)

    def put(self, start: int, values: list[Any]) -> None:
        super().put(start, values)
        self.results[start : start + len(values)] = values
        self.budget.release(len(values))

    def result(self) -> list[Any]:
        """The results of a run that ended without error: one per call, never a placeholder."""
        missing = self.shortfall()
        if missing is not None:
            raise missing
        return self.results


class _StreamSink(Sink[R]):
    """Shared waiting logic of the streaming sinks."""

    def __init__(self, budget: Budget):
        super().__init__(budget)
        self._changed = anyio.Event()
        self._closed = False

    def _notify(self) -> None:
        self._changed.set()

    def close(self, error: BaseException | None = None) -> None:
        super().close(error)
        self._closed = True
        self._notify()

    def _ready(self) -> bool:
        raise NotImplementedError

    def _pop(self) -> Any:
        raise NotImplementedError

    async def get(self) -> Any:
        """The next result; ``StopAsyncIteration`` at the end; the run's error if it failed."""
        while True:
            if self.error is not None:
                raise self.error
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
        super().put(start, values)
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
        super().put(start, values)
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
