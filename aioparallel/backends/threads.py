"""Thread workers: anyio worker threads, at most ``n_jobs`` at once.

Threads cannot be killed. A cancelled or timed-out call keeps running in the background and
its result is dropped; the run does not wait for it. A cancelled batch starts no further
call: the thread checks the batch's ``stop`` event before each one. A batch with async calls
runs on an event loop of its thread (``thread_loop.run_calls_on_loop``); its coroutines are
cancelled when the run is, and it starts no further call.

Under a ``timeout`` the parent holds each task's deadline (``timed``): sync calls one thread
hop each, async ones watched on their loop, both on daemon threads that a call given up on
cannot keep from exiting.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread

from .._call import Call, function_name
from .._coroutines import async_flags, is_coroutine
from .._errors import TaskTimeoutError, attach_task
from .._nesting import deeper
from ..child.async_loop import BLOCKED_MARGIN, CANCEL_GRACE, RAISED, VALUE, TimedOut
from .base import BackendArgs, Batch, Failure, RunBatch, RunOptions
from .failures import async_timeout_error
from .setup import Initializer, InitOnce
from .thread_loop import LoopHandle, run_calls_on_loop
from .timed import DaemonThreads, Watch

__all__ = ["ThreadBackend", "build"]


def build(args: BackendArgs) -> ThreadBackend:
    """How the registry (``backends.base``) builds this backend from ``Parallel``'s settings."""
    return ThreadBackend(args.n_workers, args.initializer)


def run_calls(
    start: int,
    calls: Sequence[Call[Any]],
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
        except BaseException as exc:  # the task's outcome, whatever its type
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
    Calls under a ``timeout`` run on daemon threads of this backend instead (``timed``),
    with the same rule for the initializer.
    """

    name = "threads"

    def __init__(self, n_jobs: int, initializer: Initializer | None = None):
        self.n_workers = n_jobs
        self._init = None if initializer is None else InitOnce(initializer)
        self._limiter: anyio.CapacityLimiter | None = None
        self._daemons: DaemonThreads | None = None

    async def __aenter__(self) -> ThreadBackend:
        self._limiter = anyio.CapacityLimiter(self.n_workers)
        self._daemons = DaemonThreads()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._daemons is not None:
            self._daemons.close()
        self._limiter = self._daemons = None

    @asynccontextmanager
    async def open_run(self, options: RunOptions) -> AsyncIterator[RunBatch]:
        limiter, daemons = self._limiter, self._daemons
        if limiter is None or daemons is None:
            raise RuntimeError("ThreadBackend used outside 'async with'")
        timeout = options.timeout
        init = self._init

        async def run_batch(batch: Batch) -> list[Any]:
            calls = batch.calls  # not copied: one function's calls stay argument tuples
            flags = async_flags(calls)
            if flags is not None and timeout is None:
                return await _run_on_loop(batch.start, calls, flags, options, limiter, init)
            if flags is not None and all(flags):
                return await _run_timed_on_loop(batch.start, calls, options, limiter, daemons, init)
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
                    value = await _run_timed_on_loop(index, [call], options, limiter, daemons, init)
                    results.extend(value)
                    if options.stop_on_error and type(value[0]) is Failure:
                        break
                    continue
                async with limiter:  # waiting for a thread is not part of the timeout
                    began = time.monotonic()
                    with anyio.move_on_after(timeout) as scope:
                        value = await daemons.run(
                            deeper(run_calls), index, [call], options.stop_on_error, None, init
                        )
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
    calls: Sequence[Call[Any]],
    flags: bytes,
    options: RunOptions,
    limiter: anyio.CapacityLimiter,
    init: Callable[[], None] | None = None,
) -> list[Any]:
    """A batch with async calls, on an event loop of one thread worker."""
    handle = LoopHandle()
    wire = [(c.func, c.args, c.kwargs, bool(flag)) for c, flag in zip(calls, flags, strict=True)]
    try:
        outcomes = await anyio.to_thread.run_sync(
            deeper(_initialized), init, run_calls_on_loop, wire, options.timeout,
            options.worker_concurrency, options.stop_on_error, handle,
            limiter=limiter, abandon_on_cancel=True,
        )  # fmt: skip
    except anyio.get_cancelled_exc_class():
        handle.cancel()  # its coroutines' finally blocks run, in the background
        raise
    return [
        _outcome(start + offset, calls[offset], kind, value, options.timeout)
        for offset, (kind, value) in enumerate(outcomes)
    ]


def _outcome(index: int, call: Call[Any], kind: int, value: Any, timeout: float | None) -> Any:
    """A result slot from the loop's ``(kind, value)`` for task ``index``."""
    if kind == VALUE:
        return value
    name = function_name(call.func)
    if isinstance(value, TimedOut):
        value = async_timeout_error(index, name, timeout or 0.0, value.elapsed, None, value.stuck)
    else:
        attach_task(value, index, name)
    return Failure(value)


def _blocked_error(
    index: int, name: str, timeout: float, elapsed: float, blocker: str | None = None
) -> TaskTimeoutError:
    """An async task ran past its timeout without its loop coming back (a sync call inside
    async code): nothing there could cancel it, so the parent failed it. ``blocker``: the
    task that blocks the loop, when it is another one."""
    if blocker is None:
        why = (
            "without giving its thread's event loop back (a blocking sync call inside async "
            "code?), so it could not be cancelled"
        )
    else:
        why = f"while {blocker} blocked their thread's event loop"
    error = TaskTimeoutError(
        f"task {index} ({name}) ran past timeout={timeout:g}s ({elapsed:.1f}s) {why}: the "
        "thread keeps running it in the background and its result is dropped. Await "
        "non-blocking calls, or run the blocking part as a sync task"
    )
    attach_task(error, index, name)
    return error


async def _run_timed_on_loop(
    start: int,
    calls: Sequence[Call[Any]],
    options: RunOptions,
    limiter: anyio.CapacityLimiter,
    daemons: DaemonThreads,
    init: Callable[[], None] | None = None,
) -> list[Any]:
    """Async calls under a timeout, on an event loop of one daemon thread, the parent
    holding each one's deadline (``Watch``). The tasks that had not begun when the parent
    gave up on the thread run on another one."""
    timeout = options.timeout
    assert timeout is not None
    watch, handle = Watch(start), LoopHandle()
    wire = [(watch.timed(p, c.func), c.args, c.kwargs, True) for p, c in enumerate(calls)]
    async with limiter:  # waiting for a thread is not part of the timeout
        job = daemons.submit(
            deeper(_initialized), init, run_calls_on_loop, wire, timeout,
            options.worker_concurrency, options.stop_on_error, handle,
        )  # fmt: skip
        try:
            finished = await watch.hold(job, timeout + CANCEL_GRACE + BLOCKED_MARGIN)
        except BaseException:  # cancelled: its coroutines' finally blocks run, in the background
            daemons.give_up(job)
            handle.cancel()
            raise
        if not finished:  # a task blocks the loop: what runs there is dropped
            daemons.give_up(job)
            handle.cancel()
    outcomes = job.result() if finished else None  # an InitializerError is raised here
    results: list[Any] = []
    for p in range(len(calls)):
        if outcomes is not None and p >= len(outcomes):  # stopped at an earlier failure
            break
        outcome = None if outcomes is None else outcomes[p]
        result = _timed_outcome(calls, p, watch, outcome, timeout)
        if result is _NOT_BEGUN:  # given up on before it began: run it and the rest again
            rest = await _run_timed_on_loop(start + p, calls[p:], options, limiter, daemons, init)
            return results + rest
        results.append(result)
        if options.stop_on_error and type(result) is Failure:
            break
    return results


_NOT_BEGUN = object()


def _timed_outcome(
    calls: Sequence[Call[Any]],
    p: int,
    watch: Watch,
    outcome: tuple[int, Any] | None,
    timeout: float,
) -> Any:
    """The result slot of the batch's call ``p``, from the parent's ``watch`` and (if its
    thread returned) the loop's ``outcome``; ``_NOT_BEGUN`` if it never began on a thread
    given up on."""
    call, index = calls[p], watch.start + p
    name = function_name(call.func)
    ended = watch.ended.get(p)
    if watch.given_up and p not in watch.began:  # NotStarted, if its thread came back
        return _NOT_BEGUN
    if p in watch.overdue:
        blocker = watch.blocker
        by = None
        if blocker is not None and blocker != p:
            by = f"task {watch.start + blocker} ({function_name(calls[blocker].func)})"
        return Failure(_blocked_error(index, name, timeout, watch.overdue[p], by))
    if outcome is not None and isinstance(outcome[1], TimedOut):  # cancelled on its loop
        return _outcome(index, call, outcome[0], outcome[1], timeout)
    if ended is not None and ended[0] > timeout:  # it came back, but too late
        return Failure(_blocked_error(index, name, timeout, ended[0]))
    if outcome is not None:
        return _outcome(index, call, outcome[0], outcome[1], timeout)
    if ended is not None:
        return _outcome(index, call, RAISED if ended[1] else VALUE, ended[2], timeout)
    return _NOT_BEGUN
