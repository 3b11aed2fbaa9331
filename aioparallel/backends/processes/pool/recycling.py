"""When a process worker is replaced: ``max_tasks_per_worker`` and ``max_worker_memory``.

A long-lived worker accumulates what its tasks leave behind (a library's cache, a leak, a
fragmented heap); a web service's workers live for days. So a worker that has run
``max_tasks`` calls, or whose resident memory is past ``max_memory`` after a call, is
replaced. Neither limit ever interrupts a call:

- calls: the parent sends a worker at most the calls it has left (``Limits.budget``); the
  rest of a larger batch goes on to the next worker, as the calls a crashed worker had not
  started do (``batch.BatchRun``). So no worker runs more than ``max_tasks`` calls, async
  calls included, and none is stopped in the middle of a job.
- memory: from the kernel's count of the worker's resident pages, read by the worker after
  each call of a job (``child.main``; the limit travels with the job), which then starts
  no further call: the rest of its batch goes on as above; and by the parent when the
  worker gives a batch back (``resident_bytes``; on macOS, only this).

A spent worker is not handed out again: ``Pool.give_back`` retires it (the roster counts it
``recycled``) and a thread of its own stops it, frees its place, and starts its successor,
so neither the stop nor the successor's start-up lands on a request that is waiting for a
worker (unless one is waiting already: the freed place goes to it first).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from ..worker import WorkerProcess

__all__ = ["NO_LIMITS", "Limits", "resident_bytes"]


@dataclass(frozen=True, slots=True)
class Limits:
    """When a worker is replaced; part of a warm pool's identity (equal limits share one)."""

    #: Calls a worker runs, whatever their outcome, before it is replaced (None: no limit).
    max_tasks: int | None = None
    #: Resident bytes past which a worker is replaced after a call (None: no limit).
    max_memory: int | None = None

    def budget(self, worker: WorkerProcess) -> int | None:
        """Calls ``worker`` may still run (at least 1: a spent worker is never handed out);
        None: no limit."""
        if self.max_tasks is None:
            return None
        return max(1, self.max_tasks - worker.calls_run)

    def spent(self, worker: WorkerProcess) -> bool:
        """``worker`` must be replaced now, between two batches."""
        if self.max_tasks is not None and worker.calls_run >= self.max_tasks:
            return True
        if self.max_memory is not None:
            rss = resident_bytes(worker.pid)
            return rss is not None and rss > self.max_memory
        return False


#: No limit: workers live until idle_timeout (the default).
NO_LIMITS = Limits()

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes(pid: int) -> int | None:
    """The resident memory of process ``pid`` now (None if it cannot be read): Linux reads
    ``/proc/<pid>/statm`` (a few microseconds); macOS asks ``proc_pid_rusage``."""
    if sys.platform == "darwin":  # pragma: no cover - exercised on macOS only
        return _darwin_resident_bytes(pid)
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):  # gone, or no /proc
        return None


def _darwin_resident_bytes(pid: int) -> int | None:  # pragma: no cover - macOS only
    """``ri_resident_size`` of ``proc_pid_rusage(pid, RUSAGE_INFO_V0)``: 16 bytes of uuid,
    then six 8-byte counters before it."""
    import ctypes

    try:
        libc = ctypes.CDLL("/usr/lib/libSystem.dylib", use_errno=True)
        info = (ctypes.c_uint64 * 12)()
        if libc.proc_pid_rusage(pid, 0, ctypes.byref(info)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return int(info[2 + 6])
