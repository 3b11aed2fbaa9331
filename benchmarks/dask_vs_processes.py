"""64 calls of a 25 ms pure-Python loop on a two-worker dask cluster, next to the process
backend with ``n_jobs=2`` (issue 8's comparison).

    python -m benchmarks.dask_vs_processes

The cluster is a ``distributed.LocalCluster`` of 2 worker processes with 1 thread each, on
127.0.0.1; its scheduler shares the machine, so on 2 cores it costs dask some speedup.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aioparallel import Parallel, delayed, parallel_config

from .workloads import spin_25ms, spin_iterations

CALLS = 64
ROUNDS = 3


async def _best_of(parallel: Parallel[Any]) -> float:
    await parallel(delayed(spin_25ms)(i) for i in range(4))  # warm up
    times = []
    for _ in range(ROUNDS):
        began = time.perf_counter()
        await parallel(delayed(spin_25ms)(i) for i in range(CALLS))
        times.append(time.perf_counter() - began)
    return min(times)


async def main() -> None:
    from distributed import Client, LocalCluster

    spin_iterations()
    began = time.perf_counter()
    for i in range(CALLS):
        spin_25ms(i)
    sequential = time.perf_counter() - began
    async with Parallel(n_jobs=2) as warm:
        processes = await _best_of(warm)
    cluster = LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
        asynchronous=True,
    )  # fmt: skip
    async with cluster, Client(cluster, asynchronous=True) as client:  # type: ignore[no-untyped-call]
        async with parallel_config(backend="dask", client=client):
            dask = await _best_of(Parallel())
    print(f"{CALLS} x 25 ms: sequential {sequential:.2f} s")
    print(f"  processes, n_jobs=2:  {processes:.2f} s  ({sequential / processes:.2f}x)")
    print(f"  dask, 2 workers:      {dask:.2f} s  ({sequential / dask:.2f}x)")


if __name__ == "__main__":
    asyncio.run(main())
