"""Facts about the machine and the process: usable CPUs, BLAS thread caps, worker nesting."""

from __future__ import annotations

import math
import os

__all__ = ["IN_WORKER_ENV", "blas_thread_env", "cpu_count", "in_worker"]

#: Set in every process worker, so a ``Parallel`` called inside one runs sequentially.
IN_WORKER_ENV = "AIOPARALLEL_IN_WORKER"

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
