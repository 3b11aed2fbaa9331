"""Thread workers: anyio worker threads, at most ``n_jobs`` at once.

Threads cannot be killed. A cancelled or timed-out call keeps running in the background and
its result is dropped; the run does not wait for it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread

from .._call import Call, function_name
from .._errors import attach_task
from ._base import Batch, Failure, RunBatch, RunOptions

__all__ = ["ThreadBackend"]


def _run_calls(start: int, calls: list[Call[Any]], stop_on_error: bool) -> list[Any]:
    """Runs in a worker thread."""
    results: list[Any] = []
    for offset, call in enumerate(calls):
        try:
            results.append(call.func(*call.args, **call.kwargs))
        except Exception as exc:
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
                return await anyio.to_thread.run_sync(
                    _run_calls, batch.start, calls, options.stop_on_error,
                    limiter=limiter, abandon_on_cancel=True,
                )  # fmt: skip
            # One thread hop per call, so each call gets its own deadline.
            results: list[Any] = []
            for offset, call in enumerate(calls):
                index = batch.start + offset
                async with limiter:  # waiting for a thread is not part of the timeout
                    began = time.monotonic()
                    with anyio.move_on_after(timeout) as scope:
                        value = await anyio.to_thread.run_sync(
                            _run_calls, index, [call], options.stop_on_error,
                            abandon_on_cancel=True,
                        )  # fmt: skip
                if scope.cancelled_caught:
                    name = function_name(call.func)
                    exc = TimeoutError(
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
