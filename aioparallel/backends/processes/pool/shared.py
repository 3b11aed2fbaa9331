"""The process-wide warm pools, one per ``n_jobs``, worker setup and recycling limits:
shared by every event loop and thread, so successive ``asyncio.run`` calls, trio runs and
loops in other threads reuse the same workers. A reaper thread, alive while a worker is
idle, stops those idle past ``idle_timeout``; ``shutdown_workers()`` stops every idle one
now; at exit, and in a forked child, the shared pools are let go.
"""

from __future__ import annotations

import atexit
import os
import threading

from ...crossloop import Reaper
from ...setup import PLAIN, WorkerSetup
from ..process import forget_live_pids
from .pool import Pool
from .recycling import NO_LIMITS, Limits

__all__ = ["shared_pool", "shutdown_workers"]

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
