"""The half of ``backend="ray"`` that runs in a Ray worker process: one batch per Ray task.

Kept apart so a worker imports only what it runs: the standard library, the shared batch
runner (``remote.runner``) and aioparallel's errors; ``ray`` (loaded there anyway) only to
fetch an initializer, asyncio only for a batch with async calls.

A Ray task owns its worker's main thread, so a late sync call is interrupted there (SIGALRM)
rather than abandoned in a thread, and Ray's cancellation (a KeyboardInterrupt in that
thread) stops the batch: between calls, inside a call, or, for async calls, by cancelling
their coroutines (``asyncio.run`` turns the interrupt into a cancellation of its task).
"""

from __future__ import annotations

import os
import pickle
import traceback
from typing import Any

from ..remote.runner import Ran, WireCall, pack_error, run_calls, run_calls_async

__all__ = ["ArraySlot", "InitializerFailed", "Setup", "run_batch"]

_WHERE = "Ray worker"

#: ``(key, name, ObjectRef of the pickled (initializer, initargs))``: the ref rides nested
#: in a tuple, so Ray does not fetch it for each batch, only once per worker process.
Setup = tuple[str, str, Any]

#: The initializers this process has run, by key (the hash of their pickled pair).
_initialized: set[str] = set()


class ArraySlot:
    """Stands in a call's arguments for a large array sent to Ray's object store once per run:
    the array is the batch task's extra argument number ``position`` (top-level arguments,
    which Ray hands the task as the arrays themselves, read-only and without a copy)."""

    __slots__ = ("position",)

    def __init__(self, position: int) -> None:
        self.position = position

    def __reduce__(self) -> tuple[Any, ...]:
        return (ArraySlot, (self.position,))


class InitializerFailed(Exception):
    """The initializer raised in a Ray worker: carries its pickled (exception, traceback)
    and the worker's pid. The run stops with ``InitializerError``."""

    def __init__(self, blob: bytes, pid: int) -> None:
        super().__init__(blob, pid)
        self.blob = blob
        self.pid = pid


def run_batch(
    calls: list[WireCall],
    flags: bytes | None,
    start: int,
    stop_on_error: bool,
    timeout: float | None,
    concurrency: int,
    setup: Setup | None,
    *arrays: Any,
) -> Ran:
    """The Ray task of one batch: the initializer first if this process has not run it, then
    the calls (``flags``: which are async; None when none is)."""
    if setup is not None and setup[0] not in _initialized:
        _initialize(setup)
    if arrays:
        calls = [(f, _restore(a, arrays), _restore(k, arrays)) for f, a, k in calls]
    if flags is None:
        return run_calls(calls, start, stop_on_error, timeout, _WHERE, alarm=True)
    import asyncio

    batch = run_calls_async(calls, flags, start, stop_on_error, timeout, concurrency, _WHERE)
    return asyncio.run(batch)


def _initialize(setup: Setup) -> None:
    key, _name, ref = setup
    try:
        import ray

        get: Any = ray.get  # typed for lists of refs too; one ref here
        func, args = pickle.loads(get(ref))
        func(*args)
    except BaseException as exc:  # the initializer's own outcome, of any type
        _kind, blob = pack_error(exc, "".join(traceback.format_exception(exc)), _WHERE)
        raise InitializerFailed(blob, os.getpid()) from None
    _initialized.add(key)


def _restore(obj: Any, arrays: tuple[Any, ...]) -> Any:
    """``obj`` with each ``ArraySlot`` replaced by its array (containers rebuilt if hit)."""
    kind = type(obj)
    if kind is ArraySlot:
        return arrays[obj.position]
    if kind is list or kind is tuple:
        items = [_restore(item, arrays) for item in obj]
        return items if kind is list else tuple(items)
    if kind is dict:
        return {key: _restore(value, arrays) for key, value in obj.items()}
    return obj
