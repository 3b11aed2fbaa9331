"""A thread worker's batch on an event loop of its own thread: sync calls inline, in order;
async calls as tasks (``child.async_loop.InFlight``, shared with process workers), at most
``worker_concurrency`` at once. The run cancels them through a ``LoopHandle``.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable
from typing import Any

from ..child.async_loop import RAISED, VALUE, InFlight

__all__ = ["LoopHandle", "run_calls_on_loop"]


class LoopHandle:
    """Lets the event loop thread cancel a thread worker's coroutines (the run was cancelled)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tasks: InFlight | None = None
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        loop, tasks = self.loop, self.tasks
        if loop is not None and tasks is not None:
            try:
                loop.call_soon_threadsafe(tasks.cancel_all)
            except RuntimeError:  # the loop is already closed: nothing left to cancel
                pass


def run_calls_on_loop(
    calls: list[tuple[Callable[..., Any], Any, Any, bool]],
    timeout: float | None,
    concurrency: int,
    stop_on_error: bool,
    handle: LoopHandle,
) -> list[tuple[int, Any]]:
    """Run a thread worker's batch on an event loop of this thread: sync calls inline, in
    order; async calls (flagged) as tasks, ``concurrency`` at most at once. One
    ``(kind, value)`` per call; with ``stop_on_error`` the list stops at the first failure
    in input order."""
    outcomes: list[tuple[int, Any] | None] = [None] * len(calls)

    async def drive() -> None:
        loop = asyncio.get_running_loop()
        room = asyncio.Semaphore(concurrency)
        idle = asyncio.Event()
        idle.set()
        failed = False

        def report(position: int, kind: int, value: Any) -> None:
            nonlocal failed
            outcomes[position] = (kind, value)
            if kind != VALUE and stop_on_error:
                failed = True
                tasks.cancel_all()

        def settled() -> None:
            room.release()
            if not tasks.tasks:
                idle.set()

        tasks = InFlight(loop, timeout, report, settled)
        handle.loop, handle.tasks = loop, tasks
        for position, (func, args, kwargs, is_async) in enumerate(calls):
            if failed or handle.cancelled:
                break
            if is_async:
                await room.acquire()
                if failed or handle.cancelled:
                    break
                idle.clear()
                tasks.start(position, func, args, kwargs)
                continue
            try:
                value = func(*args, **kwargs)
            except BaseException as exc:  # the task's outcome, whatever it raised
                report(position, RAISED, exc)
                continue
            if isinstance(value, types.CoroutineType):  # a sync call handed back a coroutine
                await room.acquire()
                idle.clear()
                tasks.start_coroutine(position, value)
            else:
                outcomes[position] = (VALUE, value)
        await idle.wait()

    asyncio.run(drive())
    handle.loop = handle.tasks = None
    return _collate(outcomes, stop_on_error)


def _collate(outcomes: list[tuple[int, Any] | None], stop_on_error: bool) -> list[tuple[int, Any]]:
    """One outcome per call; with ``stop_on_error``, up to the first failure in input order,
    in its own slot (the run names the task by position; a slot before it whose task was
    dropped is never read). A call never started was cancelled."""
    if stop_on_error:
        for n, outcome in enumerate(outcomes):
            if outcome is not None and outcome[0] != VALUE:
                return [o if o is not None else (VALUE, None) for o in outcomes[: n + 1]]
    return [o if o is not None else (RAISED, asyncio.CancelledError()) for o in outcomes]
