"""Thread workers: anyio worker threads, at most ``n_jobs`` at once.

Threads cannot be killed. A cancelled or timed-out call keeps running in the background and
its result is dropped; the run does not wait for it. A cancelled batch starts no further
call: the thread checks the batch's ``stop`` event before each one. A batch with async calls
runs on an event loop of its thread (``_async_runner.run_calls_on_loop``); its coroutines are
cancelled when the run is, and it starts no further call.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread

from .._call import Call, function_name
from .._coroutines import async_flags, is_coroutine
from .._errors import TaskTimeoutError, attach_task
from .._nesting import deeper
from ._async_runner import VALUE, LoopHandle, TimedOut, run_calls_on_loop
from ._base import Batch, Failure, RunBatch, RunOptions
from ._failures import async_timeout_error
from ._setup import Initializer, InitOnce

__all__ = ["ThreadBackend"]


def run_calls(
    start: int,
    calls: list[Call[Any]],
    stop_on_error: bool,
    stop: threading.Event | None = None,
    init: Callable[[], None] | None = None,
    run_coroutine: Callable[[Coroutine[Any, Any, Any]], Any] | None = asyncio.run,
) -> list[Any]:
    """Run ``calls`` in order; each outcome, whatever it raised, goes in its slot.

    Stops early at the first failure (with ``stop_on_error``) or once ``stop`` is set.
    ``init`` first makes sure this thread ran the user's initializer (its failure is the
    run's ``InitializerError``, raised, not a task's outcome). A coroutine a call returns is
    run by ``run_coroutine`` (on a thread: its own loop), or with None handed back as is
    (the sequential backend awaits it in the caller's loop). Shared by the thread and
    sequential backends.
    """
    if init is not None:
        init()
    results: list[Any] = []
    for offset, call in enumerate(calls):
        if stop is not None and stop.is_set():
            break
        try:
            value = call.func(*call.args, **call.kwargs)
            if run_coroutine is not None and is_coroutine(value):
                value = run_coroutine(value)
            results.append(value)
        except BaseException as exc:  # the task's outcome, whatever its type (SPEC §6)
            attach_task(exc, start + offset, function_name(call.func))
            results.append(Failure(exc))
            if stop_on_error:
                break
    return results


class ThreadBackend:
    """``n_jobs`` threads of anyio's worker-thread pool.

    anyio's worker threads are shared by the whole event loop and come and go (idle ones
    exit after a while), so "a worker" is whichever thread runs a batch: the ``initializer``
    runs once in each thread before its first call of this backend's runs (an ``async with
    Parallel()`` block, or one run) — possibly on more than ``n_jobs`` threads over time.
    """

    name = "threads"

    def __init__(self, n_jobs: int, initializer: Initializer | None = None):
        self.n_workers = n_jobs
        self._init = None if initializer is None else InitOnce(initializer)
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
        init = self._init

        async def run_batch(batch: Batch) -> list[Any]:
            calls = list(batch.calls)
            flags = async_flags(calls)
            if flags is not None and (timeout is None or all(flags)):
                return await _run_on_loop(batch.start, calls, flags, options, limiter, init)
            if timeout is None:
                stop = threading.Event()
                try:
                    return await anyio.to_thread.run_sync(
                        deeper(run_calls), batch.start, calls, options.stop_on_error, stop, init,
                        limiter=limiter, abandon_on_cancel=True,
                    )  # fmt: skip
                finally:
                    stop.set()  # cancelled: the thread starts no further call
            # One thread hop per call, so each call gets its own deadline.
            results: list[Any] = []
            for offset, call in enumerate(calls):
                index = batch.start + offset
                if flags is not None and flags[offset]:  # mixed with sync calls: one by one
                    value = await _run_on_loop(index, [call], b"\x01", options, limiter, init)
                    results.extend(value)
                    if options.stop_on_error and type(value[0]) is Failure:
                        break
                    continue
                async with limiter:  # waiting for a thread is not part of the timeout
                    began = time.monotonic()
                    with anyio.move_on_after(timeout) as scope:
                        value = await anyio.to_thread.run_sync(
                            deeper(run_calls), index, [call], options.stop_on_error, None, init,
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


def _initialized(init: Callable[[], None] | None, run: Callable[..., Any], *args: Any) -> Any:
    """``run(*args)`` in this thread, once it has run the user's initializer."""
    if init is not None:
        init()
    return run(*args)


async def _run_on_loop(
    start: int,
    calls: list[Call[Any]],
    flags: bytes,
    options: RunOptions,
    limiter: anyio.CapacityLimiter,
    init: Callable[[], None] | None = None,
) -> list[Any]:
    """A batch with async calls, on an event loop of one thread worker (SPEC §8)."""
    handle = LoopHandle()
    wire = [(c.func, c.args, c.kwargs, bool(flag)) for c, flag in zip(calls, flags, strict=True)]
    try:
        outcomes = await anyio.to_thread.run_sync(
            _initialized, init, run_calls_on_loop, wire, options.timeout,
            options.worker_concurrency, options.stop_on_error, handle,
            limiter=limiter, abandon_on_cancel=True,
        )  # fmt: skip
    except anyio.get_cancelled_exc_class():
        handle.cancel()  # its coroutines' finally blocks run, in the background
        raise
    results: list[Any] = []
    for offset, (kind, value) in enumerate(outcomes):
        index, name = start + offset, function_name(calls[offset].func)
        if kind == VALUE:
            results.append(value)
            continue
        if isinstance(value, TimedOut):
            value = async_timeout_error(
                index, name, options.timeout or 0.0, value.elapsed, None, value.stuck
            )
        else:
            attach_task(value, index, name)
        results.append(Failure(value))
    return results
