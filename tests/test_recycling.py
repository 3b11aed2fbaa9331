"""``max_tasks_per_worker`` and ``max_worker_memory``: a process worker past either limit is
replaced between batches, and no call is ever interrupted, failed or run twice for it.

The tasks return their worker's pid (so a test sees which worker ran what) and leave one
marker file per run of a call (so it sees that no call ran twice).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from aioparallel import Parallel, delayed, parallel_config, pool_stats
from aioparallel.backends.processes.pool.recycling import resident_bytes
from tests import recycling_helpers as rh


def _once_each(folder: Path, n: int) -> None:
    assert rh.runs_per_call(str(folder)) == dict.fromkeys(range(n), 1)


def test_counts_go_across_runs_and_event_loops(tmp_path: Path) -> None:
    """One-call runs, each in its own ``asyncio.run``, on the shared pool: the most recently
    used idle worker takes each, so the first worker runs the first three calls, one per
    event loop, and then no more."""

    async def one(i: int) -> int:
        parallel = Parallel(n_jobs=2, max_tasks_per_worker=3)
        [pid] = await parallel([delayed(rh.mark)(str(tmp_path), i)])
        return pid

    pids = [asyncio.run(one(i)) for i in range(8)]
    assert pids[:3] == [pids[0]] * 3
    assert pids[0] not in pids[3:]
    assert max(Counter(pids).values()) == 3
    _once_each(tmp_path, 8)


@pytest.mark.asyncio
async def test_a_batch_larger_than_the_budget_goes_on_to_fresh_workers(tmp_path: Path) -> None:
    async with Parallel(n_jobs=2, max_tasks_per_worker=4, batch_size=10) as parallel:
        pids = await parallel(delayed(rh.mark)(str(tmp_path), i) for i in range(21))
    counts = Counter(pids)
    assert max(counts.values()) <= 4
    assert len(counts) >= 6  # 21 calls, 4 a worker
    _once_each(tmp_path, 21)


@pytest.mark.asyncio
async def test_async_calls_in_flight_at_the_limit_finish(tmp_path: Path) -> None:
    """A worker with 16 async calls in flight gets no more than its budget, and finishes
    those it has."""
    parallel = Parallel(n_jobs=2, max_tasks_per_worker=5, worker_concurrency=16, batch_size=16)
    async with parallel:
        pids = await parallel(delayed(rh.mark_async)(str(tmp_path), i) for i in range(23))
    counts = Counter(pids)
    assert max(counts.values()) <= 5
    assert len(counts) >= 5
    _once_each(tmp_path, 23)


@pytest.mark.asyncio
@pytest.mark.skipif(resident_bytes(os.getpid()) is None, reason="no resident size here")
async def test_a_worker_grown_past_its_memory_limit_is_replaced(tmp_path: Path) -> None:
    folder = str(tmp_path)
    async with Parallel(n_jobs=2, max_worker_memory="50M", batch_size=1) as parallel:
        baseline = await parallel(delayed(rh.resident)(i) for i in range(4))
        assert max(baseline) < 40 << 20  # a worker starts far below the limit
        steady = await parallel(delayed(rh.mark)(folder, 100 + i) for i in range(6))
        assert len(set(steady)) <= 2  # below the limit: the same two workers
        grown = await parallel(delayed(rh.grow)(folder, i, 100) for i in range(4))
        [stats] = [s for s in pool_stats() if not s["shared"] and s["max_worker_memory"]]
    assert len(set(grown)) == 4  # each worker that grew was replaced after its call
    assert stats["recycled"] >= 4
    assert stats["max_worker_memory"] == 50 << 20


def test_the_limits_are_part_of_the_pool_identity() -> None:
    async def main() -> list[tuple[int, int]]:
        await Parallel(n_jobs=3, max_tasks_per_worker=1000)([delayed(rh.resident)(0)])
        await Parallel(n_jobs=3, max_worker_memory="1G")([delayed(rh.resident)(0)])
        await Parallel(n_jobs=3)([delayed(rh.resident)(0)])
        stats = [s for s in pool_stats() if s["shared"] and s["n_jobs"] == 3]
        return sorted((s["max_tasks_per_worker"] or 0, s["max_worker_memory"] or 0) for s in stats)

    assert asyncio.run(main()) == [(0, 0), (0, 1 << 30), (1000, 0)]


@pytest.mark.parametrize("backend", ["threads", "sequential", "dask"])
@pytest.mark.parametrize("option", [{"max_tasks_per_worker": 5}, {"max_worker_memory": "1G"}])
def test_other_backends_refuse_the_limits(backend: str, option: dict[str, Any]) -> None:
    [name] = option
    with pytest.raises(ValueError, match=f"{name}.*do not apply to backend '{backend}'"):
        Parallel(n_jobs=2, backend=backend, **option)
    with parallel_config(backend=backend, **option), pytest.raises(ValueError, match=name):
        Parallel(n_jobs=2)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_tasks_per_worker", 0),
        ("max_tasks_per_worker", True),
        ("max_tasks_per_worker", "3"),
        ("max_worker_memory", 0),
        ("max_worker_memory", "lots"),
        ("max_worker_memory", 1.5),
    ],
)
def test_invalid_limits_are_refused(option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"invalid {option}"):
        Parallel(n_jobs=2, **{option: value})
    with pytest.raises(ValueError, match=f"invalid {option}"):
        parallel_config(**{option: value})


def test_sizes_are_parsed() -> None:
    from aioparallel._parsing import parse_max_worker_memory

    assert parse_max_worker_memory("512M") == 512 << 20
    assert parse_max_worker_memory("2G") == 2 << 30
    assert parse_max_worker_memory(1000) == 1000


@pytest.mark.asyncio
@pytest.mark.skipif(resident_bytes(os.getpid()) is None, reason="no resident size here")
async def test_the_memory_limit_is_checked_after_each_call_of_a_batch(tmp_path: Path) -> None:
    """A worker past its limit after a call starts no further call of its batch: they go on
    to other workers, each run once."""
    folder = str(tmp_path)
    async with Parallel(n_jobs=2, max_worker_memory="50M", batch_size=4) as parallel:
        grown = await parallel(delayed(rh.grow)(folder, i, 100) for i in range(4))
    assert len(set(grown)) == 4, grown  # one call per worker: each was past the limit after it
    _once_each(tmp_path, 4)
