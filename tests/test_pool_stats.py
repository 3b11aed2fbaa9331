"""``aioparallel.pool_stats()``: one plain dict per live process pool, read from any thread
while runs use it (what a ``/metrics`` endpoint serves)."""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from aioparallel import Parallel, WorkerCrashedError, delayed, pool_stats
from tests import recycling_helpers as rh

_KEYS = {
    "pool",
    "inner_max_num_threads",
    "backend",
    "shared",
    "n_jobs",
    "initializer",
    "max_tasks_per_worker",
    "max_worker_memory",
    "idle_timeout",
    "workers",
    "busy",
    "idle",
    "starting",
    "waiting",
    "spawned",
    "recycled",
    "crashed",
    "tasks_done",
}


def _private() -> dict[str, Any]:
    [stats] = [s for s in pool_stats() if not s["shared"]]
    return stats


@pytest.mark.asyncio
async def test_a_private_pool_is_listed_while_open_as_json() -> None:
    async with Parallel(n_jobs=2, max_tasks_per_worker=50) as parallel:
        await parallel(delayed(rh.resident)(i) for i in range(6))
        stats = _private()
        assert json.loads(json.dumps(pool_stats())) == pool_stats()
    assert set(stats) == _KEYS
    assert stats["backend"] == "processes"
    assert stats["n_jobs"] == 2
    assert stats["max_tasks_per_worker"] == 50
    assert stats["tasks_done"] == 6
    assert stats["busy"] == 0
    assert stats["workers"] == stats["idle"] + stats["busy"] <= 2
    assert stats["spawned"] == stats["workers"]
    assert not [s for s in pool_stats() if not s["shared"]]  # closed: gone


@pytest.mark.asyncio
async def test_another_thread_sees_the_run_busy(tmp_path: Path) -> None:
    """A thread polls while the run's calls wait for it: it sees them busy, then lets them go;
    the count of calls done matches at the end."""
    release = str(tmp_path / "release")
    seen: list[dict[str, Any]] = []

    def let_go() -> None:
        Path(release).touch()

    def watch() -> None:
        while not os.path.exists(release):
            stats = [s for s in pool_stats() if not s["shared"]]
            if stats and stats[0]["busy"] == 2:
                seen.append(stats[0])
                let_go()

    async with Parallel(n_jobs=2, batch_size=1) as parallel:
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            pids = await parallel(delayed(rh.wait_for)(release, i) for i in range(8))
        finally:
            let_go()
            watcher.join()
        final = _private()
    assert seen and seen[0]["busy"] == 2 and seen[0]["idle"] == 0
    assert seen[0]["tasks_done"] < 8
    assert final["tasks_done"] == len(pids) == 8
    assert final["busy"] == 0


@pytest.mark.asyncio
async def test_spawned_recycled_and_crashed_are_counted() -> None:
    async with Parallel(
        n_jobs=2, max_tasks_per_worker=2, batch_size=1, return_exceptions=True
    ) as parallel:
        pids = [(await parallel([delayed(os.getpid)()]))[0] for _ in range(6)]
        after_recycling = _private()
        [crash] = await parallel([delayed(rh.die)()])
        after_crash = _private()
    assert isinstance(crash, WorkerCrashedError)
    spent = [pid for pid, calls in Counter(pids).items() if calls == 2]
    assert len(spent) >= 2  # 6 one-call runs, 2 calls a worker
    assert after_recycling["recycled"] == len(spent)
    assert after_recycling["crashed"] == 0
    assert after_recycling["spawned"] >= 3
    assert after_crash["crashed"] == 1
    assert after_crash["recycled"] == len(spent)
    assert after_crash["tasks_done"] == 7  # the crashed call completed too, failing
