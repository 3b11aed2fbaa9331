"""Our Ray backend beside joblib's Ray backend and raw ``ray.remote`` + ``await``.

    python -m benchmarks.ray_vs_peers [--repeats 5] [--json PATH]

One local Ray instance (``ray.init(num_cpus=2)``) serves every contender, started in this
process after the spin loop is calibrated (so its workers inherit the loop length). Two
workloads: 64 calls of ~25 ms of pure-Python work (``spin_25ms``) and 2,000 tiny calls
(``double``). Each repeat runs every workload on every contender, interleaved, and the table
shows medians:

- ``ours``: ``Parallel(n_jobs=2)`` under ``parallel_config(backend="ray")``;
- ``joblib-ray``: ``joblib.Parallel(n_jobs=2)`` under ``ray.util.joblib.register_ray()`` and
  ``joblib.parallel_config(backend="ray")``, in a thread (joblib blocks); it runs the calls
  on Ray's multiprocessing ``Pool`` (actors), started for each call, as joblib does;
- ``ray.remote``: one Ray task per call, all submitted at once, awaited with
  ``asyncio.gather``: what Ray itself does with unbatched calls.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import anyio

from aioparallel import Parallel, delayed, parallel_config

from .interleaved import Runner, Times, main, time_interleaved
from .workloads import spin_iterations


def _joblib_runner() -> Runner:
    import joblib  # type: ignore[import-untyped]
    from ray.util.joblib import register_ray

    register_ray()

    def blocking(func: Callable[[int], int], n: int) -> list[int]:
        with joblib.parallel_config(backend="ray", n_jobs=2):
            return list(joblib.Parallel()(joblib.delayed(func)(i) for i in range(n)))

    async def run(func: Callable[[int], int], n: int) -> list[int]:
        return await anyio.to_thread.run_sync(blocking, func, n)

    return run


def _raw_runner() -> Runner:
    import ray

    remotes: dict[Any, Any] = {}

    async def run(func: Callable[[int], int], n: int) -> list[int]:
        remote = remotes.setdefault(func, ray.remote(func))
        return list(await asyncio.gather(*[remote.remote(i) for i in range(n)]))

    return run


def _ours_runner() -> Runner:
    async def run(func: Callable[[int], int], n: int) -> list[int]:
        with parallel_config(backend="ray"):
            return await Parallel(n_jobs=2)(delayed(func)(i) for i in range(n))

    return run


async def measure(repeats: int) -> Times:
    """Seconds per (workload, contender), one entry per repeat, interleaved."""
    import ray

    spin_iterations()  # calibrate before Ray starts, so its workers inherit the loop length
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        runners = {
            "ours": _ours_runner(),
            "joblib-ray": _joblib_runner(),
            "ray.remote": _raw_runner(),
        }
        return await time_interleaved(runners, repeats)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    asyncio.run(
        main(sys.argv[1:], __doc__, measure, "local Ray, num_cpus=2", ("joblib-ray", "ray.remote"))
    )
