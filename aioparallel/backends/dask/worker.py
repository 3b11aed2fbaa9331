"""The half of ``backend="dask"`` that runs inside a dask worker's thread.

Kept apart so a worker imports only what it runs: the standard library, dask's pickle
(already loaded there) and aioparallel's errors.
"""

from __future__ import annotations

import pickle
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from distributed.protocol import pickle as dask_pickle

from ..._call import function_name
from ..._errors import AioParallelError, PicklingError, TaskTimeoutError

__all__ = ["RAISED", "VALUE", "Outcome", "Ran", "WireCall", "run_calls", "run_calls_async"]

#: (function, args, kwargs) as submitted: builtin containers, so dask finds the Futures in them.
WireCall = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]
#: One call's outcome from the worker: (VALUE, pickled value) or (RAISED, pickled (exc, tb)).
Outcome = tuple[int, bytes]
#: A batch's answer: (seconds it ran on the worker, one outcome per call). The client cannot
#: time the work itself: with batches submitted ahead, a batch may first wait on its worker
#: behind another, and auto batching must size batches on the work, not on that wait.
Ran = tuple[float, list[Outcome | None]]

VALUE, RAISED = 0, 1
#: pickle, falling back to cloudpickle for lambdas and closures (as dask itself does).
_dumps: Callable[..., bytes] = dask_pickle.dumps


def run_calls(calls: list[WireCall], start: int, stop_on_error: bool, timeout: float | None) -> Ran:
    """Run a batch's calls in order on the worker, timed; never raises.

    Each value and exception is pickled here, one by one, rather than by dask for the whole
    list: an unpicklable result then fails its own task, not the batch.
    """
    began = time.perf_counter()
    outcomes: list[Outcome | None] = list(_run_calls(calls, start, stop_on_error, timeout))
    return time.perf_counter() - began, outcomes


def _run_calls(
    calls: list[WireCall], start: int, stop_on_error: bool, timeout: float | None
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for offset, (func, args, kwargs) in enumerate(calls):
        index = start + offset
        try:
            if timeout is None:
                value = func(*args, **kwargs)
            else:
                value = _call_with_timeout(func, args, kwargs, timeout, index)
        except _Overran as overran:
            outcomes.append(_pack_error(overran.error, None))
        except BaseException as exc:
            outcomes.append(_pack_error(exc, "".join(traceback.format_exception(exc))))
        else:
            outcomes.append(_pack_value(value, index, func))
            if outcomes[-1][0] == VALUE:
                continue
        if stop_on_error:
            break
    return outcomes


class _Overran(Exception):
    """A call ran past its timeout (wraps the TaskTimeoutError the caller will see)."""

    def __init__(self, error: TaskTimeoutError) -> None:
        super().__init__(str(error))
        self.error = error


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
        raise _Overran(
            TaskTimeoutError(
                f"task {index} ({function_name(func)}) ran longer than timeout={timeout}s "
                "on its dask worker"
            )
        )
    ok, value = box[0]
    if ok:
        return value
    raise value


def _pack_error(exc: BaseException, tb: str | None) -> Outcome:
    """Pickle a task's exception with its traceback text, whatever the exception holds."""
    if not isinstance(exc, Exception):  # SystemExit, KeyboardInterrupt: not the worker's end
        exc = AioParallelError(f"the task raised {exc!r}, which does not stop a dask worker")
    try:
        blob = _dumps((exc, tb), protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt (extra __init__ args)
    except Exception as err:
        stand_in = PicklingError(
            f"the task raised {type(exc).__qualname__}: {exc}, which could not be pickled ({err!r})"
        )
        blob = pickle.dumps((stand_in, tb), protocol=pickle.HIGHEST_PROTOCOL)
    return (RAISED, blob)


async def run_calls_async(
    calls: list[WireCall],
    flags: bytes,
    start: int,
    stop_on_error: bool,
    timeout: float | None,
    concurrency: int,
    key: str,
) -> Ran:
    """A batch with async calls, run on the dask worker's event loop (distributed
    awaits coroutine functions there): async calls as tasks, ``concurrency`` at most at
    once, each cancelled at its ``timeout``; sync calls one at a time in the worker's
    executor, so they never block its loop. One outcome per call, in input order; with
    ``stop_on_error``, calls dropped after the first failure are None.

    distributed cancels a running coroutine task only when its worker closes, not when the
    client cancels its future: so the batch watches its own ``key`` and cancels its
    coroutines (their ``finally`` blocks run) once the worker no longer wants it."""
    import asyncio

    began = time.perf_counter()
    loop = asyncio.get_running_loop()
    batch = _AsyncBatch(loop, calls, start, stop_on_error, timeout, concurrency)
    watcher = loop.create_task(_cancel_when_released(key, batch.tasks))
    try:
        for position, (call, flag) in enumerate(zip(calls, flags, strict=True)):
            if batch.failed or watcher.done():
                break
            if flag:
                if not await batch.start(position, call):
                    break
                continue
            done = await loop.run_in_executor(
                None, _run_calls, [call], start + position, True, timeout
            )
            batch.settle(position, done[0])
        await batch.idle.wait()
    except asyncio.CancelledError:  # the worker is closing: so are the coroutines
        batch.tasks.cancel_all()
        raise
    finally:
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
    ) -> None:
        import asyncio

        from ...child.async_loop import InFlight

        self.calls = calls
        self.start_index = start
        self.stop_on_error = stop_on_error
        self.timeout = timeout
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
            outcome = _pack_value(value, index, func)
        elif kind == RAISED_KIND:
            outcome = _pack_error(value, "".join(traceback.format_exception(value)))
        else:
            error = TimeoutError(
                f"task {index} ({function_name(func)}) ran past timeout={self.timeout}s on its "
                "dask worker and was cancelled"
            )
            outcome = _pack_error(error, None)
        self.settle(position, outcome)

    def settled(self) -> None:
        """An async call's task is over: its room goes to the next one."""
        self.room.release()
        if not self.tasks.tasks:
            self.idle.set()


#: How often a batch of async calls checks that the scheduler still wants it.
_RELEASED_POLL = 0.1


async def _cancel_when_released(key: str, tasks: Any) -> None:
    import asyncio

    from distributed import get_worker

    worker = get_worker()
    while True:
        await asyncio.sleep(_RELEASED_POLL)
        state = worker.state.tasks.get(key)
        if state is None or state.state in ("cancelled", "released", "forgotten"):
            tasks.cancel_all()
            return


def _pack_value(value: Any, index: int, func: Any) -> Outcome:
    try:
        return (VALUE, _dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception as exc:
        returned = getattr(type(value), "returned_by_task", None)
        if returned is not None:  # an un-awaited Parallel(...)(calls): say how to await it
            return _pack_error(returned(value), None)
        error = PicklingError(
            f"the result of task {index} ({function_name(func)}), "
            f"a {type(value).__qualname__}, could not be pickled: {exc!r}"
        )
        return _pack_error(error, "".join(traceback.format_exception(exc)))
