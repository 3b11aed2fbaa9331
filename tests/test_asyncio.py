"""asyncio-only entry points: asyncio.timeout, Task.cancel, gather, wait_for (pytest-asyncio)."""

from __future__ import annotations

import asyncio
import sys
import time
from functools import partial

import pytest

from aioparallel import Parallel, delayed
from tests.helpers import PROMPT, Gate, Tracker, square, wait_gate

BACKENDS = ["sequential", "threads"]


@pytest.mark.asyncio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_gather_of_calls(backend: str) -> None:
    p = Parallel(n_jobs=2, backend=backend)
    first, second = await asyncio.gather(
        p(delayed(square)(i) for i in range(10)), p(delayed(square)(i) for i in range(5))
    )
    assert first == [i * i for i in range(10)]
    assert second == [i * i for i in range(5)]


@pytest.mark.asyncio
@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is new in 3.11")
async def test_asyncio_timeout_sequential() -> None:
    tracker = Tracker()
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await Parallel(backend="sequential")(tracker.calls(None))  # endless input
    assert time.monotonic() - began < 0.1 + PROMPT
    taken = tracker.taken
    await asyncio.sleep(0)
    assert tracker.taken == taken


@pytest.mark.asyncio
async def test_task_cancel_while_threads_block() -> None:
    tracker, gate = Tracker(), Gate()
    p = Parallel(n_jobs=2, backend="threads", batch_size=1)
    task = asyncio.create_task(p(tracker.calls(50, partial(wait_gate, gate))))
    try:
        assert await asyncio.to_thread(gate.wait_for_waiting, 2)
        cancelled = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, PROMPT)
        assert time.monotonic() - cancelled < PROMPT
        assert tracker.done == 0
    finally:
        gate.open()
    assert await asyncio.to_thread(tracker.wait_idle)
    assert tracker.started == 2, "calls were dispatched after the cancellation"


@pytest.mark.asyncio
async def test_wait_for_a_stream_consumer() -> None:
    gate = Gate()
    stream = Parallel(n_jobs=2, backend="threads", return_as="generator")(
        delayed(wait_gate)(gate, i) for i in range(10)
    )

    async def consume() -> list[int]:
        return [r async for r in stream]

    try:
        with pytest.raises(asyncio.TimeoutError):  # the builtin TimeoutError from 3.11 on
            await asyncio.wait_for(consume(), 0.1)
        await asyncio.wait_for(stream.aclose(), PROMPT)
    finally:
        gate.open()
