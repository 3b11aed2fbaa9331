"""``backend="dask"``: each batch runs as one task on a dask.distributed cluster.

::

    run_batch(Batch)
      ├─ numpy arrays > max_nbytes ──client.scatter (once per array per run)──► cluster memory
      │     id(array) -> Future, dropped (and released) when the array dies or the run ends
      ├─ client.submit(run_calls, [(f, args, kwargs), ...], pure=False) ───► a worker thread
      │     arrays replaced by their Futures; dask hands the worker the data      │
      │                                                                          ▼
      │                                     calls in order; each value or exception pickled
      │                                     on its own, so a bad one is pinned on its task
      ◄── await future ◄──────────── [(kind, bytes), ...] ◄─────────────────────┘
            value | Failure(task's exception + worker traceback) | Failure(SerializationError)

    cancelled await ─► client.cancel(future), shielded and bounded
    KilledWorker    ─► other batches were in flight: run it again alone (they finish, new
                       ones wait), as dask blames a death on every task the worker held;
                       alone ─► WorkerCrashedError naming the batch's first task
    initializer=    ─► a worker plugin, registered once per cluster and (initializer, initargs)

The client is asynchronous and lives on the caller's event loop, so waiting for a batch is
one ``await`` on its dask future: no polling, no thread per batch. Nothing in aioparallel
imports this module unless ``backend="dask"`` is asked for, so ``import aioparallel`` never
imports dask.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import traceback
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import cloudpickle
from distributed import Client, KilledWorker
from distributed.diagnostics.plugin import WorkerPlugin

from ..._call import function_name
from ..._coroutines import async_flags
from ..._errors import AioParallelError, PicklingError, attach_task
from ..base import BackendArgs, Batch, Failure, RunBatch, RunOptions
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
from ..setup import Initializer, initializer_error
from .worker import Ran, WireCall, run_calls, run_calls_async

__all__ = ["DaskBackend", "build"]


def build(args: BackendArgs) -> DaskBackend:
    """How the registry (``backends.base``) builds this backend from ``Parallel``'s settings: with
    ``n_jobs`` as given, since -1 means all of the cluster's threads."""
    return DaskBackend(args.n_jobs, initializer=args.initializer, **args.options)


_HOW = (
    'give the backend a cluster: parallel_config(backend="dask", client=client) with a '
    'distributed.Client, or parallel_config(backend="dask", address="tcp://127.0.0.1:8786")'
)


class DaskBackend:
    """Runs batches on a dask.distributed cluster through an asynchronous ``Client``.

    Parameters
    ----------
    n_jobs
        Batches in flight at once. ``None`` or ``-1``: the cluster's thread count when the
        backend is entered; ``-k``: that count minus ``k - 1``.
    client
        A ``distributed.Client``; it is borrowed, never closed. An asynchronous client on the
        caller's event loop is used as is; any other (a synchronous client, say) lends only
        its scheduler address, to which the backend opens its own asynchronous client.
    address
        A scheduler address such as ``"tcp://127.0.0.1:8786"``; the backend opens a client on
        entry and closes it on exit.
    initializer
        Run once in each dask worker process, those that join later included, before it runs
        our tasks: a worker plugin, registered on entry (see `_InitializerPlugin`).
    """

    name = "dask"
    #: Two batches in flight per worker thread (joblib's dask backend keeps 2 x n_jobs): the
    #: scheduler hands a worker its next batch while it runs one, so the client round trip
    #: (result back, next batch out: ~14 ms on one machine, more over a network) overlaps
    #: work instead of idling the worker. ``pre_dispatch`` still bounds the calls in flight.
    batches_per_worker = 2
    #: Each batch is a dask task, with the scheduler's bookkeeping: batches of ~0.2 s of
    #: work pay it less often (as joblib's dask backend aims for).
    batch_seconds = 0.2

    def __init__(
        self,
        n_jobs: int | None = None,
        client: Client | None = None,
        address: str | None = None,
        initializer: Initializer | None = None,
    ) -> None:
        if client is None and address is None:
            raise ValueError(f"backend 'dask' needs a client or a scheduler address: {_HOW}")
        if client is not None and address is not None:
            raise ValueError("backend 'dask' takes client= or address=, not both")
        if n_jobs == 0 or isinstance(n_jobs, bool):
            raise ValueError(f"n_jobs={n_jobs!r} has no meaning for backend 'dask'")
        self._n_jobs = n_jobs
        self._given = client
        self._address = address
        self._initializer = initializer
        #: distributed's Client is mostly untyped: held as Any, like its Futures.
        self._client: Any = None
        self._owns_client = False
        self.n_workers = n_jobs if n_jobs is not None and n_jobs > 0 else 1

    async def __aenter__(self) -> DaskBackend:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "backend 'dask' needs an asyncio event loop (distributed runs on asyncio); "
                "run this under asyncio or uvloop, or pick another backend under trio"
            ) from None
        given: Any = self._given
        if given is not None and given.status != "running":
            raise ValueError(f"the dask client is {given.status}, not running: {_HOW}")
        if given is not None and given.asynchronous:  # on this event loop: use it as is
            self._client = given
        else:
            address = self._address if given is None else given.scheduler.address
            # Not set as dask's default client: that one belongs to the user.
            self._client = await Client(  # type: ignore[no-untyped-call]
                address, asynchronous=True, set_as_default=False
            )
            self._owns_client = True
        connected = False
        try:
            info = await self._client.scheduler.identity(n_workers=0)
            if self._initializer is not None:
                await _register_initializer(self._client, self._initializer)
            connected = True
        finally:  # not in an except block: our cleanup must not chain into the user's error
            if not connected:
                await self.__aexit__(None, None, None)
        self.n_workers = resolve_n_jobs(self._n_jobs, int(info["total_threads"]))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            self._owns_client = False
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_GRACE):
                await client.close()

    def open_run(self, options: RunOptions) -> AbstractAsyncContextManager[RunBatch]:
        """A run's scattered arrays live in this context and are released when it ends."""
        return self._open_run(options)

    @asynccontextmanager
    async def _open_run(self, options: RunOptions) -> AsyncIterator[RunBatch]:
        if self._client is None:
            raise RuntimeError("enter the dask backend (async with) before running on it")
        run = _DaskRun(self._client, options)
        try:
            yield run.run_batch
        finally:
            run.release()


class _InitializerPlugin(WorkerPlugin):
    """Runs ``initializer(*initargs)`` in each dask worker process as it sets the plugin up:
    the workers there when it is registered, and any that join (or restart) later.

    distributed catches only ``Exception`` from ``setup``: anything else the initializer
    raises (``SystemExit``, say) is carried in a ``RuntimeError`` so that it too comes back
    to the caller instead of taking the worker down.
    """

    #: Asked for a name the scheduler already has, registration is a no-op.
    idempotent = True

    def __init__(self, initializer: Initializer) -> None:
        self.initializer = initializer

    def setup(self, worker: Any) -> None:
        try:
            self.initializer.func(*self.initializer.args)
        except Exception:
            raise
        except BaseException as exc:  # the initializer's own outcome, of any type
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from exc


async def _register_initializer(client: Any, initializer: Initializer) -> None:
    """Register the initializer's plugin, named by its pickled pair.

    The scheduler keeps plugins by name and, asked idempotently, skips a name it has: an equal
    (initializer, initargs) runs once per worker however many runs ask for it, and another
    pair gets a plugin of its own. If it fails on a worker, distributed re-raises the
    initializer's exception here; the plugin is then unregistered (else the failed pair
    would count as done next time, and each joining worker would run it again) and the run
    stops with `InitializerError`.
    """
    name = initializer.name
    pickled: bytes | None = None
    failure: BaseException | None = None
    try:
        pickled = cloudpickle.dumps((initializer.func, initializer.args))
    except Exception as exc:  # a lock in initargs, say: nothing was sent
        failure = exc
    if pickled is None:
        raise PicklingError(
            f"the initializer {name} or its initargs could not be pickled: {failure!r}"
        ) from failure
    key = f"aioparallel-initializer-{hashlib.sha256(pickled).hexdigest()[:32]}"
    plugin = _InitializerPlugin(initializer)
    try:
        await client.register_plugin(plugin, name=key)
    except Exception as exc:  # the initializer's exception, rebuilt by distributed
        failure = exc
    if failure is None:
        return
    with (
        anyio.CancelScope(shield=True),
        anyio.move_on_after(CLEANUP_GRACE),
        contextlib.suppress(ValueError),  # another run with this pair unregistered it first
    ):
        await client.unregister_worker_plugin(key)
    raise initializer_error(name, f"a dask worker of {client.scheduler.address}", failure)


class _DaskRun:
    """One run's client-side state: the arrays it scattered, how to send batches, and how
    many of them are in flight, to pin a worker's death on the batch that caused it.

    dask counts a death against every task the dying worker held: the one it ran and those
    queued behind it (a run keeps two batches per worker thread in flight). A KilledWorker
    therefore convicts a batch only if no other batch of the run was in flight while it was;
    a batch that had company is run again alone (`_rerun_alone`: new batches wait, those in
    flight finish, then it goes by itself under a fresh key), and only a death there is
    pinned on it. An innocent batch then simply succeeds; a crash-free run never pauses.
    """

    def __init__(self, client: Any, options: RunOptions) -> None:
        self._client = client
        self._options = options
        self._arrays = SentArrays(options.max_nbytes, self._scatter, _release)
        self.release = self._arrays.release
        #: Batches submitted and not finished; batches submitted so far.
        self._in_flight = 0
        self._submitted = 0
        #: One suspect at a time is re-run alone; while it is (or waits to be), ``_solo`` is
        #: set and new batches wait for it, and ``_drained`` tells it the last one finished.
        self._suspects = anyio.Lock()
        self._solo: anyio.Event | None = None
        self._drained: anyio.Event | None = None

    async def run_batch(self, batch: Batch) -> list[Any]:
        return await self._run(batch, alone=False)

    async def _run(self, batch: Batch, alone: bool) -> list[Any]:
        """Run ``batch`` as one dask task; ``alone``: the suspect's re-run, which waits for
        no one (nothing else of the run is in flight, and nothing else is submitted)."""
        calls = wire_calls(batch.calls, await self._arrays.handles(batch.calls))
        name = function_name(batch.calls[0].func)
        task, key = self._task(batch, calls, name)
        while not alone and self._solo is not None:  # a suspect is (about to be) re-run alone
            await self._solo.wait()
        try:
            future = self._client.submit(*task, key=key, pure=False)
        except BaseException as exc:  # nothing ran (a __reduce__ may raise anything)
            if len(batch.calls) == 1:
                return unsendable(batch, name, exc)
            future = None
        if future is None:  # find the call that cannot be pickled, outside the except block
            return await self._one_by_one(batch, alone)
        answer, company = await self._wait(batch, future, name)
        if isinstance(answer, KilledWorker):
            if company and not alone:
                return await self._rerun_alone(batch)
            return _crashed(batch, answer, self._options.stop_on_error)
        if isinstance(answer, Failure):
            return [answer]
        if answer is None:
            return await self._one_by_one(batch, alone)
        ran, outcomes = answer
        batch.started = time.perf_counter() - ran  # auto batching times the work, not the wait
        return await unpack_outcomes(batch, outcomes, self._options.stop_on_error)

    def _task(self, batch: Batch, calls: list[WireCall], name: str) -> tuple[tuple[Any, ...], str]:
        """What ``client.submit`` runs for ``batch`` (function and arguments), and its key."""
        options = self._options
        flags = async_flags(batch.calls)
        key = f"{name}-{uuid.uuid4().hex}"
        limits = (batch.start, options.stop_on_error, options.timeout)
        if flags is None:
            return (run_calls, calls, *limits), key
        # coroutine functions run on the dask worker's event loop
        return (run_calls_async, calls, flags, *limits, options.worker_concurrency, key), key

    async def _wait(
        self, batch: Batch, future: Any, name: str
    ) -> tuple[Ran | KilledWorker | Failure | None, bool]:
        """The batch's answer, and whether another batch of the run was in flight with it.
        The answer is ``KilledWorker`` if its worker died, a ``Failure`` if a one-call batch
        failed before its call ran, None if a larger one did (split it to find the culprit).
        The future is released, or cancelled (shielded, bounded) if not done."""
        company = self._in_flight > 0
        self._in_flight += 1
        self._submitted += 1
        number = self._submitted
        answer: Ran | KilledWorker | Failure | None = None
        try:
            answer = await future
        except KilledWorker as exc:
            answer = exc
        except Exception as exc:
            if future.cancelled():  # by someone else: the client closed, the scheduler left
                raise AioParallelError(
                    f"the dask task of task {batch.start} ({name}) was cancelled outside "
                    f"aioparallel: {exc}"
                ) from exc
            # run_calls catches everything once its calls start, so this failed before any
            # of them ran (the worker could not unpickle an argument; a module is missing
            # there): running the calls one per task is then safe, and names the culprit.
            if len(batch.calls) == 1:
                attach_task(exc, batch.start, name, "".join(traceback.format_exception(exc)))
                answer = Failure(exc)
            # else None: the caller splits it, outside the except block
        finally:
            company = company or self._submitted != number  # one was submitted meanwhile
            self._in_flight -= 1
            if not self._in_flight and self._drained is not None:
                self._drained.set()
            if future.done():
                future.release()
            else:
                with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_GRACE):
                    await self._client.cancel([future], asynchronous=True)
        return answer, company

    async def _rerun_alone(self, batch: Batch) -> list[Any]:
        """Run a batch whose worker died while other batches of the run were in flight again,
        as the run's only task: new batches wait, those in flight finish first."""
        async with self._suspects:
            solo = self._solo = anyio.Event()
            try:
                while self._in_flight:
                    self._drained = anyio.Event()
                    await self._drained.wait()
                self._drained = None
                return await self._run(batch, alone=True)
            finally:
                self._solo = None
                solo.set()

    async def _one_by_one(self, batch: Batch, alone: bool) -> list[Any]:
        """Run a batch as one dask task per call, to pin an error on its task."""
        results: list[Any] = []
        for offset, call in enumerate(batch.calls):
            results += await self._run(Batch(batch.start + offset, [call]), alone)
            if self._options.stop_on_error and type(results[-1]) is Failure:
                break
        return results

    async def _scatter(self, arrays: Arrays) -> dict[int, Any]:
        """Send arrays to the cluster's memory, under keys the scheduler's log can tell."""
        keys = {f"aioparallel-array-{uuid.uuid4().hex}": i for i in arrays}
        data = {key: arrays[i] for key, i in keys.items()}
        futures = await self._client.scatter(data, hash=False, asynchronous=True)
        return {i: futures[key] for key, i in keys.items()}


def _release(future: Any) -> None:
    """Release a scattered array (any thread: ``Future.release`` is thread-safe)."""
    future.release()


def _crashed(batch: Batch, exc: KilledWorker, stop_on_error: bool) -> list[Any]:
    """KilledWorker of a batch that was the run's only task in flight → one
    WorkerCrashedError per task of the batch (the first one alone)."""
    tries = exc.args[2] + 1 if len(exc.args) > 2 and isinstance(exc.args[2], int) else None
    last = f"{exc.last_worker.address} " if hasattr(exc.last_worker, "address") else ""
    given_up = (
        f"after {tries} workers died running it " if tries else ""
    ) + "(distributed.scheduler.allowed-failures)"

    def describe(index: int, name: str, together: str) -> str:
        return (
            f"dask worker {last}died while running task {index} ({name}){together}; the "
            f"scheduler gave up {given_up}. The workers' logs tell why (memory limit, "
            "segfault, os._exit)."
        )

    return crash_failures(batch, "dask", describe, exc, stop_on_error)
