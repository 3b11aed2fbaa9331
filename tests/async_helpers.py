"""Async tasks (docs/async-tasks.md) that worker processes import by name (``tests.async_helpers``).

They leave marker files (``<name>-<x>``) in a folder so tests can count how often each task
started, finished, or ran its ``finally`` block, without trusting the worker to report it.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

#: Longest any task waits; the library must cut it short long before.
LONG = 60.0
POLL = 0.01


def mark(folder: str | os.PathLike[str], name: str) -> None:
    Path(folder, name).write_text(str(os.getpid()))


def count(folder: str | os.PathLike[str], prefix: str) -> int:
    return sum(1 for p in Path(folder).iterdir() if p.name.startswith(prefix))


async def double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


async def nap(x: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return x


async def nap_then_work(x: int, seconds: float = 0.02, cpu: float = 0.0005) -> int:
    """W8's task: wait, then a little CPU."""
    await asyncio.sleep(seconds)
    end = time.perf_counter() + cpu
    while time.perf_counter() < end:
        pass
    return x


async def fail_if(x: int, bad: int) -> int:
    await asyncio.sleep(0)
    if x == bad:
        raise ValueError(f"bad input {x}")
    return x


async def raise_cancelled(x: int) -> int:
    """A task whose own outcome is CancelledError (nobody cancelled it)."""
    await asyncio.sleep(0)
    raise asyncio.CancelledError("the task's own")


def make_coroutine(x: int) -> object:
    """A sync function that hands back a coroutine instead of awaiting it."""
    return double(x)


def sync_runs_asyncio(x: int) -> int:
    """A sync task with its own event loop (nested joblib-style code does this)."""
    return asyncio.run(double(x))


def sync_pid(x: int) -> tuple[int, int]:
    return x, os.getpid()


class AsyncCallable:
    async def __call__(self, x: int) -> int:
        await asyncio.sleep(0)
        return x + 1


class Service:
    def __init__(self, offset: int):
        self.offset = offset

    async def add(self, x: int) -> int:
        await asyncio.sleep(0)
        return x + self.offset


async def wait_count(folder: str, prefix: str, n: int, limit: float = LONG) -> None:
    deadline = time.monotonic() + limit
    # marker files are written by other tasks, maybe in other processes: poll them
    while count(folder, prefix) < n and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(POLL)


async def guarded(folder: str, x: int) -> int:
    """Marks its start, waits (long), and marks its ``finally`` block when cancelled."""
    mark(folder, f"start-{x}")
    try:
        await asyncio.sleep(LONG)
    finally:
        mark(folder, f"finally-{x}")
    return x


async def stubborn(folder: str, x: int) -> int:
    """Ignores cancellation: catches CancelledError and keeps waiting."""
    mark(folder, f"start-{x}")
    deadline = time.monotonic() + LONG
    while time.monotonic() < deadline:
        try:
            await asyncio.sleep(LONG)
        except asyncio.CancelledError:
            mark(folder, f"ignored-{x}")
    return x


async def crash_with_in_flight(folder: str, x: int, quick: int, n: int) -> int:
    """Inputs below ``quick`` finish at once; the others wait; input ``n - 1`` waits until
    all ``n`` started and the quick ones finished, lets the worker's loop send their results,
    then kills the worker with ``os._exit``."""
    mark(folder, f"start-{x}")
    if x < quick:
        mark(folder, f"done-{x}")
        return x
    if x == n - 1:
        await wait_count(folder, "start-", n)
        await wait_count(folder, "done-", quick)
        await asyncio.sleep(0.2)  # past FLUSH_SECONDS: the quick results are sent
        os._exit(3)
    await asyncio.sleep(LONG)
    return x


async def guarded_peak(folder: str, x: int, limit: int = 3) -> int:
    """Counts the tasks running at once (marker files): ``peak-*`` if above ``limit``,
    ``full-*`` when exactly at it."""
    running = Path(folder, f"run-{x}")
    running.write_text("")  # noqa: ASYNC240  (a tiny marker file)
    try:
        now = count(folder, "run-")
        if now > limit:
            mark(folder, f"peak-{x}")
        elif now == limit:
            mark(folder, f"full-{x}")
        await asyncio.sleep(0.05)
    finally:
        running.unlink()  # noqa: ASYNC240
    return x


async def on_dask_worker_loop(x: int) -> bool:
    """True when awaited on the event loop of the dask worker running it."""
    from distributed import get_worker

    await asyncio.sleep(0)
    return get_worker().loop.asyncio_loop is asyncio.get_running_loop()


async def block_the_loop(folder: str, x: int) -> int:
    """A sync call inside async code: the worker's loop cannot cancel it."""
    mark(folder, f"start-{x}")
    time.sleep(LONG)  # noqa: ASYNC251  (the fault under test)
    return x


class TaskBaseError(BaseException):
    """A BaseException subclass of the user's own, raised by a task."""


async def raise_at(x: int, exc_type: type[BaseException], bad: int = 3) -> int:
    """Raises ``exc_type`` at input ``bad``. It awaits nothing, so it runs on any loop (the
    sequential backend awaits it in a trio caller's loop too)."""
    if x == bad:
        raise exc_type(f"raised by task input {x}")
    return x
