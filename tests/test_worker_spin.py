"""A worker watches for its next job, instead of sleeping, only while jobs come back to back
and the pool leaves a core to spare (``child.main.SPIN_SECONDS``, ``Pool.spare_core``); an
idle worker sleeps."""

from __future__ import annotations

import time

import anyio
import psutil
import pytest

from aioparallel import Parallel, delayed
from aioparallel.backends.processes.pool.pool import Pool
from tests.proc_helpers import pid_of

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]


async def test_a_pool_leaves_a_core_to_spare_while_its_busy_workers_are_fewer_than_cpus() -> None:
    pool = Pool(3)
    pool.cpus = 2  # the parent and one busy worker leave a core; two busy ones do not
    try:
        first = await pool.acquire()
        assert pool.spare_core
        second = await pool.acquire()
        assert not pool.spare_core
        await pool.release(second)
        assert pool.spare_core
        await pool.release(first)
    finally:
        with anyio.CancelScope(shield=True):
            await pool.close()


async def test_a_worker_stops_watching_once_jobs_stop_coming() -> None:
    async with Parallel(n_jobs=2) as p:
        pids = set()
        for _ in range(300):  # back to back: the worker watches between them
            pids.update(await p([delayed(pid_of)()]))
        workers = [psutil.Process(pid) for pid in pids]
        before = [sum(w.cpu_times()[:2]) for w in workers]
        began = time.monotonic()
        await anyio.sleep(0.3)
        seconds = time.monotonic() - began
        used = [sum(w.cpu_times()[:2]) - b for w, b in zip(workers, before, strict=True)]
    # watching lasts at most a millisecond after a job: idle, a worker sleeps
    assert max(used) < 0.1 * seconds, used
