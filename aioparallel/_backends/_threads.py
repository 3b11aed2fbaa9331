"""Thread workers: anyio worker threads, at most ``n_jobs`` at once.

Threads cannot be killed. A cancelled or timed-out call keeps running in the background and
its result is dropped; the run does not wait for it. A cancelled batch starts no further
call: the thread checks the batch's ``stop`` event before each one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread

from .._call import Call, function_name
from .._errors import TaskTimeoutError, attach_task
from .._nesting import deeper
from ._base import Batch, Failure, RunBatch, RunOptions

__all__ = ["ThreadBackend"]


def run_calls(
    start: int, calls: list[Call[Any]], stop_on_error: bool, stop: threading.Event | None = None
) -> list[Any]:
    """Run ``calls`` in order; each outcome, whatever it raised, goes in its slot.

    Stops early at the first failure (with ``stop_on_error``) or once ``stop`` is set.
    Shared by the thread and sequential backends.
    """
    results: list[Any] = []
    for offset, call in enumerate(calls):
        if stop is not None and stop.is_set():
            break
        try:
            results.append(call.func(*call.args, **call.kwargs))
        except BaseException as exc:  # the task's outcome, whatever its type (SPEC §6)
            attach_task(exc, start + offset, function_name(call.func))
            results.append(Failure(exc))
            if stop_on_error:
                break
    return results


class ThreadBackend:
    """``n_jobs`` threads of anyio's worker-thread pool."""

    name = "threads"

    def __init__(self, n_jobs: int):
        self.n_workers = n_jobs
        self._limiter: anyio.CapacityLimiter | None = None

    async def __aenter__(self) -> ThreadBackend:
        self._limiter = anyio.CapacityLimiter(self.n_workers)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._limiter = None

    @asynccontextmanager
    async def open_run(self, options: RunOptions) -> AsyncIterator[RunBatch]:
        limiter = self._limiter
        if limiter is None:
            raise RuntimeError("ThreadBackend used outside 'async with'")
        timeout = options.timeout

        async def run_batch(batch: Batch) -> list[Any]:
            calls = list(batch.calls)
            if timeout is None:
                stop = threading.Event()
                try:
                    return await anyio.to_thread.run_sync(
                        deeper(run_calls), batch.start, calls, options.stop_on_error, stop,
                        limiter=limiter, abandon_on_cancel=True,
                    )  # fmt: skip
                finally:
                    stop.set()  # cancelled: the thread starts no further call
            # One thread hop per call, so each call gets its own deadline.
            results: list[Any] = []
            for offset, call in enumerate(calls):
                index = batch.start + offset
                async with limiter:  # waiting for a thread is not part of the timeout
                    began = time.monotonic()
                    with anyio.move_on_after(timeout) as scope:
                        value = await anyio.to_thread.run_sync(
                            deeper(run_calls), index, [call], options.stop_on_error,
                            abandon_on_cancel=True,
                        )  # fmt: skip
                if scope.cancelled_caught:
                    name = function_name(call.func)
                    exc = TaskTimeoutError(
                        f"task {index} ({name}) ran past timeout={timeout:g}s "
                        f"({time.monotonic() - began:.2f}s); its thread keeps running "
                        "in the background and its result will be dropped"
                    )
                    attach_task(exc, index, name)
                    value = [Failure(exc)]
                results.extend(value)
                if options.stop_on_error and type(value[0]) is Failure:
                    break
            return results

        yield run_batch
