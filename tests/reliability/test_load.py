"""Load: many concurrent runs on one warm pool, and a million-item producer in flat memory.

docs/workers.md (concurrent calls share the loop's warm pool, results in input order) and
docs/api.md (at most ``pre_dispatch`` calls taken ahead of completion, so a long producer keeps the
parent's memory flat). The figures go to the session report."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from typing import Any

import anyio
import psutil
import pytest

from aioparallel import Parallel, delayed
from aioparallel.run.batching import MAX_BATCH_CALLS
from tests.reliability.conftest import Report
from tests.reliability.helpers import RssSampler, square, square_and_pid

pytestmark = pytest.mark.anyio

N_RUNS = 50
CALLS_PER_RUN = 2_000  # 50 x 2,000 = 100,000 tiny calls
MB = 1024**2
#: The parent's RSS may grow by at most this while a long producer is consumed.
MEMORY_BOUND = 100 * MB


async def test_fifty_concurrent_runs_share_a_warm_pool(report: Report, loop_name: str) -> None:
    results: dict[int, list[Any]] = {}
    most_children = 0

    async def one_run(r: int) -> None:
        base = r * CALLS_PER_RUN
        calls = (delayed(square_and_pid)(base + j) for j in range(CALLS_PER_RUN))
        if r % 2:  # half of them stream, in input order
            async with Parallel(n_jobs=2, return_as="generator")(calls) as stream:
                results[r] = [value async for value in stream]
        else:
            results[r] = await Parallel(n_jobs=2)(calls)

    async def watch_children() -> None:
        nonlocal most_children
        me = psutil.Process()
        while True:
            most_children = max(most_children, len(me.children(recursive=True)))
            await anyio.sleep(0.01)

    began = time.monotonic()
    with anyio.fail_after(120):
        async with anyio.create_task_group() as watcher:
            watcher.start_soon(watch_children)
            async with anyio.create_task_group() as tg:
                for r in range(N_RUNS):
                    tg.start_soon(one_run, r)
            watcher.cancel_scope.cancel()
    took = time.monotonic() - began

    pids: set[int] = set()
    for r in range(N_RUNS):
        base = r * CALLS_PER_RUN
        assert [v for v, _ in results[r]] == [(base + j) ** 2 for j in range(CALLS_PER_RUN)]
        pids.update(pid for _, pid in results[r])
    assert len(pids) <= 2, f"{len(pids)} workers served one n_jobs=2 warm pool"
    assert most_children <= 2, f"{most_children} child processes at once"
    report.figure(
        f"load: 50 concurrent runs, 100,000 calls ({loop_name})",
        f"{took:.2f} s ({N_RUNS * CALLS_PER_RUN / took:,.0f} calls/s), "
        f"{len(pids)} worker pids, at most {most_children} children",
    )


class Producer:
    """A generator of ``n`` calls that counts what was taken from it."""

    def __init__(self, n: int):
        self.n = n
        self.taken = 0

    def __iter__(self) -> Iterator[Any]:
        for i in range(self.n):
            self.taken += 1
            yield delayed(square)(i)


async def _stream_through(backend: str, n: int) -> tuple[int, int, int, RssSampler, float]:
    """Consume ``n`` results; (count, sum, most taken ahead of consumption, sampler, s)."""
    p = Parallel(n_jobs=2, backend=backend, return_as="generator")
    await Parallel(n_jobs=2, backend=backend)(Producer(1000))  # warm: spawn, imports
    gc.collect()
    producer = Producer(n)
    count = total = ahead = 0
    began = time.monotonic()
    with RssSampler() as sampler:
        async with p(producer) as stream:
            async for value in stream:
                count += 1
                total += value
                ahead = max(ahead, producer.taken - count)
    return count, total, ahead, sampler, time.monotonic() - began


def test_rss_sampler_sees_growth() -> None:
    """The instrument itself: 64 MB allocated and touched in the block is seen."""
    with RssSampler() as sampler:
        block = bytearray(64 * MB)
        block[::4096] = b"x" * len(block[::4096])
        deadline = time.monotonic() + 5
        while sampler.samples < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    del block
    assert sampler.growth >= 48 * MB, sampler.growth / MB


#: The default bound, "2*n_jobs", widened by auto batching to 2 * n_jobs * batch size.
MOST_AHEAD = 2 * 2 * MAX_BATCH_CALLS


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param("asyncio", id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop", marks=pytest.mark.heavy),
        pytest.param("trio", id="trio", marks=pytest.mark.heavy),
    ],
)
@pytest.mark.parametrize("backend", ["processes", "threads"])
async def test_million_item_producer_keeps_parent_memory_flat(
    backend: str, report: Report, loop_name: str
) -> None:
    """1,000,000 calls from a generator (about 3 s); the other loops run with -m heavy."""
    n = 1_000_000
    count, total, ahead, sampler, took = await _stream_through(backend, n)
    assert count == n
    assert total == sum(i * i for i in range(n))
    report.figure(
        f"memory: 1,000,000-item generator ({backend}, {loop_name})",
        f"peak RSS growth {sampler.growth / MB:.1f} MB (bound {MEMORY_BOUND // MB} MB), "
        f"at most {ahead:,} calls taken ahead (bound {MOST_AHEAD:,}), {took:.1f} s",
    )
    assert ahead <= MOST_AHEAD
    assert sampler.growth < MEMORY_BOUND
