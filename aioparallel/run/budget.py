"""The pre_dispatch limiter: a counting budget of calls taken ahead of completion."""

from __future__ import annotations

import anyio

__all__ = ["Budget"]


class Budget:
    """At most ``limit`` calls in flight (taken from the input, result not yet released).

    Unlike a semaphore it hands out several units at once, so a batch of 500 tiny calls costs
    one acquisition, and its limit can move (auto batching widens the default bound).
    ``limit=None`` means unbounded (``pre_dispatch="all"``).
    """

    def __init__(self, limit: int | None):
        self.limit = limit
        self.used = 0
        #: Set when units are freed; made only once a task waits (an Event costs ~3 µs, a
        #: small run never waits, and a list sink releases once per batch).
        self._freed: anyio.Event | None = None

    async def acquire(self, want: int) -> int:
        """Wait until at least one unit is free, then take up to ``want``; returns how many."""
        while self.limit is not None and self.used >= self.limit:
            if self._freed is None:
                self._freed = anyio.Event()
            await self._freed.wait()
        n = want if self.limit is None else min(want, self.limit - self.used)
        self.used += n
        return n

    def release(self, n: int) -> None:
        if n <= 0:
            return
        self.used -= n
        self._wake()

    def widen(self, limit: int) -> None:
        """Raise the limit (never lower it under calls already taken)."""
        if self.limit is not None and limit > self.limit:
            self.limit = limit
            self._wake()

    def _wake(self) -> None:
        """Wake every waiter (each re-checks the room left)."""
        if self._freed is not None:
            self._freed.set()
            self._freed = None
