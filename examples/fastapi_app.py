"""A FastAPI app that offloads CPU-bound work to process workers: the production pattern.

Run it from the repository root::

    uvicorn examples.fastapi_app:app

then open http://127.0.0.1:8000/compute?n=200000 (the number of primes below n) while
http://127.0.0.1:8000/ping keeps answering at once: the counting runs on two worker
processes, and the event loop only awaits it. http://127.0.0.1:8000/metrics shows the
worker pool (``aioparallel.pool_stats()``).

What makes it fit to run for days (see the docs' "Web backends" page):

- the lifespan starts the workers before the first request, and stops them at shutdown;
- ``max_tasks_per_worker`` / ``max_worker_memory`` replace a worker that has run many calls
  or grown large (a leaky library), between calls, never during one;
- ``/metrics`` serves the pool's state and counters, for a dashboard or an alert.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Query, Request

# ``aioparallel.pool_stats`` and ``shutdown_workers`` are looked up when called: the workers
# import this module (for count_primes), and it must not load the pool machinery there.
import aioparallel
from aioparallel import Parallel, delayed

#: Worker processes; calls of every request share them (one warm pool per settings).
N_JOBS = 2
#: Calls one request is split into: a few per worker, so both stay busy to the end.
CHUNKS = 4


def count_primes(start: int, stop: int) -> int:
    """Primes in ``range(start, stop)``, by trial division: pure-Python CPU work."""
    count = 0
    for candidate in range(max(start, 2), stop):
        if candidate % 2 == 0:
            if candidate == 2:
                count += 1
            continue
        divisor = 3
        while divisor * divisor <= candidate:
            if candidate % divisor == 0:
                break
            divisor += 2
        else:
            count += 1
    return count


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One ``Parallel`` for the app's life: its workers start now, not in the first
    request, and are stopped when the server shuts down."""
    parallel = Parallel(
        n_jobs=N_JOBS,
        max_tasks_per_worker=10_000,  # a fresh worker after this many calls
        max_worker_memory="1G",  # ... or once one holds this much memory after a batch
    )
    await parallel(delayed(int)() for _ in range(N_JOBS))  # start the workers
    app.state.parallel = parallel
    try:
        yield
    finally:  # stop the idle workers now, rather than at interpreter exit
        await anyio.to_thread.run_sync(aioparallel.shutdown_workers)


app = FastAPI(title="aioparallel example", lifespan=lifespan)


@app.get("/ping")
async def ping() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/compute")
async def compute(request: Request, n: int = Query(ge=0, le=10_000_000)) -> dict[str, int]:
    """The number of primes below ``n``, counted in chunks on the worker processes."""
    step = max(1, -(-n // CHUNKS))
    # (Per-request context, such as a request id for the workers' logs, goes here.)
    counts = await request.app.state.parallel(
        delayed(count_primes)(start, min(start + step, n)) for start in range(0, n, step)
    )
    return {"n": n, "primes": sum(counts)}


@app.get("/metrics")
async def metrics() -> dict[str, Any]:
    """The worker pools' state and counters (``pool_stats()``: cheap, no await needed)."""
    return {"pools": aioparallel.pool_stats()}
