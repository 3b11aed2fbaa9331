"""Our dask backend beside joblib's, raw ``client.submit``/``gather`` and our process backend.

    python -m benchmarks.dask_vs_processes [--repeats 5] [--json PATH]

One ``distributed.LocalCluster`` of 2 worker processes with 1 thread each, on 127.0.0.1,
serves every dask contender; its scheduler runs in this process (and on 2 cores shares the
machine with the workers). Two workloads: 64 calls of ~25 ms of pure-Python work
(``spin_25ms``, calibrated here and inherited by the workers) and 2,000 tiny calls
(``double``). Each repeat runs every workload on every contender, interleaved, and the table
shows medians:

- ``ours``: ``Parallel()`` under ``parallel_config(backend="dask", client=client)``;
- ``joblib-dask``: ``joblib.Parallel()`` under ``joblib.parallel_config(backend="dask")``,
  in a thread (joblib blocks), with a synchronous client to the same cluster;
- ``submit/gather``: one ``client.submit`` per call, then ``client.gather``: the floor of
  what dask itself can do with calls that are submitted all at once;
- ``processes``: ``Parallel(n_jobs=2)`` on our process backend, warm, for reference.
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


def _joblib_runner(sync_client: Any) -> Runner:
    import joblib  # type: ignore[import-untyped]

    def blocking(func: Callable[[int], int], n: int) -> list[int]:
        with joblib.parallel_config(backend="dask", client=sync_client):
            return list(joblib.Parallel()(joblib.delayed(func)(i) for i in range(n)))

    async def run(func: Callable[[int], int], n: int) -> list[int]:
        return await anyio.to_thread.run_sync(blocking, func, n)

    return run


def _raw_runner(client: Any) -> Runner:
    async def run(func: Callable[[int], int], n: int) -> list[int]:
        futures = [client.submit(func, i, pure=False) for i in range(n)]
        return list(await client.gather(futures))

    return run


def _ours_runner(client: Any) -> Runner:
    async def run(func: Callable[[int], int], n: int) -> list[int]:
        async with parallel_config(backend="dask", client=client):
            return await Parallel()(delayed(func)(i) for i in range(n))

    return run


def _processes_runner(warm: Parallel[Any]) -> Runner:
    async def run(func: Callable[[int], int], n: int) -> list[int]:
        return await warm(delayed(func)(i) for i in range(n))

    return run


async def measure(repeats: int) -> Times:
    """Seconds per (workload, contender), one entry per repeat, interleaved."""
    from distributed import Client, LocalCluster

    spin_iterations()  # calibrate before the workers start, so they inherit the loop length
    cluster = LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, asynchronous=True,
    )  # fmt: skip
    async with (
        cluster,
        Client(cluster, asynchronous=True, set_as_default=False) as client,  # type: ignore[no-untyped-call]
        Parallel(n_jobs=2) as warm,
    ):
        sync_client = await anyio.to_thread.run_sync(
            lambda: Client(cluster.scheduler_address, set_as_default=False)  # type: ignore[no-untyped-call]
        )
        try:
            runners = {
                "ours": _ours_runner(client),
                "joblib-dask": _joblib_runner(sync_client),
                "submit/gather": _raw_runner(client),
                "processes": _processes_runner(warm),
            }
            return await time_interleaved(runners, repeats)
        finally:
            await anyio.to_thread.run_sync(sync_client.close)


if __name__ == "__main__":
    setting = "2-worker LocalCluster, 1 thread each"
    asyncio.run(main(sys.argv[1:], __doc__, measure, setting, ("joblib-dask", "submit/gather")))
