"""One run's access to a pool (``RunWorkers``): its place in the pool's line, and the
workers it keeps between its batches, so that a run holds its workers only while it uses
them and concurrent runs are served one after another at full width.
"""

from __future__ import annotations

import itertools
import time

import anyio

from ...crossloop import call_soon
from ..worker import WorkerProcess
from .pool import Pool
from .recycling import NO_LIMITS
from .roster import Need, Standing

__all__ = ["RunWorkers", "run_ticket"]


#: Run tickets: a pool serves waiting runs in the order they started.
_tickets = itertools.count()


def run_ticket() -> int:
    """A number for a run that is starting: runs that started earlier get workers first."""
    return next(_tickets)


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
