"""The warm pool that keeps worker processes between runs.

A ``Pool`` hands workers (``processes.worker.WorkerProcess``) out first come, first served,
so concurrent runs share it fairly; it replaces dead workers lazily. A private pool
(``async with Parallel()``) is closed when the block exits. The shared pools are
process-wide, one per ``n_jobs`` and worker setup: they outlive event loops, so successive
``asyncio.run`` calls, trio runs and loops in other threads reuse the same workers.
Nothing in them is bound to a loop: the roster's state is behind a lock and its waiters are
woken in their own loops (``backends.crossloop``); a reaper thread, alive while a worker is idle,
stops those idle past ``idle_timeout``; ``shutdown_workers()`` stops every idle one now. A
loop closed while its tasks held workers never gives them back: the pool takes them back
(``Pool.reclaim``), so one test runner that closes its loops early cannot wedge it.
"""

from __future__ import annotations

import atexit
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import anyio

from ...._errors import AioParallelError
from ...._system import cpu_count
from ...crossloop import LoopRef, Reaper, call_soon
from ...setup import PLAIN, WorkerSetup
from ..process import forget_live_pids
from ..worker import WorkerProcess
from . import stats
from .recycling import NO_LIMITS, Limits
from .roster import PLACE, Need, PoolClosedError, Roster, Standing

__all__ = [
    "Pool",
    "PoolClosedError",
    "RunWorkers",
    "WorkerProcess",
    "run_ticket",
    "shared_pool",
    "shutdown_workers",
]


#: Run tickets: a pool serves waiting runs in the order they started.
_tickets = itertools.count()


def run_ticket() -> int:
    """A number for a run that is starting: runs that started earlier get workers first."""
    return next(_tickets)


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


class RunWorkers:
    """One run's access to a pool: its place in line, and the workers it keeps between its
    batches.

    Runs are served in the order they started (their ticket). A lane that has finished a
    batch takes its next batch at once, yielding to the event loop only once in between; the
    worker it gave back waits for it here until then, instead of going to the pool, where
    another run's lane would take it and this run would queue in turn (under load every run
    would then finish at the very end). If the run asks for no worker within two turns of
    the loop, the worker goes back to the pool then. So a run holds its workers only while
    it is using them, and a pool serves concurrent runs one after another, at full width.
    Except that a run which has used far more worker time than a newer waiting run needs
    yields it the worker it gives back (``need``: the run's own estimate; ``Pool.yield_to``).
    """

    def __init__(self, pool: Pool, need: Need | None = None):
        self.pool = pool
        #: Its place in line; ``used``: the seconds it held workers for (its batches' time).
        self.standing = Standing(run_ticket(), 0.0, need)
        self._since: dict[WorkerProcess, float] = {}
        self._kept: list[WorkerProcess] = []
        #: Kept workers the pool refused back (dead, or the pool closed): stopped by this run.
        self._doomed: list[WorkerProcess] = []
        #: This run's lanes waiting in the pool for a worker.
        self.waiting = 0

    @property
    def closed(self) -> bool:
        return self.pool.closed

    @property
    def crowded(self) -> bool:
        """Every worker of the pool is busy, this run holds fewer than all of them, and
        another run waits for one: a worker this run does not use would be taken anyway.
        Busy with this run's batches alone, or with nobody behind it in line (the last
        request of a burst), the pool is not crowded for it: it spreads its calls over the
        workers it can get."""
        pool = self.pool
        if not pool.crowded:
            return False
        held = len(self._since) + len(self._kept)
        return held < pool.size and pool.waiting > self.waiting

    def keep_idle(self, lanes: int) -> None:
        """This run's ``lanes`` are about to ask for a worker (a lane that started another):
        keep idle workers for them, as many as they lack, if nobody waits. A newer run's
        lane, which the loop may run first, cannot take them, so a run that starts on an
        idle pool gets its full width (kept two turns, as ``keep``)."""
        for _ in range(lanes - len(self._kept)):
            worker = self.pool.take_idle()
            if worker is None:
                return
            if not self.keep(worker):
                self._doomed.append(worker)

    async def wait_for_worker(self) -> None:
        """If this run keeps no worker and none is free, wait in line for one and keep it,
        so that the run cuts its next batch when a worker can run it (``Run``)."""
        if self._kept or not self.pool.crowded:
            return
        worker = await self.acquire()
        if not self.keep(worker):
            self._doomed.append(worker)

    async def acquire(self) -> WorkerProcess:
        """A kept worker, else one from the pool (in this run's place in line)."""
        worker = None
        while self._kept and worker is None:
            kept = self._kept.pop()
            if kept.alive and not self.pool.closed:
                worker = kept
            else:
                self._doomed.append(kept)
        await self._stop_doomed()
        if worker is None:
            self.waiting += 1
            try:
                worker = await self.pool.acquire(self.standing)
            finally:
                self.waiting -= 1
        self._since[worker] = time.monotonic()
        return worker

    async def release(self, worker: WorkerProcess, healthy: bool = True) -> None:
        """Keep a healthy worker (``keep``); stop any other. Call shielded."""
        if not (healthy and self.keep(worker)):
            self._since.pop(worker, None)
            await self.pool.release(worker, healthy=False)

    def keep(self, worker: WorkerProcess, again: bool = True) -> bool:
        """``release`` of a healthy worker, synchronously (no shielded scope to pay for):
        keep it for two turns of the loop (unless it is spent: replaced now; or a much
        smaller newer run waits: yielded to it; or the run will not ask ``again``: to the
        pool now, as the next run waits for it). False if it must be stopped instead (it
        died, or the pool is closed): then ``release`` it as unhealthy."""
        since = self._since.pop(worker, None)
        if since is not None:
            self.standing.used += time.monotonic() - since
        pool = self.pool
        if not worker.alive or pool.closed:
            return False
        if pool.limits is not NO_LIMITS and pool.limits.spent(worker):
            pool.recycle(worker)
            return True
        if pool.yield_to(worker, self.standing):
            return True
        if not again:
            return pool.give_back(worker, alive=True)
        self._kept.append(worker)
        # two turns: the first lets the lane yield once (every lane does, between batches)
        call_soon(lambda: call_soon(lambda: self._give_back(worker)))
        return True

    @property
    def memory_limit(self) -> int | None:
        """``max_worker_memory``: the workers check it between the calls of a job."""
        return self.pool.limits.max_memory

    @property
    def spare_core(self) -> bool:
        """``Pool.spare_core``."""
        return self.pool.spare_core

    def budget(self, worker: WorkerProcess) -> int | None:
        """Calls ``worker`` may still run (``max_tasks_per_worker``); None: no limit."""
        return self.pool.limits.budget(worker)

    def count(self, worker: WorkerProcess, calls: int) -> None:
        """``worker`` completed ``calls`` more calls (for its limit and ``pool_stats``)."""
        self.pool.count(worker, calls)

    def _give_back(self, worker: WorkerProcess) -> None:
        """The loop turned twice and the run did not take ``worker`` again: to the pool."""
        if worker in self._kept:
            self._kept.remove(worker)
            if not self.pool.give_back(worker):
                self._doomed.append(worker)

    async def _stop_doomed(self) -> None:
        while self._doomed:
            with anyio.CancelScope(shield=True):
                await self.pool.release(self._doomed.pop(), healthy=False)

    async def close(self) -> None:
        """At the run's end: every worker back to the pool, or stopped. Call shielded."""
        self.end()
        await self._stop_doomed()

    def end(self) -> bool:
        """``close``, synchronously, for the common case: every kept worker back to the
        pool. False if some are left to stop (dead, or the pool closed): then ``close``."""
        while self._kept:
            worker = self._kept.pop()
            if not self.pool.give_back(worker):
                self._doomed.append(worker)
        return not self._doomed


# -- the shared pools ----------------------------------------------------------------------------

_shared: dict[tuple[object, ...], Pool] = {}
_shared_lock = threading.Lock()
#: Held while idle shared workers are being stopped, so ``shutdown_workers`` returns only
#: once none is left half-stopped by the reaper.
_reaping = threading.Lock()


def _shared_key(size: int, setup: WorkerSetup, limits: Limits) -> tuple[object, ...]:
    """What makes two runs' workers interchangeable: the one place the key is built (the
    thread cap, the initializer and the recycling limits are fixed for a worker's life)."""
    return (size, setup, limits)


def shared_pool(
    size: int, idle_timeout: float, setup: WorkerSetup = PLAIN, limits: Limits = NO_LIMITS
) -> Pool:
    """The process-wide warm pool for ``size`` workers, shared by every event loop and
    thread. The latest ``idle_timeout`` asked for applies."""
    key = _shared_key(size, setup, limits)
    with _shared_lock:
        pool = _shared.get(key)
        if pool is None:
            pool = Pool(size, idle_timeout, setup, on_idle=_reaper.watch, limits=limits)
            _shared[key] = pool
        retimed = pool.idle_timeout != idle_timeout
        pool.idle_timeout = idle_timeout
    if retimed:
        _reaper.watch()
    return pool


def _shared_pools() -> list[Pool]:
    with _shared_lock:
        return list(_shared.values())


def _reap_shared() -> float | None:
    """The reaper's round: stop expired idle workers; seconds until the next may expire."""
    with _reaping:
        delays = [delay for pool in _shared_pools() if (delay := pool.reap_idle()) is not None]
    return min(delays, default=None)


_reaper = Reaper(_reap_shared, "aioparallel-idle-reaper")


@atexit.register  # registered after processes.worker's kill of leftovers, so it runs first
def _stop_shared_idle() -> None:
    with _reaping:
        for pool in _shared_pools():
            pool.reap_idle(everything=True)


def shutdown_workers() -> None:
    """Stop the shared pools' idle worker processes now, and their reaper thread.

    Workers stay warm between calls, and between event loops, until ``idle_timeout``; call
    this when the program is done with parallel work and wants them gone now (a test
    fixture, before forking, before measuring memory). Blocking (about a millisecond per
    worker): from async code, run it in a thread. Workers busy in a running call finish it
    and then stay warm as usual; the next call starts new workers as needed. Private pools
    (``async with Parallel(...)``) are not affected.
    """
    _stop_shared_idle()
    _reaper.stop()
    if any(pool._roster.oldest_idle() is not None for pool in _shared_pools()):
        _reaper.watch()  # a run gave one back meanwhile: keep an eye on it


def _forget_after_fork() -> None:
    """A forked child must neither use the parent's workers (their pipes are the parent's)
    nor kill them when it exits; it starts with no shared pool."""
    global _shared_lock, _reaping
    for pool in _shared.values():
        pool.forget_in_child()
    _shared.clear()
    forget_live_pids()
    _shared_lock = threading.Lock()
    _reaping = threading.Lock()
    _reaper.forget()


os.register_at_fork(after_in_child=_forget_after_fork)
