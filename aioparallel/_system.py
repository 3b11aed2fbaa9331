"""Facts about the machine and the process: usable CPUs, BLAS thread caps, worker nesting,
and which operating-system facilities the process backend may use (``FEATURES``)."""

from __future__ import annotations

import math
import os
import sys
from typing import NamedTuple

__all__ = [
    "FEATURES",
    "IN_WORKER_ENV",
    "PORTABLE_ENV",
    "Features",
    "blas_thread_env",
    "check_process_backend",
    "cpu_count",
    "in_worker",
]

#: Set in every process worker, so a ``Parallel`` called inside one runs sequentially.
IN_WORKER_ENV = "AIOPARALLEL_IN_WORKER"
#: A testing and debugging aid: ``AIOPARALLEL_PORTABLE=1`` (read once, at import) makes the
#: process backend use none of the Linux-only facilities, so it takes the paths it takes on
#: macOS (``nox -s portable`` runs the process tests that way).
PORTABLE_ENV = "AIOPARALLEL_PORTABLE"


class Features(NamedTuple):
    """The optional facilities the process backend uses where the system has them. Each is
    chosen here, once; the fallback is what macOS (or ``AIOPARALLEL_PORTABLE=1``) gets."""

    #: The worker's slot is a memfd (else a temp file, unlinked at once).
    memfd: bool
    #: A worker's exit is awaited through a pidfd (else polled, 1 ms to 50 ms apart; end of
    #: file on its pipe tells a waiting reader at once anyway).
    pidfd: bool
    #: A worker's exit is seen without reaping it (``waitid(WNOWAIT)``: Linux; macOS from
    #: Python 3.13), so its process group can be killed with no risk of the number's reuse
    #: (else the first look that finds it dead reaps it and kills its group at once).
    waitid: bool
    #: The kernel SIGKILLs a worker whose parent dies (``PR_SET_PDEATHSIG``), even in a C
    #: call that holds the GIL (else the worker's lifeline thread ends it, and its process
    #: group, once it gets the GIL).
    death_signal: bool
    #: Large arrays go to the RAM-backed /dev/shm (else the system temp dir).
    dev_shm: bool
    #: The worker pipes are grown to hold a whole inline frame (``F_SETPIPE_SZ``).
    pipe_size: bool
    #: Why the process backend cannot run here (None: it can). Found by capability: it
    #: needs POSIX descriptor passing, process groups and non-blocking pipes.
    processes_missing: str | None


def _missing_for_processes() -> str | None:
    if sys.platform == "win32":
        return "Windows has no POSIX pipes to pass to a worker or process groups to kill"
    missing = []
    for module in ("fcntl", "_posixsubprocess"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    missing += [f"os.{name}" for name in ("killpg", "setpgid") if not hasattr(os, name)]
    return f"this Python lacks {', '.join(missing)}" if missing else None


def _detect() -> Features:
    portable = os.environ.get(PORTABLE_ENV) == "1"
    linux = sys.platform == "linux" and not portable
    return Features(
        memfd=linux and hasattr(os, "memfd_create"),
        pidfd=linux and hasattr(os, "pidfd_open"),
        waitid=hasattr(os, "waitid") and not portable,  # macOS: from Python 3.13
        death_signal=linux,
        dev_shm=linux,
        pipe_size=linux,
        processes_missing=_missing_for_processes(),
    )


FEATURES = _detect()

_PLATFORM_NAMES = {"linux": "Linux", "darwin": "macOS", "win32": "Windows"}


def check_process_backend() -> None:
    """Raise ``NotImplementedError`` if the process backend cannot run on this system."""
    missing = FEATURES.processes_missing
    if missing is None:
        return
    platform = f"{_PLATFORM_NAMES.get(sys.platform, sys.platform)} (sys.platform={sys.platform!r})"
    raise NotImplementedError(
        f"backend='processes' (the default) is not supported on {platform}: {missing}. "
        "Use backend='threads' (calls that release the GIL: numpy, I/O) or backend='dask' "
        "(with a dask.distributed cluster, local or remote), or set one for a whole block "
        "with parallel_config(backend='threads'); see the docs' Platforms page."
    )


_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "BLIS_NUM_THREADS",
)


def _cgroup_cpu_limit() -> float | None:
    """CPUs granted by a cgroup v2 (or v1) quota, if any."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        if quota != "max":
            return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota_us = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period_us = int(f.read())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


def cpu_count() -> int:
    """CPUs this process may use: the smallest of the CPU count, affinity and cgroup quota."""
    counts = [os.cpu_count() or 1]
    if hasattr(os, "sched_getaffinity"):
        counts.append(len(os.sched_getaffinity(0)))
    quota = _cgroup_cpu_limit()
    if quota is not None:
        counts.append(max(1, math.ceil(quota)))
    return max(1, min(counts))


def in_worker() -> bool:
    """True inside an aioparallel process worker."""
    return os.environ.get(IN_WORKER_ENV) == "1"


def blas_thread_env(n_workers: int, inner_max_num_threads: int | None = None) -> dict[str, str]:
    """Thread caps for a worker so ``n_workers`` of them do not oversubscribe the CPUs.

    Variables the user already set are left alone, unless ``inner_max_num_threads`` is given
    (``parallel_config(inner_max_num_threads=N)``): that explicit setting is then every
    variable's value, as in joblib.
    """
    if inner_max_num_threads is not None:
        return dict.fromkeys(_THREAD_VARS, str(inner_max_num_threads))
    threads = str(max(1, cpu_count() // max(1, n_workers)))
    return {var: threads for var in _THREAD_VARS if var not in os.environ}
