"""The debugging path: calls run one after another in the caller's thread, unpickled."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from ._base import Batch, Failure, RunBatch, RunOptions
from ._setup import Initializer, InitOnce
from ._threads import run_calls

__all__ = ["SequentialBackend"]


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
                (outcome,) = run_calls(
                    batch.start + offset, [call], options.stop_on_error, None, self._init
                )
                results.append(outcome)
                if options.stop_on_error and type(outcome) is Failure:
                    break
            return results

        yield run_batch
