"""The half of ``backend="dask"`` that runs inside a dask worker's thread: the shared batch
runner (``remote.runner``), told it runs on a dask worker, plus what only dask needs.

Kept apart so a worker imports only what it runs: the standard library and aioparallel's
errors (``distributed`` is already loaded there, and imported here only by a batch of async
calls).
"""

from __future__ import annotations

from typing import Any

from ..remote import runner
from ..remote.runner import RAISED, VALUE, Outcome, Ran, WireCall

__all__ = ["RAISED", "VALUE", "Outcome", "Ran", "WireCall", "run_calls", "run_calls_async"]

_WHERE = "dask worker"


def run_calls(calls: list[WireCall], start: int, stop_on_error: bool, timeout: float | None) -> Ran:
    """A batch of sync calls, in the dask worker's thread (a late call is abandoned in a
    helper thread: a dask worker's threads cannot be interrupted)."""
    return runner.run_calls(calls, start, stop_on_error, timeout, _WHERE)


async def run_calls_async(
    calls: list[WireCall],
    flags: bytes,
    start: int,
    stop_on_error: bool,
    timeout: float | None,
    concurrency: int,
    key: str,
) -> Ran:
    """A batch with async calls, on the dask worker's event loop (distributed awaits
    coroutine functions there).

    distributed cancels a running coroutine task only when its worker closes, not when the
    client cancels its future: so the batch watches its own ``key`` and cancels its
    coroutines (their ``finally`` blocks run) once the worker no longer wants it."""

    async def watch(tasks: Any) -> None:
        await _cancel_when_released(key, tasks)

    return await runner.run_calls_async(
        calls, flags, start, stop_on_error, timeout, concurrency, _WHERE, watch
    )


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
