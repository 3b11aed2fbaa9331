"""``backend="ray"``: each batch runs as one Ray task, on Ray's native tasks.

::

    run_batch(Batch)
      ├─ numpy arrays > max_nbytes ──ray.put (worker thread; once per array per run)──► object store
      │     id(array) -> ObjectRef, dropped when the array dies or the run ends
      ├─ run_batch.remote(calls, ..., *refs)  (a large batch in a worker thread, as Ray pickles
      │     it; max_retries=0: a crash is never re-run) ──────────────────────────► a worker
      │     arrays replaced by ArraySlot(i); the refs are top-level arguments,        │
      │     so the worker gets the arrays themselves, zero-copy                       ▼
      │                                 initializer once per worker process, then the calls in
      │                                 order, each value or exception pickled on its own
      ◄── ObjectRef.future() + Signal ◄─── [(kind, bytes), ...] ◄──────────────────┘
            value | Failure(task's exception + worker traceback) | WorkerCrashedError

    cancelled await ─► ray.cancel(ref) (KeyboardInterrupt in the task: coroutines cancelled,
                       finally blocks run); still running after _STOP_GRACE ─► ray.cancel(ref,
                       force=True) kills its worker process. Shielded and bounded.
    timeout=        ─► each call interrupted on the worker; a batch still running at
                       calls x timeout + _BACKSTOP_SLACK is cancelled as above (TaskTimeoutError)

Waiting for a batch is one wake-up of the caller's loop from Ray's own thread (the ref's
concurrent future sets a ``crossloop.Signal``): no polling, no thread per batch, the same on
asyncio and trio. Nothing in aioparallel imports this module unless ``backend="ray"`` is
asked for, so ``import aioparallel`` never imports ray.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import cloudpickle
import ray
import ray.exceptions as rex

from ..._call import function_name
from ..._coroutines import async_flags
from ..._errors import (
    AioParallelError,
    PicklingError,
    RemoteTraceback,
    TaskTimeoutError,
    attach_task,
)
from ..base import BackendArgs, Batch, Failure, RunBatch, RunOptions
from ..crossloop import Signal
from ..remote.client import (
    CLEANUP_GRACE,
    Arrays,
    SentArrays,
    crash_failures,
    resolve_n_jobs,
    unpack_outcomes,
    unsendable,
    wire_calls,
)
from ..remote.runner import Ran
from ..setup import Initializer, initializer_error
from .worker import ArraySlot, InitializerFailed, Setup, run_batch

__all__ = ["RayBackend", "build"]


def build(args: BackendArgs) -> RayBackend:
    """How the registry (``backends.base``) builds this backend from ``Parallel``'s settings: with
    ``n_jobs`` as given, since -1 means all of the cluster's CPUs."""
    return RayBackend(args.n_jobs, initializer=args.initializer, **args.options)


#: Seconds a cancelled Ray task may take to stop on its KeyboardInterrupt before it is killed.
_STOP_GRACE = 2.0
#: With a ``timeout``, seconds beyond ``calls x timeout`` before a batch is cancelled (see
#: ``_backstop``).
_BACKSTOP_SLACK = 30.0
#: Ray's errors that mean the process running the task is gone.
_DIED = (rex.WorkerCrashedError, rex.OutOfMemoryError, rex.NodeDiedError, rex.LocalRayletDiedError)

_connect_lock = threading.Lock()
_remote: Any = None


def _batch_task() -> Any:
    """``run_batch`` as a Ray remote function, made once: one CPU, and never retried (Ray
    retries a task whose worker died three times by default; a crash must not re-run calls)."""
    global _remote
    if _remote is None:
        _remote = ray.remote(num_cpus=1, max_retries=0, retry_exceptions=False)(run_batch)
    return _remote


#: Batches whose arguments look smaller than this (``_looks_small``) are submitted on the loop.
_INLINE_NBYTES = 64 * 1024


def _looks_small(calls: list[Any]) -> bool:
    """A shallow estimate of the calls' arguments (each argument, and the items of a list,
    tuple or dict argument), below ``_INLINE_NBYTES``: large arrays are already in the object
    store, and what else is large (a long string, a big list) shows at this depth."""
    total = 0
    for _func, args, kwargs in calls:
        for arg in (*args, *kwargs.values()):
            total += sys.getsizeof(arg)
            if type(arg) in (list, tuple, dict, set):
                items = arg.values() if type(arg) is dict else arg
                total += sum(sys.getsizeof(item) for item in items)
            if total > _INLINE_NBYTES:
                return False
    return True


def _submit(args: tuple[Any, ...]) -> Any:
    return _batch_task().remote(*args)


def _connect(address: str | None) -> int:
    """Connect this process to Ray unless it is already (``ray.init()`` by the user wins over
    ``address``); without an address, Ray's own rules apply: ``RAY_ADDRESS``, else a local
    instance, started here and kept for the life of the process. Returns the cluster's CPUs."""
    with _connect_lock:
        if not ray.is_initialized():
            ray.init(address=address)
    untyped: Any = ray  # cluster_resources is untyped (and all of ray is Any without it)
    resources: dict[str, float] = untyped.cluster_resources()
    return int(resources.get("CPU", 1))


class RayBackend:
    """Runs batches as Ray tasks, on the cluster this process is connected to.

    Parameters
    ----------
    n_jobs
        Ray tasks (batches) in flight at once. ``None`` or ``-1``: the cluster's CPUs when the
        backend is entered; ``-k``: that count minus ``k - 1``.
    address
        A Ray cluster address (``"ray://host:10001"``, ``"auto"``, ``"127.0.0.1:6379"``),
        used only if this process is not yet connected to Ray (``ray.init()`` first wins);
        neither: ``RAY_ADDRESS``, else a local Ray instance started on first use and kept
        until the process exits, as joblib's Ray backend does.
    initializer
        Run once in each Ray worker process, before the first batch it runs for a run with
        this ``(initializer, initargs)`` (Ray's worker processes come and go: one that runs
        none of our batches never runs it).
    """

    name = "ray"
    #: One Ray task per worker in flight: n_jobs bounds the tasks in flight.
    batches_per_worker = 1

    def __init__(
        self,
        n_jobs: int | None = None,
        address: str | None = None,
        initializer: Initializer | None = None,
    ) -> None:
        if n_jobs == 0 or isinstance(n_jobs, bool):
            raise ValueError(f"n_jobs={n_jobs!r} has no meaning for backend 'ray'")
        if address is not None and not isinstance(address, str):
            raise ValueError(f"backend 'ray' takes address= as a string, not {address!r}")
        self._n_jobs = n_jobs
        self._address = address
        self._initializer = initializer
        self._setup: Setup | None = None
        self.n_workers = n_jobs if n_jobs is not None and n_jobs > 0 else 1

    async def __aenter__(self) -> RayBackend:
        cpus = await anyio.to_thread.run_sync(_connect, self._address)
        self.n_workers = resolve_n_jobs(self._n_jobs, cpus)
        if self._initializer is not None and self._setup is None:
            self._setup = await anyio.to_thread.run_sync(_put_initializer, self._initializer)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass  # Ray's connection outlives the backend; the initializer's ref is tiny

    def open_run(self, options: RunOptions) -> AbstractAsyncContextManager[RunBatch]:
        """A run's arrays live in the object store for this context only."""
        return self._open_run(options)

    @asynccontextmanager
    async def _open_run(self, options: RunOptions) -> AsyncIterator[RunBatch]:
        if not ray.is_initialized():
            raise RuntimeError("enter the ray backend (async with) before running on it")
        run = _RayRun(options, self._setup)
        try:
            yield run.run_batch
        finally:
            run.arrays.release()


def _put_initializer(initializer: Initializer) -> Setup:
    try:
        blob = cloudpickle.dumps((initializer.func, initializer.args))
    except Exception as exc:  # a lock in initargs, say: nothing was sent
        raise PicklingError(
            f"the initializer {initializer.name} or its initargs could not be pickled: {exc!r}"
        ) from exc
    key = hashlib.sha256(blob).hexdigest()[:32]
    return (key, initializer.name, ray.put(blob))


async def _put(arrays: Arrays) -> dict[int, Any]:
    """Copy arrays into Ray's object store, in a worker thread (a large copy)."""
    return await anyio.to_thread.run_sync(lambda: {i: ray.put(a) for i, a in arrays.items()})


def _drop(ref: Any) -> None:
    """An ObjectRef is freed when the last reference to it goes: nothing to call."""


class _RayRun:
    """One run's client side: its arrays in the object store, and how a batch is sent,
    awaited, cancelled, and its answer read."""

    def __init__(self, options: RunOptions, setup: Setup | None) -> None:
        self.options = options
        self.setup = setup
        self.arrays = SentArrays(options.max_nbytes, _put, _drop)

    async def run_batch(self, batch: Batch) -> list[Any]:
        options = self.options
        name = function_name(batch.calls[0].func)
        refs = await self.arrays.handles(batch.calls)
        slots = {i: ArraySlot(position) for position, i in enumerate(refs)}
        args = (
            wire_calls(batch.calls, slots),
            async_flags(batch.calls),
            batch.start,
            options.stop_on_error,
            options.timeout,
            options.worker_concurrency,
            self.setup,
            *refs.values(),
        )
        # Ray pickles the batch as it submits it: a large one in a worker thread, off the event
        # loop, shielded so that a cancellation cannot lose a submitted task's ref (_wait
        # cancels it); a small one at once (a thread hop costs more than its pickling).
        try:
            if _looks_small(args[0]):
                ref = _submit(args)
            else:
                with anyio.CancelScope(shield=True):
                    ref = await anyio.to_thread.run_sync(_submit, args)
        except Exception as exc:  # Ray could not pickle the batch: nothing was sent
            if len(batch.calls) == 1:
                return unsendable(batch, name, exc)
            ref = None
        if ref is None:  # find the call that cannot be pickled, outside the except block
            return await self._one_by_one(batch)
        limit = _backstop(batch, options.timeout)
        answer = await _wait(ref, limit)
        if answer is None:  # past the backstop: the Ray task was cancelled, its worker killed
            return _overdue(batch, options.timeout, limit, options.stop_on_error)
        if isinstance(answer, BaseException):
            return await self._failed(batch, answer, name)
        ran, outcomes = answer
        batch.started = time.perf_counter() - ran  # auto batching times the work, not the wait
        return await unpack_outcomes(batch, outcomes, options.stop_on_error)

    async def _failed(self, batch: Batch, exc: BaseException, name: str) -> list[Any]:
        """The Ray task failed before or around our runner: map Ray's error."""
        if isinstance(exc, _DIED):
            return _crashed(batch, exc, self.options.stop_on_error)
        if isinstance(exc, rex.TaskCancelledError):
            raise AioParallelError(
                f"the Ray task of task {batch.start} ({name}) was cancelled outside "
                f"aioparallel: {exc}"
            ) from exc
        if isinstance(exc, rex.RayTaskError):
            cause = exc.cause
            if isinstance(cause, InitializerFailed):
                raise _initializer_failed(self.setup, cause)
            # run_batch catches everything once its calls start: this failed before (the
            # worker could not unpickle an argument; a module is missing there). Running
            # the calls one per task is then safe, and names the culprit.
            if len(batch.calls) > 1:
                return await self._one_by_one(batch)
            error = cause if isinstance(cause, BaseException) else exc
            attach_task(error, batch.start, name, str(exc))
            return [Failure(error)]
        raise AioParallelError(
            f"Ray failed to run task {batch.start} ({name}): {exc!r}. Is the cluster healthy?"
        ) from exc

    async def _one_by_one(self, batch: Batch) -> list[Any]:
        """Run a batch as one Ray task per call, to pin an error on its task."""
        results: list[Any] = []
        for offset, call in enumerate(batch.calls):
            results += await self.run_batch(Batch(batch.start + offset, [call]))
            if self.options.stop_on_error and type(results[-1]) is Failure:
                break
        return results


def _backstop(batch: Batch, timeout: float | None) -> float | None:
    """How long a batch may take with a ``timeout``: its calls one after another, each
    interrupted at ``timeout`` on the worker, plus ``_BACKSTOP_SLACK`` (a worker starting, the
    interruption). Only a call that cannot be interrupted (stuck in C code that never returns
    to Python) reaches it."""
    if timeout is None:
        return None
    return len(batch.calls) * timeout + _BACKSTOP_SLACK


def _overdue(batch: Batch, timeout: float | None, limit: float | None, stop: bool) -> list[Any]:
    """A ``TaskTimeoutError`` per task of a batch cancelled at its backstop."""
    end = batch.start + len(batch.calls) - 1
    together = f" (one Ray task with tasks {batch.start}..{end})" if end > batch.start else ""
    failures: list[Any] = []
    for offset, call in enumerate(batch.calls):
        index, name = batch.start + offset, function_name(call.func)
        error = TaskTimeoutError(
            f"task {index} ({name}){together} was still running {limit:g}s after it was sent, "
            f"past timeout={timeout}s, and did not stop when interrupted (code in C that "
            "never returns to Python?): its Ray task was cancelled and its worker killed."
        )
        attach_task(error, index, name)
        failures.append(Failure(error))
        if stop:
            break
    return failures


async def _wait(ref: Any, limit: float | None = None) -> Ran | BaseException | None:
    """The Ray task's answer, the error Ray raised for it, or None if it was still running
    after ``limit`` seconds. Cancelled or past ``limit``, the task is cancelled too
    (shielded, bounded): first gently, then by killing its worker."""
    future = ref.future()
    done = Signal()
    future.add_done_callback(lambda _: done.set())
    overdue = False
    try:
        with anyio.move_on_after(math.inf if limit is None else limit) as scope:
            await done.wait()
        overdue = scope.cancelled_caught
    finally:
        if not future.done():
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_GRACE):
                await _cancel(ref, done)
    if overdue:
        return None
    try:
        answer: Ran = future.result()
    except Exception as exc:  # Ray's error for this task, read outside the except block
        return exc
    return answer


async def _cancel(ref: Any, done: Signal) -> None:
    ray.cancel(ref, force=False)
    with anyio.move_on_after(_STOP_GRACE):
        await done.wait()
        return
    ray.cancel(ref, force=True)
    await done.wait()


def _crashed(batch: Batch, exc: BaseException, stop_on_error: bool) -> list[Any]:
    """The Ray worker process died running the batch → WorkerCrashedError per task."""
    why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__

    def describe(index: int, name: str, together: str) -> str:
        return (
            f"the Ray worker process died while running task {index} ({name}){together}; "
            f"Ray says: {why} The raylet's and workers' logs (/tmp/ray/session_latest/logs) "
            "tell why (memory, segfault, os._exit). It was not retried."
        )

    return crash_failures(batch, "Ray", describe, exc, stop_on_error)


def _initializer_failed(setup: Setup | None, failed: InitializerFailed) -> BaseException:
    error, tb = pickle.loads(failed.blob)
    if tb is not None:
        error.__cause__ = RemoteTraceback(f"\n\nWorker traceback of the initializer:\n{tb}")
    name = setup[1] if setup is not None else "?"
    return initializer_error(name, f"Ray worker process {failed.pid}", error)
