"""The debugging path: calls run one after another in the caller's thread, unpickled; a
coroutine function's coroutine is awaited right there, in the caller's event loop."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import anyio

from .._call import function_name
from .._coroutines import is_coroutine
from .._errors import attach_task
from .base import BackendArgs, Batch, Failure, RunBatch, RunOptions
from .setup import Initializer, InitOnce
from .threads import run_calls

__all__ = ["SequentialBackend", "build"]


def build(args: BackendArgs) -> SequentialBackend:
    """How the registry (``backends.base``) builds this backend from ``Parallel``'s settings."""
    return SequentialBackend(args.initializer)


class SequentialBackend:
    """No workers: each call runs on the event loop thread, with a checkpoint between calls.

    Nothing can interrupt a call running on the loop, so a ``timeout`` needs a worker that
    can be abandoned: ``Parallel`` then runs the calls on one thread worker instead.
    """

    name = "sequential"
    n_workers = 1

    def __init__(self, initializer: Initializer | None = None):
        #: The caller is the worker: the initializer runs once in it, before the first call
        #: of this backend's runs (one run, or an ``async with Parallel()`` block).
        self._init = None if initializer is None else InitOnce(initializer, "the caller")

    async def __aenter__(self) -> SequentialBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    @asynccontextmanager
    async def open_run(self, options: RunOptions) -> AsyncIterator[RunBatch]:
        if options.timeout is not None:
            raise ValueError(
                "the sequential backend cannot enforce timeout=: nothing interrupts a call "
                "running on the event loop (Parallel runs such calls on one thread worker)"
            )

        async def run_batch(batch: Batch) -> list[Any]:
            results: list[Any] = []
            for offset, call in enumerate(batch.calls):
                await anyio.lowlevel.checkpoint()
                index = batch.start + offset
                (outcome,) = run_calls(
                    index, [call], options.stop_on_error, None, self._init, run_coroutine=None
                )
                if is_coroutine(outcome):  # an async call: awaited here, in the caller's loop
                    outcome = await _await_task(index, function_name(call.func), outcome)
                results.append(outcome)
                if options.stop_on_error and type(outcome) is Failure:
                    break
            return results

        yield run_batch


async def _await_task(index: int, name: str, coro: Coroutine[Any, Any, Any]) -> Any:
    """A task's coroutine, awaited in the caller's loop. Whatever it raises is its outcome,
    a cancellation exception included, unless the run itself is being cancelled:
    then that is the run's cancellation passing through the coroutine, and it propagates."""
    try:
        return await coro
    except BaseException as exc:  # decided below, outside the except block
        error = exc
    if isinstance(error, anyio.get_cancelled_exc_class()) and _run_cancelled():
        raise error
    attach_task(error, index, name)
    return Failure(error)


def _run_cancelled() -> bool:
    """Whether the task running this batch is being cancelled: a cancelled anyio scope
    around it (any backend, our task group included), or on asyncio a pending
    ``Task.cancel()`` no scope records (``asyncio.timeout``, a cancelled caller)."""
    if anyio.current_effective_deadline() == -math.inf:
        return True
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not asyncio (trio): its cancellations all come from scopes
        return False
    if task is None:
        return False
    cancelling = getattr(task, "cancelling", None)
    if cancelling is None:  # Python 3.10 cannot tell: never swallow the caller's cancel
        return True
    return bool(cancelling() > 0)
