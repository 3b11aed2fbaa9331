"""The warm pool's one invariant: never more than ``size`` worker processes (docs/workers.md).

A hypothesis state machine drives the pool's methods in any order on real worker processes:
acquire, release (healthy or not), the idle reaper (alone, or racing two acquires), a crash
(a worker SIGKILLed from outside, busy or idle) and close (while workers are held, which the
holders then give back). After every step, the worker processes that are this process's
children (zombies included: unreaped is not gone) are exactly the pool's idle and busy
workers, and there are never more than ``size`` of them.

The pool serves any event loop in any thread (docs/workers.md): its async methods run in two loops,
each in a thread of its own (blocking portals), a worker acquired in one may be released in
the other, and the reaper (synchronous) runs in the test's own thread, as the shared pools'
reaper thread does.

A loop may also end without its tasks' cleanup (``loop.stop()`` then ``loop.close()``, as
older pytest-asyncio did) while one of them holds a worker or waits for one: what it held is
taken back by the next ``acquire`` that finds no idle worker, by the reaper, or by ``close``.

``test_reaper_racing_acquires_keeps_the_bound`` pins the race the first release had: the idle
reaper awaited a worker's exit while the worker was still in the idle list; ``acquire`` took
it, found it dead and freed its place a second time, so the pool spawned past ``size``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from typing import Any, TypeVar

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from aioparallel.backends.processes.pool.pool import Pool, PoolClosedError, WorkerProcess
from aioparallel.backends.processes.pool.recycling import Limits
from aioparallel.backends.processes.pool.roster import Standing
from aioparallel.backends.processes.pool.run_workers import run_ticket
from tests.proc_helpers import worker_children

T = TypeVar("T")
SIZE = 2
#: The machine's pool replaces a worker after this many calls (``release_spent``).
RECYCLE_AFTER = 1000
#: Bound on any one step: a pool that waits forever fails the test instead of hanging it.
STEP_LIMIT = 20.0


async def _bounded(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    with anyio.fail_after(STEP_LIMIT):
        return await fn(*args)


def _pool_pids(pool: Pool) -> set[int]:
    roster = pool._roster
    return {w.pid for w in roster.idle} | {w.pid for w in roster.busy}


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._stack = ExitStack()
        self.portal: BlockingPortal = self._stack.enter_context(start_blocking_portal())
        self.portals = [self.portal, self._stack.enter_context(start_blocking_portal())]
        # idle_timeout 0: the reaper stops every idle worker it finds
        self.pool = self.portal.call(self._make_pool)
        self.held: list[WorkerProcess] = []
        #: Workers taken by loops that were closed without their tasks' cleanup.
        self.orphans: list[WorkerProcess] = []
        self.closed = False

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, loop: int = 0) -> T:
        return self.portals[loop].call(_bounded, fn, *args)

    @staticmethod
    async def _make_pool() -> Pool:
        return Pool(SIZE, idle_timeout=0.0, limits=Limits(max_tasks=RECYCLE_AFTER))

    # -- rules ---------------------------------------------------------------------------------

    @precondition(lambda self: not self.closed and len(self.held) < SIZE)
    @rule(loop=st.sampled_from([0, 1]))
    def acquire(self, loop: int) -> None:
        self.held.append(self._call(self.pool.acquire, loop=loop))

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), healthy=st.booleans(), loop=st.sampled_from([0, 1]))
    def release(self, data: st.DataObject, healthy: bool, loop: int) -> None:
        worker = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        self._call(self.pool.release, worker, healthy, loop=loop)

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def release_spent(self, data: st.DataObject) -> None:
        """A worker that reached ``max_tasks_per_worker`` is given back: a thread stops it and
        starts its successor, within the bound."""
        worker = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        alive = worker.alive
        self.pool.count(worker, RECYCLE_AFTER)
        self._call(self.pool.release, worker, True)
        _wait_until(lambda: not any(t.name == "aioparallel-recycle" for t in threading.enumerate()))
        assert worker.closed
        if alive and not self.closed:
            assert self.pool._roster.recycled >= 1
            event("recycled")

    @precondition(lambda self: not self.closed and len(self.held) == SIZE)
    @rule(data=st.data(), need=st.sampled_from([None, 0.01, 10.0]))
    def yield_to_a_newer_run(self, data: st.DataObject, need: float | None) -> None:
        """The pool is full and a newer run waits; a held worker whose run used 1 s goes to
        it if it needs less than half that (``need`` 0.01), else stays with its holder."""
        worker = self.held[data.draw(st.integers(0, len(self.held) - 1))]
        ticket = run_ticket()
        waiting = self.portals[1].start_task_soon(
            _bounded, self.pool.acquire, Standing(ticket, 0.0, lambda: need)
        )
        _wait_until(lambda: bool(self.pool._roster.waiters))
        yielded = self.pool.yield_to(worker, Standing(ticket - 1, 1.0))
        assert yielded == (need == 0.01)
        if yielded:
            assert waiting.result(STEP_LIMIT) is worker
            event("yielded")
        else:  # the waiter gets it back to the pool in the usual way
            self.held.remove(worker)
            self._call(self.pool.release, worker, True)
            self.held.append(waiting.result(STEP_LIMIT))

    @precondition(lambda self: not self.closed and len(self.held) + self._orphans() < SIZE)
    @rule(waits=st.booleans())
    def a_loop_dies_holding(self, waits: bool) -> None:
        """A loop in a thread of its own takes a worker (and, if ``waits``, a task of it
        queues for another once the pool is full), then is stopped and closed: its tasks'
        cleanup never runs."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever)
        thread.start()
        try:
            taking = asyncio.run_coroutine_threadsafe(_bounded(self.pool.acquire), loop)
            self.orphans.append(taking.result(STEP_LIMIT))
            # full only if the places are held by running loops: this one's and ours (the
            # next acquire takes back what a gone loop's orphans hold, then spawns)
            if waits and len(self.held) + 1 == SIZE:
                asyncio.run_coroutine_threadsafe(self.pool.acquire(), loop)
                _wait_until(lambda: bool(self.pool._roster.waiters))
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(STEP_LIMIT)
            loop.close()

    def _orphans(self) -> int:
        """Workers still held by a loop that is gone."""
        return sum(w in self.pool._roster.busy for w in self.orphans)

    @rule()
    def reap_idle(self) -> None:
        self.pool.reap_idle()

    @precondition(lambda self: not self.closed and not self.held and self.pool._roster.idle)
    @rule()
    def reap_racing_acquires(self) -> None:
        """The reaper (this thread) stops idle workers while two runs, one in each loop, take
        workers."""
        taking = [p.start_task_soon(_bounded, self.pool.acquire) for p in self.portals]
        self.pool.reap_idle()
        self.held.extend(future.result(timeout=STEP_LIMIT) for future in taking)

    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        """SIGKILL a worker from outside, held or idle."""
        workers = [w for w in self.held if w.alive] + [w for w in self.pool._roster.idle if w.alive]
        if not workers:
            return
        victim = data.draw(st.sampled_from(workers))
        os.kill(victim.pid, signal.SIGKILL)
        self._call(victim.process.wait)

    @precondition(lambda self: not self.closed)
    @rule()
    def close(self) -> None:
        """Close while workers are held: close kills them; the holders give them back."""
        closing = self.portal.start_task_soon(self.pool.close)
        while self.held:
            self._call(self.pool.release, self.held.pop(), True)
        closing.result(timeout=30)
        self.closed = True
        with pytest.raises(PoolClosedError):
            self._call(self.pool.acquire)

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def at_most_size_workers_and_all_counted(self) -> None:
        pids = worker_children()
        assert len(pids) <= SIZE, f"{len(pids)} worker processes for size {SIZE}"
        counted = _pool_pids(self.pool)
        # Without waitid (macOS before 3.13, AIOPARALLEL_PORTABLE=1) a crashed worker is
        # reaped when its death is seen; its place stays counted until its holder returns it.
        roster = self.pool._roster
        reaped = {
            w.pid for w in roster.busy | {*roster.idle} if w.process.popen.returncode is not None
        }
        assert pids == counted - reaped
        assert roster.count == len(counted)
        assert not roster.spawning and not roster.retiring  # between steps, all settled
        if self.closed:
            assert not pids

    def teardown(self) -> None:
        try:
            for worker in self.held:
                self._call(self.pool.release, worker, False)
            self._call(self.pool.close)
        finally:
            self._stack.close()


PoolMachine.TestCase.settings = settings(
    max_examples=20,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_pool_state_machine = PoolMachine.TestCase


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + STEP_LIMIT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- the reported race, pinned ------------------------------------------------------------------


@pytest.fixture
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal() as portal:
        yield portal


async def _race(pool: Pool) -> tuple[int, int]:
    """Warm both workers, let them expire, then reap while two runs acquire; give them back
    and ask for one more worker than the pool holds: (live workers seen, workers handed)."""
    warm = [await pool.acquire() for _ in range(SIZE)]
    for worker in warm:
        await pool.release(worker)
    await anyio.sleep(pool.idle_timeout + 0.05)  # both are now past the idle timeout
    held: list[WorkerProcess] = []

    async def take() -> None:
        held.append(await pool.acquire())

    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, pool.reap_idle)
        for _ in range(SIZE):
            tg.start_soon(take)
    for worker in held:
        await pool.release(worker, worker.alive)
    held.clear()
    with anyio.move_on_after(1.0):  # the last acquire must wait: every place is taken
        for _ in range(SIZE + 1):
            held.append(await pool.acquire())
    live = len(worker_children())
    for worker in held:
        await pool.release(worker)
    return live, len(held)


def test_reaper_racing_acquires_keeps_the_bound(portal: BlockingPortal) -> None:
    async def make() -> Pool:
        return Pool(SIZE, idle_timeout=0.2)

    pool = portal.call(make)
    try:
        live, handed = portal.call(_bounded, _race, pool)
    finally:
        portal.call(pool.close)
    assert live <= SIZE, f"{live} worker processes for n_jobs={SIZE}"
    assert handed == SIZE
