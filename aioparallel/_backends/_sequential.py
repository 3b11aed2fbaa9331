"""The debugging path: calls run one after another in the caller's thread, unpickled; a
coroutine function's coroutine is awaited right there, in the caller's event loop (SPEC §8)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from .._call import function_name
from .._coroutines import is_coroutine
from .._errors import attach_task
from ._base import Batch, Failure, RunBatch, RunOptions

__all__ = ["SequentialBackend"]


class SequentialBackend:
    """No workers: each call runs on the event loop thread, with a checkpoint between calls.

    ``timeout`` is not enforced here: nothing can interrupt a call running on the loop.
    """

    name = "sequential"
    n_workers = 1

    async def __aenter__(self) -> SequentialBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    @asynccontextmanager
    async def open_run(self, options: RunOptions) -> AsyncIterator[RunBatch]:
        async def run_batch(batch: Batch) -> list[Any]:
            results: list[Any] = []
            for offset, call in enumerate(batch.calls):
                await anyio.lowlevel.checkpoint()
                try:
                    value = call.func(*call.args, **call.kwargs)
                    if is_coroutine(value):
                        value = await value
                    results.append(value)
                except Exception as exc:
                    attach_task(exc, batch.start + offset, function_name(call.func))
                    results.append(Failure(exc))
                    if options.stop_on_error:
                        break
            return results

        yield run_batch
