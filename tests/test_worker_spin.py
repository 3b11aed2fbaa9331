"""A worker watches for its next job, instead of sleeping, only while jobs come back to back,
the pool leaves a core to spare (``child.waiting.SPIN_SECONDS``, ``Pool.spare_core``) and
watching has been making the wait shorter (``NextFrame._watching``); an idle worker sleeps."""

from __future__ import annotations

import contextlib
import os
import select
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import psutil
import pytest

from aioparallel import Parallel, delayed
from aioparallel.backends.processes.pool.pool import Pool
from aioparallel.child import waiting
from aioparallel.child.protocol import RESULTS, write_frame
from tests.proc_helpers import pid_of


@contextlib.asynccontextmanager
async def pool_on(cpus: int, size: int) -> AsyncIterator[Pool]:
    """A private pool of ``size`` workers that counts ``cpus`` CPUs, closed on the way out."""
    pool = Pool(size)
    pool.cpus = cpus
    try:
        yield pool
    finally:
        with anyio.CancelScope(shield=True):
            await pool.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_pool_leaves_a_core_to_spare_while_nobody_waits_and_few_workers_are_busy() -> None:
    # the parent and one busy worker leave a core of two; two busy ones do not
    async with pool_on(cpus=2, size=3) as pool:
        first = await pool.acquire()
        assert pool.spare_core
        second = await pool.acquire()
        assert not pool.spare_core
        await pool.release(second)
        assert pool.spare_core
        await pool.release(first)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_pool_has_no_core_to_spare_while_a_run_waits_for_a_worker() -> None:
    handed: list[Any] = []
    queued = anyio.Event()
    async with pool_on(cpus=2, size=1) as pool:

        async def wait_for_one() -> None:
            queued.set()
            handed.append(await pool.acquire())

        first = await pool.acquire()
        assert pool.spare_core
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_one)
            await queued.wait()
            await anyio.lowlevel.checkpoint()  # the waiter is in line now
            assert pool.waiting == 1
            assert not pool.spare_core  # it will take the CPU a watching worker would use
            await pool.release(first)  # handed to the waiter
        await pool.release(handed[0])


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
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


def _waits_with_gain(gain: float | None) -> Any:
    waits = waiting.NextFrame.__new__(waiting.NextFrame)
    waits._gain, waits._last, waits._probes = gain, None, 0
    return waits


@pytest.mark.parametrize(
    ("gain", "prefers"),
    [(30e-6, True), (-30e-6, False), (None, True)],
    ids=["watching-pays", "watching-costs-the-parent-more", "nothing-measured"],
)
def test_a_worker_watches_while_it_pays_and_keeps_measuring_the_other_way(
    gain: float | None, prefers: bool
) -> None:
    waits = _waits_with_gain(gain)
    choices = [waits._watching() for _ in range(4 * waiting.SPIN_PROBE)]
    assert choices.count(not prefers) == 4  # one wait in SPIN_PROBE goes the other way
    assert choices.count(prefers) == 4 * (waiting.SPIN_PROBE - 1)


def test_a_wait_long_past_the_watch_says_nothing_about_how_to_wait() -> None:
    """The first job after a pause (the parent had nothing for the worker) would have found
    it asleep either way: its wait must not count against watching, which held a worker
    asleep through the hundred short waits that followed (W3's slow rounds)."""
    read_end, write_end = os.pipe()
    waits = waiting.NextFrame.__new__(waiting.NextFrame)
    waits.req_fd, waits.may_spin, waits._loadavg = read_end, True, None
    waits._gain, waits._last, waits._probes, waits._paused = 20e-6, (False, 80e-6), 0, False
    waits._poll = select.poll()
    waits._poll.register(read_end, select.POLLIN)
    try:
        waits.spin = 200e-6
        write_frame(write_end, RESULTS, b"after a pause")
        assert waits.next(time.perf_counter() - 0.05) == (RESULTS, b"after a pause")
        assert (waits._gain, waits._last) == (20e-6, (False, 80e-6))
        waits.spin = 200e-6
        write_frame(write_end, RESULTS, b"back to back")
        assert waits.next(time.perf_counter()) == (RESULTS, b"back to back")
        assert waits._last is not None and waits._last[0]  # a short wait counts (watched)
        assert waits._gain != 20e-6  # beside the slept one before it
    finally:
        os.close(read_end)
        os.close(write_end)


def test_after_a_pause_a_worker_watches_once_more_then_sleeps() -> None:
    """The first job after a pause is often followed at once by the run's next (calls one
    after another): the worker watches for it (it slept through it before, W3's second
    call). A second long wait means jobs stopped coming: it sleeps."""
    read_end, write_end = os.pipe()
    waits = waiting.NextFrame.__new__(waiting.NextFrame)
    waits.req_fd, waits.may_spin, waits._loadavg = read_end, False, None
    waits._gain, waits._last, waits._probes, waits._paused = None, None, 0, False
    waits._poll = select.poll()
    waits._poll.register(read_end, select.POLLIN)
    waits.spin = 200e-6
    try:
        for pause, spin_after in [(0.05, waiting.SPIN_SECONDS), (0.05, 0.0), (0.05, 0.0)]:
            write_frame(write_end, RESULTS, b"")
            waits.next(time.perf_counter() - pause)
            assert waits.spin == spin_after
        write_frame(write_end, RESULTS, b"")
        waits.next(time.perf_counter())  # back to back again
        assert 0 < waits.spin < waiting.SPIN_SECONDS
        write_frame(write_end, RESULTS, b"")
        waits.next(time.perf_counter() - 0.05)
        assert waits.spin == waiting.SPIN_SECONDS
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_worker_compares_the_ways_of_waiting_on_waits_one_after_the_other() -> None:
    """How long the parent takes to send the next job changes with the work: a worker that
    watched through the long waits of big jobs, then slept once (a probe) as single calls
    began, compared averages of different work and slept through W3's calls (its p50 then
    read ~72 µs instead of ~46 in one round of five). Waits one after the other are
    compared instead, and an odd pair moves the verdict by a bounded step."""
    waits = _waits_with_gain(None)
    for _ in range(15):
        waits._count(True, 240e-6)  # big jobs: the parent is busy between them
    waits._count(False, 67e-6)  # a probe, as the single calls begin
    assert waits._gain == -waiting.GAIN_LIMIT  # the odd pair, bounded
    waits._count(True, 40e-6)  # back to watching: 27 µs faster than sleeping
    waits._count(True, 41e-6)
    waits._count(False, 60e-6)  # the next probe: 19 µs slower
    waits._count(True, 42e-6)
    assert waits._gain is not None and waits._gain > 0  # watching wins again
    assert waits._watching()
