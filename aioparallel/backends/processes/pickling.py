"""Pickling a job for a worker: on the event loop while it is obviously cheap, else in a thread.

A job is pickled on the loop only if every callable goes by name and every argument is a
small scalar or a short string; anything else, a callable that carries data (a bound
method, a partial, a closure) or a large or unusual argument, is pickled in a thread
(pickling of large payloads never runs on the event loop thread). These checks
run once per batch on the parent's hot path, so the common case, one function with scalar
arguments, is decided at C speed. A large job is spilled to a file in the run's folder
and the worker is sent its path.
"""

from __future__ import annotations

import io
import os
import pickle
import types
from collections.abc import Sequence
from itertools import chain, repeat
from operator import attrgetter, is_
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread

from ..._call import Call, OneFuncCalls
from ..._context import capture
from ..._coroutines import async_flags, is_async_callable
from ...child.protocol import BATCH, BATCH_FILE, INLINE_LIMIT, JOB_HEADER, SPIN
from ...child.slot import BATCH_SHIFT
from ..base import RunOptions
from .tempfiles import JobWriter, Lease, RunFolder

__all__ = ["cheap_callable", "job_flags", "one_func", "pickle_job", "small_args", "small_calls"]

#: Calls pickled between two turns of the event loop (about 0.1 ms of work).
PICKLE_CHUNK = 256
#: Calls of one function with small plain arguments (``small_args``) pickled at once, at C
#: speed, without turns of the loop: at most ~0.2 ms (4,096 integers: 0.15 ms).
PLAIN_CALLS = 4096
#: A job frame: (BATCH, header + pickles) or (BATCH_FILE, header + the spilled file's path).
Frame = tuple[int, bytes]

_SCALARS = frozenset({int, float, bool, type(None), complex})
_SMALL_SEQUENCES = frozenset({str, bytes})
_SMALL_KINDS = _SCALARS | _SMALL_SEQUENCES
_FUNC = attrgetter("func")
_ARGS, _KWARGS = attrgetter("args"), attrgetter("kwargs")


def _by_reference(func: object) -> bool:
    """True if pickle sends ``func`` by name (cheap); lambdas, closures and functions of
    ``__main__`` travel by value, with whatever they capture."""
    module = getattr(func, "__module__", None)
    return module not in (None, "__main__") and "<" not in getattr(func, "__qualname__", "<")


def cheap_callable(func: object) -> bool:
    """True if pickling ``func`` writes its name and nothing else: a module-level function
    or class, or a module's builtin. Anything else carries state of unknown size by value:
    a bound method its object, a partial its arguments, a closure its cells, a callable
    object its attributes."""
    kind = type(func)
    if kind is types.FunctionType or isinstance(func, type):
        return _by_reference(func)
    if kind is types.BuiltinFunctionType:
        owner = getattr(func, "__self__", None)
        return (owner is None or type(owner) is types.ModuleType) and _by_reference(func)
    return False


def _small_values(values: Any) -> bool:
    for value in values:
        kind = type(value)
        if kind in _SCALARS or (kind in _SMALL_SEQUENCES and len(value) <= 4096):
            continue
        return False
    return True


def small_args(items: list[tuple[Any, ...]]) -> bool:
    """``_small_values`` over many argument tuples at once: the types are gathered at C
    speed, and only strings and bytes need a look at each (their length)."""
    kinds = {*map(type, chain.from_iterable(items))}
    if kinds <= _SCALARS:
        return True
    return kinds <= _SMALL_KINDS and _small_values(chain.from_iterable(items))


def one_func(calls: Sequence[Call[Any]]) -> Any:
    """The function all ``calls`` make (compared by identity), or None if they make
    several."""
    if type(calls) is OneFuncCalls:
        return calls.func
    func = calls[0].func
    return func if all(map(is_, map(_FUNC, calls), repeat(func))) else None


def job_flags(calls: Sequence[Call[Any]], func: Any) -> bytes | None:
    """``async_flags(calls)``; ``func``: their one function (``one_func``), or None."""
    if func is None:
        return async_flags(calls)
    return b"\x01" * len(calls) if is_async_callable(func) else None


def small_calls(calls: Sequence[Call[Any]]) -> bool:
    """Whether pickling ``calls`` is obviously cheap (safe on the event loop): cheap
    callables and small positional and keyword arguments."""
    cheap: object = None  # the last callable found cheap: most calls share one
    for call in calls:
        if call.func is not cheap:
            if not cheap_callable(call.func):
                return False
            cheap = call.func
        if not _small_values(call.args) or (
            call.kwargs and not _small_values(call.kwargs.values())
        ):
            return False
    return True


async def pickle_job(
    calls: Sequence[Call[Any]],
    func: Any,
    seq: int,
    flags: bytes | None,
    options: RunOptions,
    folder: RunFolder,
    lease: Lease,
    memory_limit: int | None = None,
    time_budget: float | None = None,
    spin: bool = False,
) -> tuple[Frame, int]:
    """The job's frame and its pickled size. A job that is obviously cheap to pickle (cheap
    callables, small arguments) is pickled on the event loop, yielding between chunks; from
    the first chunk that could be expensive (a large or unusual argument, a callable that
    carries state), the rest is pickled in a thread, abandoned if the batch is cancelled.
    ``func``: the one function of all ``calls`` (else None). ``flags`` marks the async
    calls: the worker awaits them on its loop. Array files the job references join ``lease``.
    ``memory_limit``: ``max_worker_memory``, past which the worker starts no further call;
    ``time_budget``: the batch's (``Batch.budget``), the seconds after which it does not
    either. ``spin``: the worker may watch for its next job after this one (``SPIN``)."""
    items: list[Any]
    if type(calls) is OneFuncCalls:
        items = calls.args  # the worker calls func(*args)
    elif func is not None and not any(map(_KWARGS, calls)):
        items = list(map(_ARGS, calls))  # the worker calls func(*args)
    else:
        func, items = None, [(c.func, c.args, c.kwargs) for c in calls]
    cheap = func is None or cheap_callable(func)
    # one function that goes by name, small plain arguments: pickled at once, at C speed
    plain = func is not None and cheap and len(items) <= PLAIN_CALLS and small_args(items)
    if plain or 0 < len(items) <= PICKLE_CHUNK:  # the common cases, without a slice
        chunks = [items]
    else:
        chunks = [items[i : i + PICKLE_CHUNK] for i in range(0, len(items), PICKLE_CHUNK)]
    # timeout and concurrency: a sync call may return a coroutine (awaited on the loop)
    async_job = (flags, options.timeout, options.worker_concurrency)
    meta = (
        options.stop_on_error,
        folder.path,
        options.max_nbytes,
        func,
        len(chunks),
        async_job,
        capture(),  # the caller's propagated context variables (aioparallel.propagate)
        memory_limit,  # max_worker_memory: the worker takes no new call past it
        time_budget,  # nor past these seconds of the job
    )
    header = JOB_HEADER.pack(seq << BATCH_SHIFT, SPIN if spin else 0)
    data = None
    if plain:
        if len(items) > PICKLE_CHUNK:  # the loop gets its turn between the take and this
            await anyio.lowlevel.checkpoint()
        data = _plain(meta, items)
    if data is None:
        writer = JobWriter(folder, options.max_nbytes, options.mmap_mode, lease)
        if not cheap:
            return await _off_loop(writer, header, [meta, *chunks], folder)
        writer.dump(meta)
        for n, chunk in enumerate(chunks):
            start = n * PICKLE_CHUNK
            if func is not None:
                small = small_args(chunk)
            else:
                small = small_calls(calls[start : start + len(chunk)])
            if not small:
                return await _off_loop(writer, header, chunks[n:], folder)
            writer.dump(chunk)
            if n + 1 < len(chunks):
                await anyio.lowlevel.checkpoint()
        data = writer.getvalue()
    if len(data) > INLINE_LIMIT:
        path = await anyio.to_thread.run_sync(_spill, folder, data, abandon_on_cancel=True)
        return (BATCH_FILE, header + path), len(data)
    return (BATCH, header + data), len(data)


def _plain(meta: tuple[Any, ...], chunk: list[Any]) -> bytes | None:
    """A job of one function that goes by name (``cheap_callable``) and small plain
    arguments, as the standard pickler writes it: the same bytes as cloudpickle's, which
    pickles such a function by name too, in a third of the time (a small run's fixed cost).
    The job's other fields are plain values (the context variables come pickled). None if
    pickle refuses the function (not found under its name: cloudpickle sends it by value)."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=5)
    try:
        pickler.dump(meta)
        pickler.dump(chunk)
    except pickle.PicklingError:
        return None
    return buffer.getvalue()


async def _off_loop(
    writer: JobWriter, header: bytes, pickles: list[Any], folder: RunFolder
) -> tuple[Frame, int]:
    return await anyio.to_thread.run_sync(
        _finish, writer, header, pickles, folder, abandon_on_cancel=True
    )


def _finish(
    writer: JobWriter, header: bytes, pickles: list[Any], folder: RunFolder
) -> tuple[Frame, int]:
    """In a thread: pickle the rest of the job, spill it if large."""
    for obj in pickles:
        writer.dump(obj)
    data = writer.getvalue()
    if len(data) > INLINE_LIMIT:
        return (BATCH_FILE, header + _spill(folder, data)), len(data)
    return (BATCH, header + data), len(data)


def _spill(folder: RunFolder, data: bytes) -> bytes:
    return os.fsencode(folder.write_file("job-", "", lambda f: f.write(data)))
