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
import pickle
import time
import traceback
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import cloudpickle
import numpy as np
from distributed import Client, KilledWorker
from distributed.diagnostics.plugin import WorkerPlugin

from ..._call import Call, function_name
from ..._coroutines import async_flags
from ..._errors import (
    AioParallelError,
    PicklingError,
    UnpicklingError,
    WorkerCrashedError,
    attach_task,
)
from ..base import BackendArgs, Batch, Failure, RunBatch, RunOptions
from ..setup import Initializer, initializer_error
from ..unpickling import loads_yielding
from .worker import RAISED, VALUE, Outcome, Ran, WireCall, run_calls, run_calls_async

__all__ = ["DaskBackend", "build"]


def build(args: BackendArgs) -> DaskBackend:
    """How the registry (``backends.base``) builds this backend from ``Parallel``'s settings: with
    ``n_jobs`` as given, since -1 means all of the cluster's threads."""
    return DaskBackend(args.n_jobs, initializer=args.initializer, **args.options)


#: Seconds a cancelled run may spend telling the scheduler (or closing our own client).
_CLEANUP_GRACE = 5.0
#: Outcomes larger than this are unpickled in a worker thread, off the event loop.
_OFFLOAD_NBYTES = 1024**2
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
        self.n_workers = _resolve_n_jobs(self._n_jobs, int(info["total_threads"]))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            self._owns_client = False
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLEANUP_GRACE):
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
        anyio.move_on_after(_CLEANUP_GRACE),
        contextlib.suppress(ValueError),  # another run with this pair unregistered it first
    ):
        await client.unregister_worker_plugin(key)
    raise initializer_error(name, f"a dask worker of {client.scheduler.address}", failure)


def _resolve_n_jobs(n_jobs: int | None, cluster_threads: int) -> int:
    """joblib's n_jobs convention, counted in cluster threads instead of local CPUs."""
    threads = max(1, cluster_threads)
    if n_jobs is None or n_jobs == -1:
        return threads
    if n_jobs < 0:
        return max(1, threads + 1 + n_jobs)
    return n_jobs


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
        self._scattered: dict[int, Any] = {}
        self._finalizers: dict[int, weakref.finalize[Any, Any]] = {}
        self._scatter_lock = anyio.Lock()
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
        calls = await self._wire_calls(batch.calls)
        name = function_name(batch.calls[0].func)
        task, key = self._task(batch, calls, name)
        while not alone and self._solo is not None:  # a suspect is (about to be) re-run alone
            await self._solo.wait()
        try:
            future = self._client.submit(*task, key=key, pure=False)
        except BaseException as exc:  # nothing ran (a __reduce__ may raise anything)
            if len(batch.calls) == 1:
                error = PicklingError(f"task {batch.start} ({name}) could not be sent: {exc!r}")
                error.__cause__ = exc
                attach_task(error, batch.start, name)
                return [Failure(error)]
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
        if sum(len(o[1]) for o in outcomes if o is not None) > _OFFLOAD_NBYTES:
            return await anyio.to_thread.run_sync(
                _unpack, batch, outcomes, self._options.stop_on_error, loads_yielding
            )
        return _unpack(batch, outcomes, self._options.stop_on_error)

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
                with anyio.CancelScope(shield=True), anyio.move_on_after(_CLEANUP_GRACE):
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

    async def _wire_calls(self, calls: Sequence[Call[Any]]) -> list[WireCall]:
        """The calls as submitted, large arrays replaced by the Futures of their scatter."""
        limit = self._options.max_nbytes
        if limit is None:
            return [(c.func, c.args, c.kwargs) for c in calls]
        found: dict[int, np.ndarray[Any, Any]] = {}
        for call in calls:
            _find_arrays((call.args, call.kwargs), limit, found, set())
        if not found:
            return [(c.func, c.args, c.kwargs) for c in calls]
        async with self._scatter_lock:
            new = {i: array for i, array in found.items() if i not in self._scattered}
            if new:
                await self._scatter(new)
            futures = {i: self._scattered[i] for i in found}
        return [(c.func, _swap(c.args, futures), _swap(c.kwargs, futures)) for c in calls]

    async def _scatter(self, arrays: dict[int, np.ndarray[Any, Any]]) -> None:
        """Send arrays to the cluster once; forget each when the caller's array dies.

        Keyed by ``id(array)``: a weak finalizer drops the entry when the array is freed, so
        an id is never reused for another array while it is in the map, and a producer of
        many distinct arrays does not pile them up in the cluster's memory. Shielded: a
        scatter interrupted half-way would leave data no Future of ours could release.
        """
        keys = {f"aioparallel-array-{uuid.uuid4().hex}": i for i in arrays}
        data = {key: arrays[i] for key, i in keys.items()}
        with anyio.CancelScope(shield=True):
            futures = await self._client.scatter(data, hash=False, asynchronous=True)
        for key, i in keys.items():
            self._scattered[i] = futures[key]
            self._finalizers[i] = weakref.finalize(arrays[i], self._forget, i)

    def _forget(self, array_id: int) -> None:
        """Release one scattered array (any thread: ``Future.release`` is thread-safe)."""
        self._finalizers.pop(array_id, None)
        future = self._scattered.pop(array_id, None)
        if future is not None:
            future.release()

    def release(self) -> None:
        """End of run: release every scattered array still held."""
        for finalizer in list(self._finalizers.values()):
            finalizer.detach()
        self._finalizers.clear()
        futures = list(self._scattered.values())
        self._scattered.clear()
        for future in futures:
            future.release()


def _find_arrays(
    obj: object, limit: int, found: dict[int, np.ndarray[Any, Any]], seen: set[int]
) -> None:
    """Collect numpy arrays above ``limit`` bytes nested in lists, tuples and dicts."""
    kind = type(obj)
    if kind is list or kind is tuple or kind is dict:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        items: Any = obj.values() if isinstance(obj, dict) else obj
        for item in items:
            _find_arrays(item, limit, found, seen)
    elif isinstance(obj, np.ndarray) and obj.nbytes > limit:
        found[id(obj)] = obj


def _swap(obj: Any, futures: dict[int, Any]) -> Any:
    """``obj`` with scattered arrays replaced by their Futures; containers copied only if hit."""
    kind = type(obj)
    if kind is list or kind is tuple:
        items = [_swap(item, futures) for item in obj]
        if all(new is old for new, old in zip(items, obj, strict=True)):
            return obj
        return items if kind is list else tuple(items)
    if kind is dict:
        values = {key: _swap(value, futures) for key, value in obj.items()}
        if all(values[key] is value for key, value in obj.items()):
            return obj
        return values
    if isinstance(obj, np.ndarray):
        return futures.get(id(obj), obj)
    return obj


def _crashed(batch: Batch, exc: KilledWorker, stop_on_error: bool) -> list[Any]:
    """KilledWorker of a batch that was the run's only task in flight → one
    WorkerCrashedError per task of the batch (the first one alone)."""
    tries = exc.args[2] + 1 if len(exc.args) > 2 and isinstance(exc.args[2], int) else None
    last = f"{exc.last_worker.address} " if hasattr(exc.last_worker, "address") else ""
    given_up = (
        f"after {tries} workers died running it " if tries else ""
    ) + "(distributed.scheduler.allowed-failures)"
    end = batch.start + len(batch.calls) - 1
    together = f" (one dask task with tasks {batch.start}..{end})" if end > batch.start else ""
    failures: list[Any] = []
    for offset, call in enumerate(batch.calls):
        index, name = batch.start + offset, function_name(call.func)
        error = WorkerCrashedError(
            f"dask worker {last}died while running task {index} ({name}){together}; the "
            f"scheduler gave up {given_up}. The workers' logs tell why (memory limit, "
            "segfault, os._exit).",
            task_index=index,
        )
        error.__cause__ = exc
        attach_task(error, index, name)
        failures.append(Failure(error))
        if stop_on_error:
            break
    return failures


def _unpack(
    batch: Batch,
    outcomes: list[Outcome | None],
    stop_on_error: bool,
    loads: Callable[[bytes], Any] = pickle.loads,
) -> list[Any]:
    """Unpickle the worker's outcomes; a task error gets its index and remote traceback.
    (None: an async call dropped after another failed with ``stop_on_error``; its slot keeps
    the place of the failure after it, and is never read, as the run stops there.)
    In a thread, ``loads`` is ``loads_yielding``: ``pickle.loads`` holds the GIL throughout."""
    results: list[Any] = []
    for offset, outcome in enumerate(outcomes):
        if outcome is None:
            results.append(None)
            continue
        kind, blob = outcome
        index, name = batch.start + offset, function_name(batch.calls[offset].func)
        try:
            loaded = loads(blob)
        except Exception as exc:
            unpickling = UnpicklingError(
                f"the result of task {index} ({name}) could not be unpickled: {exc!r}"
            )
            unpickling.__cause__ = exc
            loaded, kind = (unpickling, None), RAISED
        if kind == VALUE:
            results.append(loaded)
            continue
        error, tb = loaded
        attach_task(error, index, name, tb)
        results.append(Failure(error))
        if stop_on_error:
            break
    return results
