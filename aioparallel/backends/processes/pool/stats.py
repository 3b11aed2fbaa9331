"""``pool_stats()``: what a service's ``/metrics`` endpoint reports about its worker pools.

Every ``Pool`` registers here when it is made (weakly: a private pool that is closed and
dropped leaves). Reading a pool's numbers takes its roster's lock for a few dozen
nanoseconds, the lock every change of those numbers holds, so a read from any thread,
during a run, sees one consistent state and never slows a run down.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pool import Pool

__all__ = ["pool_stats", "register"]

_pools: weakref.WeakSet[Pool] = weakref.WeakSet()
_lock = threading.Lock()
_numbers = itertools.count(1)


def register(pool: Pool) -> int:
    """Report ``pool`` in ``pool_stats`` until it is closed; its number there."""
    with _lock:
        _pools.add(pool)
        return next(_numbers)


def pool_stats() -> list[dict[str, Any]]:
    """The process backend's live worker pools: one plain dict per pool, ready for
    ``json.dumps``.

    Synchronous, cheap (microseconds) and safe from any thread or event loop: call it from
    a ``/metrics`` endpoint or a monitoring thread. Shared pools come first (one per
    ``n_jobs`` and worker setup), then private ones (``async with Parallel(...)``); a pool
    appears once it has been used and leaves when it is closed.

    Returns
    -------
    list of dict
        Each with what tells the pool apart: ``pool`` (a number, unique in this process:
        a metrics label), ``backend`` (``"processes"``), ``shared`` (bool), ``n_jobs``,
        ``initializer`` (its name, or None), ``inner_max_num_threads``,
        ``max_tasks_per_worker``, ``max_worker_memory`` (bytes, or None), ``idle_timeout``
        (seconds); its state now:
        ``workers`` (live worker processes, busy, idle or stopping), ``busy``, ``idle``,
        ``starting`` (processes being started), ``waiting`` (runs waiting for a worker); and
        counts over its life: ``spawned`` (workers started), ``recycled`` (replaced for
        ``max_tasks_per_worker`` or ``max_worker_memory``), ``crashed`` (died on their own:
        not killed for a timeout, a cancellation or a shutdown), ``tasks_done`` (calls that
        completed on its workers, whatever their outcome).
    """
    with _lock:
        pools = [pool for pool in _pools if not pool.closed]
    pools.sort(key=lambda pool: not pool.shared)
    return [_describe(pool) for pool in pools]


def _describe(pool: Pool) -> dict[str, Any]:
    return {
        "pool": pool.number,
        "backend": "processes",
        "shared": pool.shared,
        "n_jobs": pool.size,
        "initializer": pool.setup.initializer_name or None,
        "inner_max_num_threads": pool.setup.inner_max_num_threads,
        "max_tasks_per_worker": pool.limits.max_tasks,
        "max_worker_memory": pool.limits.max_memory,
        "idle_timeout": pool.idle_timeout,
        **pool._roster.stats(),
    }


def _forget_after_fork() -> None:
    """A forked child has no pool of its own yet."""
    global _lock
    _lock = threading.Lock()
    _pools.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
