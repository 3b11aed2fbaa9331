"""A loop that ends without cleaning up must not take the shared pool with it (issue 22).

A loop stopped and closed while its run holds workers (``loop.stop()`` from a callback, then
``loop.close()``; older pytest-asyncio did this at each test's end) never runs that run's
cleanup: its workers stay counted as busy, and every later ``Parallel(n_jobs=2)``, from any
loop or thread, waited forever. The pool now reclaims what a closed loop held: its workers are
killed and their places freed, its waiters dropped.

A loop that is stopped but not closed may still resume (``run_until_complete`` in bursts), so
what it holds stays its own; but a worker given back is not handed to its waiters while it
does not run: it goes to a waiter whose loop runs, and the stopped loop's waiter is served
when it runs again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioparallel import Parallel, delayed
from aioparallel.backends.processes.pool import shared as _shared
from aioparallel.backends.processes.pool.pool import Pool
from tests import proc_helpers as h
from tests.proc_helpers import worker_children

N_JOBS = 2
#: Bound on a run that must not wait for the dead loop's workers.
LIMIT = 20.0


class LoopThread:
    """An asyncio loop run (``run_forever``) in a thread of its own, which we stop and close
    from outside, as a test runner does."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-dead-loop")
        self.thread.start()

    def start(self, coro: Any) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        """``loop.stop()`` from a callback: pending tasks stay pending, never resumed."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(LIMIT)
        assert not self.thread.is_alive()

    def resume(self) -> None:
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-dead-loop")
        self.thread.start()


@pytest.fixture
def forget_zombies() -> Iterator[None]:
    """The closed loop's tasks are collected with their coroutines, whose cleanup then runs
    in the collector (asyncio logs 'Task was destroyed but it is pending'): collect them
    here, inside the test, so whatever that cleanup does is this test's."""
    yield
    gc.collect()


async def _until(condition: Any) -> None:
    """Bounded poll (the test's ``fail_after``) until ``condition()`` holds."""
    while True:
        if condition():
            return
        await anyio.sleep(0.01)


def _square_pids(n: int = 8) -> set[int]:
    async def main() -> set[int]:
        with anyio.fail_after(LIMIT):
            results = await Parallel(n_jobs=N_JOBS)(delayed(h.square_and_pid)(x) for x in range(n))
        assert [v for v, _ in results] == [x * x for x in range(n)]
        return {pid for _, pid in results}

    return asyncio.run(main())


def test_a_loop_closed_while_its_run_holds_workers_does_not_wedge_the_pool(
    tmp_path: Path, forget_zombies: None
) -> None:
    async def run() -> None:
        await Parallel(n_jobs=N_JOBS)(
            delayed(h.pid_then_sleep)(str(tmp_path), x) for x in range(N_JOBS)
        )

    dead = LoopThread()
    dead.start(run())
    held = set(h.wait_for_pids_sync(tmp_path, N_JOBS).values())
    dead.stop()
    dead.loop.close()  # its run's cleanup never runs

    fresh = _square_pids()  # from another loop, in another thread: must not wait forever
    assert fresh.isdisjoint(held)
    assert h.wait_gone(held, 10.0) == []  # the dead loop's workers were killed and reaped
    pool = _shared.shared_pool(N_JOBS, 300.0)
    roster = pool._roster
    assert not roster.busy and not roster.waiters
    assert roster.count == len(roster.idle) <= N_JOBS
    assert {w.pid for w in roster.idle} == worker_children()


def test_a_closed_loop_s_waiter_is_dropped_and_its_place_reused(forget_zombies: None) -> None:
    """A closed loop's task waiting for a worker: the worker given back goes to the live
    loop's waiter behind it, and the dead waiter leaves the queue."""
    pool_box: list[Pool] = []

    async def make() -> Pool:
        pool_box.append(Pool(1))
        return pool_box[0]

    dead = LoopThread()
    pool: Pool = dead.start(make()).result(LIMIT)

    async def main() -> None:
        with anyio.fail_after(LIMIT):
            worker = await pool.acquire()
            waiting = dead.start(pool.acquire())  # queues behind us, in the other loop
            await _until(lambda: pool._roster.waiters)
            dead.stop()
            dead.loop.close()
            assert not waiting.done()
            async with anyio.create_task_group() as tg:

                async def take_again() -> None:
                    again = await pool.acquire()
                    await pool.release(again)

                tg.start_soon(take_again)
                await anyio.wait_all_tasks_blocked()
                await pool.release(worker)
            assert not pool._roster.waiters
            await pool.close()

    asyncio.run(main())


def test_a_stopped_loop_s_waiter_is_not_handed_a_worker_it_cannot_use() -> None:
    """A loop stopped (not closed) with a task waiting for the pool's only worker: the
    worker given back goes idle, or to a running loop's waiter, not to the stopped loop; once
    that loop runs again its waiter gets a worker."""
    dead = LoopThread()

    async def make() -> Pool:
        return Pool(1)

    pool: Pool = dead.start(make()).result(LIMIT)

    async def take_and_give_back() -> int:
        worker = await pool.acquire()
        await pool.release(worker)
        return worker.pid

    async def main() -> None:
        with anyio.fail_after(LIMIT):
            worker = await pool.acquire()
            waiting = dead.start(take_and_give_back())
            await _until(lambda: pool._roster.waiters)
            dead.stop()  # stopped, not closed: its waiter cannot take the worker now
            await pool.release(worker)
            again = await pool.acquire()  # waited forever: the worker went to the stopped loop
            assert again is worker
            await pool.release(again)
        dead.resume()
        with anyio.fail_after(LIMIT):
            assert await asyncio.wrap_future(waiting) == worker.pid
        await pool.close()

    try:
        asyncio.run(main())
    finally:
        if not dead.thread.is_alive():
            dead.resume()
        dead.stop()
        dead.loop.close()


def test_a_waiter_gets_the_workers_of_a_loop_closed_while_it_waits(forget_zombies: None) -> None:
    """The holder's loop is closed after the other loop's task started waiting: nobody gives
    the worker back, so the waiter looks again (``Pool.RECHECK``) and takes it back."""
    dead = LoopThread()

    async def make() -> Pool:
        return Pool(1)

    pool: Pool = dead.start(make()).result(LIMIT)
    held = dead.start(pool.acquire()).result(LIMIT)

    async def main() -> int:
        with anyio.fail_after(LIMIT):
            async with anyio.create_task_group() as tg:
                got: list[int] = []

                async def take() -> None:
                    worker = await pool.acquire()
                    got.append(worker.pid)
                    await pool.release(worker)

                tg.start_soon(take)
                await _until(lambda: pool._roster.waiters)
                dead.stop()
                dead.loop.close()
            await pool.close()
        return got[0]

    assert asyncio.run(main()) != held.pid
    assert h.wait_gone([held.pid], 10.0) == []
