"""The half of a remote backend (dask, Ray) that runs on the engine's worker: one batch.

Kept apart so a worker imports only what it runs: the standard library and aioparallel's
errors (cloudpickle only for a value plain pickle cannot take; asyncio only for a batch with
async calls).

::

    run_calls(calls, start, stop_on_error, timeout, where)      one outcome per call, in order
      each call ─► value ─► (VALUE, pickle(value))  ─ pickled one by one, so an unpicklable
                 └► raised ─► (RAISED, pickle((exc, traceback text)))   result fails its task
      timeout: the call runs in a helper thread, abandoned when late (``alarm=False``: dask
               runs us in its threads), or on this main thread, interrupted by SIGALRM
               (``alarm=True``: a Ray task owns its worker's main thread)
    run_calls_async(...)   the same for a batch with async calls, on the running event loop
"""

from __future__ import annotations

import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

from ..._call import function_name
from ..._errors import AioParallelError, PicklingError, TaskTimeoutError

__all__ = [
    "RAISED",
    "VALUE",
    "Outcome",
    "Ran",
    "WireCall",
    "dumps",
    "pack_error",
    "run_calls",
    "run_calls_async",
]

#: (function, args, kwargs) as submitted: builtin containers, so an engine finds its handles
#: (dask's Futures) in them.
WireCall = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]
#: One call's outcome from the worker: (VALUE, pickled value) or (RAISED, pickled (exc, tb)).
Outcome = tuple[int, bytes]
#: A batch's answer: (seconds it ran on the worker, one outcome per call). The client cannot
#: time the work itself: with batches submitted ahead, a batch may first wait on its worker
#: behind another, and auto batching must size batches on the work, not on that wait.
Ran = tuple[float, list[Outcome | None]]

VALUE, RAISED = 0, 1


def dumps(value: Any) -> bytes:
    """pickle, falling back to cloudpickle for lambdas, closures and ``__main__``'s objects
    (as dask's own pickle does)."""
    try:
        blob: bytes | None = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # a lambda, a closure: by value
        blob = None
    if blob is not None and b"__main__" not in blob:
        return blob
    import cloudpickle

    return bytes(cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def run_calls(
    calls: list[WireCall],
    start: int,
    stop_on_error: bool,
    timeout: float | None,
    where: str,
    alarm: bool = False,
) -> Ran:
    """Run a batch's calls in order on the worker, timed; never raises (but for the
    interruption that cancels the engine's task). ``where`` names the worker in messages
    ("dask worker"); ``alarm``: see the module's drawing.

    Each value and exception is pickled here, one by one, rather than by the engine for the
    whole list: an unpicklable result then fails its own task, not the batch.
    """
    began = time.perf_counter()
    outcomes: list[Outcome | None] = list(
        _run_calls(calls, start, stop_on_error, timeout, where, alarm)
    )
    return time.perf_counter() - began, outcomes


def _run_calls(
    calls: list[WireCall],
    start: int,
    stop_on_error: bool,
    timeout: float | None,
    where: str,
    alarm: bool = False,
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    alarm = alarm and hasattr(signal, "setitimer") and _on_main_thread()
    for offset, (func, args, kwargs) in enumerate(calls):
        index = start + offset
        try:
            if timeout is None:
                value = func(*args, **kwargs)
            elif alarm:
                value = _call_until_alarm(func, args, kwargs, timeout)
            else:
                value = _call_with_timeout(func, args, kwargs, timeout, index)
        except _Overran:
            error = TaskTimeoutError(
                f"task {index} ({function_name(func)}) ran longer than timeout={timeout}s "
                f"on its {where}" + (" and was interrupted" if alarm else "")
            )
            outcomes.append(pack_error(error, None, where))
        except BaseException as exc:
            outcomes.append(pack_error(exc, "".join(traceback.format_exception(exc)), where))
        else:
            outcomes.append(_pack_value(value, index, func, where))
            if outcomes[-1][0] == VALUE:
                continue
        if stop_on_error:
            break
    return outcomes


class _Overran(BaseException):
    """A call ran past its timeout. A BaseException, so that a call's ``except Exception``
    does not swallow the interruption."""


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _call_with_timeout(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float,
    index: int,
) -> Any:
    """Run a call in a helper thread, so the worker can give up on it after ``timeout``.

    A thread cannot be stopped: the overrunning call goes on in the background and its
    result is dropped, as with the threads backend.
    """
    box: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            box.append((True, func(*args, **kwargs)))
        except BaseException as exc:
            box.append((False, exc))

    thread = threading.Thread(target=target, name=f"aioparallel-task-{index}", daemon=True)
    thread.start()
    thread.join(timeout)
    if not box:
        raise _Overran
    ok, value = box[0]
    if ok:
        return value
    raise value


def _call_until_alarm(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float
) -> Any:
    """Run a call on this (main) thread; SIGALRM interrupts it at ``timeout``, even in a
    sleep or a blocking read (Python checks signals between bytecodes and on EINTR)."""

    def overran(signum: int, frame: object) -> None:
        raise _Overran

    previous = signal.signal(signal.SIGALRM, overran)
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            return func(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)


def pack_error(exc: BaseException, tb: str | None, where: str) -> Outcome:
    """Pickle a task's exception with its traceback text, whatever the exception holds."""
    if not isinstance(exc, Exception):  # SystemExit, KeyboardInterrupt: not the worker's end
        exc = AioParallelError(f"the task raised {exc!r}, which does not stop a {where}")
    try:
        blob = dumps((exc, tb))
        pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt (extra __init__ args)
    except Exception as err:
        stand_in = PicklingError(
            f"the task raised {type(exc).__qualname__}: {exc}, which could not be pickled ({err!r})"
        )
        blob = pickle.dumps((stand_in, tb), protocol=pickle.HIGHEST_PROTOCOL)
    return (RAISED, blob)


def _pack_value(value: Any, index: int, func: Any, where: str) -> Outcome:
    try:
        return (VALUE, dumps(value))
    except Exception as exc:
        returned = getattr(type(value), "returned_by_task", None)
        if returned is not None:  # an un-awaited Parallel(...)(calls): say how to await it
            return pack_error(returned(value), None, where)
        error = PicklingError(
            f"the result of task {index} ({function_name(func)}), "
            f"a {type(value).__qualname__}, could not be pickled: {exc!r}"
        )
        return pack_error(error, "".join(traceback.format_exception(exc)), where)


#: Watches, beside a batch of async calls, whether the engine still wants the batch, and
#: cancels its coroutines (``tasks.cancel_all()``) when it does not.
Watcher = Callable[[Any], Coroutine[Any, Any, None]]


async def run_calls_async(
    calls: list[WireCall],
    flags: bytes,
    start: int,
    stop_on_error: bool,
    timeout: float | None,
    concurrency: int,
    where: str,
    watch: Watcher | None = None,
) -> Ran:
    """A batch with async calls, run on the running event loop: async calls as tasks,
    ``concurrency`` at most at once, each cancelled at its ``timeout``; sync calls one at a
    time in the loop's executor, so they never block it. One outcome per call, in input
    order; with ``stop_on_error``, calls dropped after the first failure are None.

    Cancelled (the engine cancels its task), the batch cancels its coroutines (their
    ``finally`` blocks run) before it ends; ``watch``, if given, may end the batch early the
    same way (dask does not cancel a running coroutine task: its watcher polls)."""
    import asyncio

    began = time.perf_counter()
    loop = asyncio.get_running_loop()
    batch = _AsyncBatch(loop, calls, start, stop_on_error, timeout, concurrency, where)
    watcher = loop.create_task(watch(batch.tasks)) if watch is not None else None
    try:
        for position, (call, flag) in enumerate(zip(calls, flags, strict=True)):
            if batch.failed or (watcher is not None and watcher.done()):
                break
            if flag:
                if not await batch.start(position, call):
                    break
                continue
            done = await loop.run_in_executor(
                None, _run_calls, [call], start + position, True, timeout, where
            )
            batch.settle(position, done[0])
        await batch.idle.wait()
    except asyncio.CancelledError:  # the engine cancelled the batch: so are the coroutines
        batch.tasks.cancel_all()
        raise
    finally:
        if watcher is not None:
            watcher.cancel()
    return time.perf_counter() - began, batch.outcomes


class _AsyncBatch:
    """A batch of ``run_calls_async`` on the worker's loop: one outcome per call, its async
    calls in flight (at most ``concurrency``), and whether it stopped at a failure."""

    def __init__(
        self,
        loop: Any,
        calls: list[WireCall],
        start: int,
        stop_on_error: bool,
        timeout: float | None,
        concurrency: int,
        where: str,
    ) -> None:
        import asyncio

        from ...child.async_loop import InFlight

        self.calls = calls
        self.start_index = start
        self.stop_on_error = stop_on_error
        self.timeout = timeout
        self.where = where
        self.outcomes: list[Outcome | None] = [None] * len(calls)
        self.room = asyncio.Semaphore(concurrency)
        #: Set while no async call is in flight.
        self.idle = asyncio.Event()
        self.idle.set()
        self.failed = False
        self.tasks = InFlight(loop, timeout, self.report, self.settled)

    async def start(self, position: int, call: WireCall) -> bool:
        """Start async call ``position`` once there is room; False if the batch stopped."""
        await self.room.acquire()
        if self.failed:
            return False
        self.idle.clear()
        self.tasks.start(position, *call)
        return True

    def settle(self, position: int, outcome: Outcome) -> None:
        """Call ``position``'s outcome; with ``stop_on_error``, a failure stops the batch."""
        self.outcomes[position] = outcome
        if outcome[0] == RAISED and self.stop_on_error:
            self.failed = True
            self.tasks.cancel_all()

    def report(self, position: int, kind: int, value: Any) -> None:
        """An async call ended (``InFlight``): a value, an exception, or its timeout."""
        from ...child.async_loop import RAISED as RAISED_KIND
        from ...child.async_loop import VALUE as VALUE_KIND

        index, func = self.start_index + position, self.calls[position][0]
        if kind == VALUE_KIND:
            outcome = _pack_value(value, index, func, self.where)
        elif kind == RAISED_KIND:
            outcome = pack_error(value, "".join(traceback.format_exception(value)), self.where)
        else:
            error = TimeoutError(
                f"task {index} ({function_name(func)}) ran past timeout={self.timeout}s on its "
                f"{self.where} and was cancelled"
            )
            outcome = pack_error(error, None, self.where)
        self.settle(position, outcome)

    def settled(self) -> None:
        """An async call's task is over: its room goes to the next one."""
        self.room.release()
        if not self.tasks.tasks:
            self.idle.set()
