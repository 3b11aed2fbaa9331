"""The warm pool that keeps worker processes between runs.

A ``Pool`` hands workers (``processes.worker.WorkerProcess``) out first come, first served,
so concurrent runs share it fairly; it replaces dead workers lazily. A private pool
(``async with Parallel()``) is closed when the block exits; the process-wide shared ones
live in ``shared``. Nothing in a pool is bound to a loop: the roster's state is behind a lock and
its waiters are woken in their own loops (``backends.crossloop``), so a pool outlives the
loops that use it. A loop closed while its tasks held workers never gives them back: the
pool takes them back (``Pool.reclaim``), so one test runner that closes its loops early
cannot wedge it. A run reaches the pool through ``run_workers.RunWorkers``: its place in
line, and the workers it keeps between its batches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import anyio

from ...._errors import AioParallelError
from ...._system import cpu_count
from ...crossloop import LoopRef
from ...setup import PLAIN, WorkerSetup
from ..worker import WorkerProcess
from . import stats
from .recycling import NO_LIMITS, Limits
from .roster import PLACE, PoolClosedError, Roster, Standing

__all__ = [
    "Pool",
    "PoolClosedError",
    "WorkerProcess",
]


class Pool:
    """Up to ``size`` workers, handed out first come, first served, to tasks of any event
    loop in any thread.

    A worker's holder gives it back with ``release`` (healthy or not); the holder, not the
    pool, kills and reaps an unhealthy one, so its descriptors are closed by the one task
    that reads them. ``reap_idle`` (synchronous, from any thread: the shared pools' reaper)
    stops idle workers. ``close`` only signals busy workers and waits (bounded) for their
    holders to give them back.
    """

    #: How long ``close`` waits for busy workers' holders to give them back.
    CLOSE_WAIT = 5.0
    #: How long a worker asked to exit (end of its request pipe) gets before it is killed.
    STOP_WAIT = 1.0
    #: How often a waiting task looks for what loops that are gone held.
    RECHECK = 1.0

    def __init__(
        self,
        size: int,
        idle_timeout: float = 300.0,
        setup: WorkerSetup = PLAIN,
        on_idle: Callable[[float], None] | None = None,
        limits: Limits = NO_LIMITS,
    ):
        self.size = size
        self.idle_timeout = idle_timeout
        self.setup = setup
        #: When a worker is replaced (``recycling``).
        self.limits = limits
        #: One of the process-wide shared pools (else a private one), for ``pool_stats``.
        self.shared = on_idle is not None
        self._roster = Roster(size)
        #: Called with the time a worker that went idle expires (the shared pools' reaper).
        self._on_idle = on_idle
        #: Its number in ``pool_stats``.
        self.number = stats.register(self)
        #: When a waiter next looks at every loop that holds or waits (``_recheck``).
        self._next_recheck = 0.0
        #: CPUs this process may use (``spare_core``).
        self.cpus = cpu_count()

    @property
    def closed(self) -> bool:
        return self._roster.closed

    @property
    def crowded(self) -> bool:
        """Every worker is busy (``Roster.crowded``)."""
        return self._roster.crowded

    @property
    def spare_core(self) -> bool:
        """Nobody waits for a worker, and the busy ones (the one about to be sent a job among
        them) leave a CPU to spare beside the parent's: a worker may then watch for its next
        job after this one instead of sleeping (``child.protocol.SPIN``). Requests waiting
        would soon take that CPU. Read without the lock: a hint."""
        roster = self._roster
        return not roster.waiters and len(roster.busy) < self.cpus

    @property
    def waiting(self) -> int:
        """Lanes waiting for a worker, of every run (read without the lock: a hint)."""
        return len(self._roster.waiters)

    def take_idle(self) -> WorkerProcess | None:
        """An idle worker (alive or not), if one is and nobody waits for one; else None."""
        if self._roster.waiters:
            return None
        return self._roster.take(LoopRef())

    async def acquire(self, run: Standing | None = None) -> WorkerProcess:
        """A worker for the caller to hold until it calls ``release``; if none is free, the
        caller waits behind runs that started earlier (``run.ticket``, ``run_ticket()``),
        unless it needs far less than they used (``Roster.yield_to``). Raises
        ``PoolClosedError`` once the pool is shut down.

        A waiter looks again every ``RECHECK`` seconds: a loop closed while its tasks held
        workers says so to nobody, and a worker given back while the waiter's own loop was
        stopped went to the idle list."""
        roster = self._roster
        holder = LoopRef()
        while not roster.closed:
            worker = roster.take(holder)
            if worker is None:
                break
            if worker.alive:
                return worker
            with anyio.CancelScope(shield=True):  # died while idle
                await self.release(worker, healthy=False)
        self.reclaim(waiters=False)  # what a gone loop held would never come back
        waiter = roster.claim(holder, run if run is not None else Standing())
        if waiter is not None:
            waited = False
            try:
                while not waited:
                    waited = await waiter.signal.wait(self.RECHECK)
                    if not waited:
                        self._recheck()
            finally:
                handed = roster.withdraw(waiter)
                if not waited and handed is not None:  # handed over as we were cancelled
                    await self._give_back(handed, holder)
            if handed is None:
                raise PoolClosedError("the worker pool is shut down")
            if handed is not PLACE:
                return handed  # type: ignore[no-any-return]
        return await self._spawn(holder)

    def _recheck(self) -> None:
        """A waiter's look every ``RECHECK`` seconds, with the look at every loop (``reclaim``)
        taken by one waiter for all: a web backend's 1,000 waiters would each look at the
        1,000 others' loops every second."""
        now = time.monotonic()
        if now >= self._next_recheck:
            self._next_recheck = now + self.RECHECK / 2
            self.reclaim()
        self._roster.offer()

    def reclaim(self, waiters: bool = True) -> None:
        """Take back what loops that are gone held (``Roster.reclaim``): their workers are
        killed and reaped here, synchronously (a few milliseconds each: their holders' tasks,
        which would have, will never run again), and their places freed."""
        gone = self._roster.reclaim(waiters)
        for worker in gone:
            worker.kill_now()
        self._stop_blocking(gone)

    async def _give_back(self, handed: Any, holder: LoopRef) -> None:
        if handed is PLACE:
            self._roster.abandon(holder)
        else:
            with anyio.CancelScope(shield=True):
                await self.release(handed)

    async def _spawn(self, holder: LoopRef) -> WorkerProcess:
        try:
            worker = await WorkerProcess.spawn(self.size, self.setup)
        except BaseException:
            self._roster.abandon(holder)
            raise
        self._roster.spawned(worker, holder)
        if self.closed:  # shut down while it started
            with anyio.CancelScope(shield=True):
                await self.release(worker, healthy=False)
            raise PoolClosedError("the worker pool is shut down")
        return worker

    async def release(self, worker: WorkerProcess, healthy: bool = True) -> None:
        """Give a held worker back. A healthy one goes to the next waiter or the idle list;
        any other (unhealthy, dead, or the pool closed) is killed with its process tree and
        reaped here, in the holder's task, and its place freed. Call shielded."""
        if healthy and self.give_back(worker):
            return
        died = not worker.killed and worker.process.returncode is not None
        self._roster.retire(worker, "crashed" if died and not self.closed else "")
        try:
            await worker.kill()
        finally:
            self._roster.free_place(worker)

    def give_back(self, worker: WorkerProcess, alive: bool = False) -> bool:
        """``release`` of a healthy worker, synchronously (a loop callback may call it): to
        the next waiter or the idle list. False if it must be stopped instead (it died, or
        the pool is closed): the holder then calls ``release(worker, healthy=False)``. A
        worker past its limits is replaced instead (``recycling``). ``alive``: the caller has
        just seen it alive (a system call less)."""
        if not (alive or worker.alive):
            return False
        if self.limits is not NO_LIMITS and self.limits.spent(worker):
            self.recycle(worker)
            return True
        worker.last_used = time.monotonic()
        outcome = self._roster.release(worker)
        if outcome == "idle" and self._on_idle is not None:
            self._on_idle(worker.last_used + self.idle_timeout)
        return outcome != "refused"

    def yield_to(self, worker: WorkerProcess, run: Standing) -> bool:
        """Hand a healthy held worker to a newer, much smaller run waiting for one, if any
        (``Roster.yield_to``)."""
        return self._roster.yield_to(worker, run)

    def count(self, worker: WorkerProcess, calls: int) -> None:
        """``worker`` completed ``calls`` more calls."""
        worker.calls_run += calls
        self._roster.tally(calls)

    def recycle(self, worker: WorkerProcess) -> None:
        """Replace a spent worker: a thread of its own stops it (it is between batches: it
        exits at once), frees its place and starts its successor, off the request path."""
        self._roster.retire(worker, "recycled")
        threading.Thread(
            target=self._replace, args=(worker,), name="aioparallel-recycle", daemon=True
        ).start()

    def _replace(self, worker: WorkerProcess) -> None:
        self._stop_blocking([worker])  # its place goes to a waiter first, if any
        if not self.closed:
            anyio.run(self._start_successor)

    async def _start_successor(self) -> None:
        """A worker in the place a recycled one freed, if nobody took it meanwhile; one that
        fails to start is left to the next run to start (and report)."""
        holder = LoopRef()
        if not self._roster.claim_free(holder):
            return
        try:
            worker = await self._spawn(holder)
        except (RuntimeError, OSError, TimeoutError, AioParallelError):  # the place is free
            return
        if not self.give_back(worker):
            await self.release(worker, healthy=False)

    def reap_idle(self, everything: bool = False) -> float | None:
        """Stop the idle workers past ``idle_timeout`` (or dead; or all of them), waiting for
        them, bounded: synchronous, for a thread. Seconds until the next may expire; None if
        no worker is idle any more."""
        self.reclaim()
        now = time.monotonic()
        self._stop_blocking(
            self._roster.retire_idle(
                lambda w: everything or now - w.last_used >= self.idle_timeout or not w.alive
            )
        )
        oldest = self._roster.oldest_idle()
        if oldest is None:
            return None
        return max(0.01, oldest + self.idle_timeout - time.monotonic())

    def _stop_blocking(self, workers: Iterable[WorkerProcess]) -> None:
        """Stop retiring workers, all at once, and free their places."""
        workers = list(workers)
        for worker in workers:
            worker.ask_to_exit()
        deadline = time.monotonic() + self.STOP_WAIT
        for worker in workers:
            try:
                worker.stop_blocking(deadline)
            finally:
                self._roster.free_place(worker)

    async def _stop(self, worker: WorkerProcess) -> None:
        """Stop a retiring worker (kill it and its tree if it died: a crash) and free its
        place."""
        try:
            with anyio.CancelScope(shield=True):
                await (worker.stop() if worker.alive else worker.kill())
        finally:
            self._roster.free_place(worker)

    async def close(self) -> None:
        """Stop the idle workers; kill the busy ones (a signal: their holders reap them and
        fail their calls) and wait, bounded, for them to come back. Call shielded."""
        roster = self._roster
        self.reclaim()  # a gone loop's workers would never come back
        idle, busy = roster.close()
        for worker in busy:
            worker.kill_now()
        async with anyio.create_task_group() as tg:
            for worker in idle:
                tg.start_soon(self._stop, worker)
        with anyio.move_on_after(self.CLOSE_WAIT):
            await roster.emptied()

    def forget_in_child(self) -> None:
        """In a forked child: drop the parent's workers without touching them."""
        for worker in [*self._roster.idle, *self._roster.busy, *self._roster.retiring]:
            worker.forget_in_child()
