"""The half of a remote backend (dask, Ray) in the caller's process, beside the engine's own
submit, await and cancel: what both engines do the same way.

::

    calls ─► SentArrays.handles: numpy arrays > max_nbytes sent to the engine once per run
             (id(array) -> handle, dropped when the array dies or the run ends) ─► swap()
    answer of a batch ─► unpack_outcomes: (kind, bytes) per call ─► value | Failure(the
             task's exception, its index and remote traceback attached), unpickled in a
             worker thread when large
    a worker died running a batch ─► crash_failures: WorkerCrashedError naming the task
"""

from __future__ import annotations

import pickle
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import numpy as np

from ..._call import Call, function_name
from ..._errors import PicklingError, UnpicklingError, WorkerCrashedError, attach_task
from ..base import Batch, Failure
from ..unpickling import loads_yielding
from .runner import RAISED, VALUE, Outcome, WireCall

__all__ = [
    "CLEANUP_GRACE",
    "SentArrays",
    "crash_failures",
    "resolve_n_jobs",
    "swap",
    "unpack",
    "unpack_outcomes",
    "unsendable",
    "wire_calls",
]

#: Seconds a cancelled run may spend telling the engine (or closing a client of its own).
CLEANUP_GRACE = 5.0
#: Outcomes larger than this are unpickled in a worker thread, off the event loop.
_OFFLOAD_NBYTES = 1024**2

Arrays = dict[int, "np.ndarray[Any, Any]"]


def resolve_n_jobs(n_jobs: int | None, cluster_slots: int) -> int:
    """joblib's n_jobs convention, counted in the cluster's slots (dask's threads, Ray's
    CPUs) instead of local CPUs."""
    slots = max(1, cluster_slots)
    if n_jobs is None or n_jobs == -1:
        return slots
    if n_jobs < 0:
        return max(1, slots + 1 + n_jobs)
    return n_jobs


class SentArrays:
    """One run's large numpy arguments, each sent to the engine once: ``send`` ships new
    arrays and returns a handle for each (a dask Future, a Ray ObjectRef); ``drop`` lets one
    go (any thread).

    Keyed by ``id(array)``: a weak finalizer drops the entry when the array is freed, so an id
    is never reused for another array while it is in the map, and a producer of many distinct
    arrays does not pile them up in the cluster's memory. Sending is shielded: one
    interrupted half-way would leave data no handle of ours could release.
    """

    def __init__(
        self,
        limit: int | None,
        send: Callable[[Arrays], Awaitable[dict[int, Any]]],
        drop: Callable[[Any], None],
    ) -> None:
        self._limit = limit
        self._send = send
        self._drop = drop
        self._handles: dict[int, Any] = {}
        self._finalizers: dict[int, weakref.finalize[Any, Any]] = {}
        self._lock = anyio.Lock()

    async def handles(self, calls: Sequence[Call[Any]]) -> dict[int, Any]:
        """``id(array) -> handle`` for the large arrays in ``calls``, sending new ones."""
        if self._limit is None:
            return {}
        found: Arrays = {}
        for call in calls:
            _find_arrays((call.args, call.kwargs), self._limit, found, set())
        if not found:
            return {}
        async with self._lock:
            new = {i: array for i, array in found.items() if i not in self._handles}
            if new:
                with anyio.CancelScope(shield=True):
                    sent = await self._send(new)
                for i, handle in sent.items():
                    self._handles[i] = handle
                    self._finalizers[i] = weakref.finalize(new[i], self._forget, i)
            return {i: self._handles[i] for i in found}

    def _forget(self, array_id: int) -> None:
        self._finalizers.pop(array_id, None)
        handle = self._handles.pop(array_id, None)
        if handle is not None:
            self._drop(handle)

    def release(self) -> None:
        """End of run: drop every array still held."""
        for finalizer in list(self._finalizers.values()):
            finalizer.detach()
        self._finalizers.clear()
        handles = list(self._handles.values())
        self._handles.clear()
        for handle in handles:
            self._drop(handle)


def _find_arrays(obj: object, limit: int, found: Arrays, seen: set[int]) -> None:
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


def wire_calls(calls: Sequence[Call[Any]], replacements: dict[int, Any]) -> list[WireCall]:
    """The calls as submitted: builtin tuples, arrays swapped by ``id`` for their stand-ins."""
    if not replacements:
        return [(c.func, c.args, c.kwargs) for c in calls]
    return [(c.func, swap(c.args, replacements), swap(c.kwargs, replacements)) for c in calls]


def swap(obj: Any, replacements: dict[int, Any]) -> Any:
    """``obj`` with sent arrays replaced by their stand-ins; containers copied only if hit."""
    kind = type(obj)
    if kind is list or kind is tuple:
        items = [swap(item, replacements) for item in obj]
        if all(new is old for new, old in zip(items, obj, strict=True)):
            return obj
        return items if kind is list else tuple(items)
    if kind is dict:
        values = {key: swap(value, replacements) for key, value in obj.items()}
        if all(values[key] is value for key, value in obj.items()):
            return obj
        return values
    if isinstance(obj, np.ndarray):
        return replacements.get(id(obj), obj)
    return obj


def unsendable(batch: Batch, name: str, exc: BaseException) -> list[Any]:
    """The one call of ``batch`` could not be pickled for the engine (nothing ran): its
    ``PicklingError``. (A batch of several is sent again call by call, to find the culprit.)"""
    error = PicklingError(f"task {batch.start} ({name}) could not be sent: {exc!r}")
    error.__cause__ = exc
    attach_task(error, batch.start, name)
    return [Failure(error)]


def crash_failures(
    batch: Batch,
    engine: str,
    describe: Callable[[int, str, str], str],
    cause: BaseException,
    stop: bool,
) -> list[Any]:
    """A worker died running ``batch`` (one ``engine`` task): one ``WorkerCrashedError`` per
    task of the batch (with ``stop``, the first one alone), chained to the engine's error.
    ``describe(index, function name, together)`` says what happened; ``together`` names the
    batch's other tasks when it has several."""
    end = batch.start + len(batch.calls) - 1
    together = f" (one {engine} task with tasks {batch.start}..{end})" if end > batch.start else ""
    failures: list[Any] = []
    for offset, call in enumerate(batch.calls):
        index, name = batch.start + offset, function_name(call.func)
        error = WorkerCrashedError(describe(index, name, together), task_index=index)
        error.__cause__ = cause
        attach_task(error, index, name)
        failures.append(Failure(error))
        if stop:
            break
    return failures


async def unpack_outcomes(
    batch: Batch, outcomes: list[Outcome | None], stop_on_error: bool
) -> list[Any]:
    """``unpack``, in a worker thread when the outcomes are large."""
    if sum(len(o[1]) for o in outcomes if o is not None) > _OFFLOAD_NBYTES:
        return await anyio.to_thread.run_sync(
            unpack, batch, outcomes, stop_on_error, loads_yielding
        )
    return unpack(batch, outcomes, stop_on_error)


def unpack(
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
