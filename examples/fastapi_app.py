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
- ``/metrics`` serves the pool's state and counters, for a dashboard or an alert;
- each request's id (its ``x-request-id`` header, or a new one) follows its calls into the
  workers (``aioparallel.propagate``), so their log lines, handled by this process's
  logging, name the request they served.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Query, Request, Response

# ``aioparallel.pool_stats`` and ``shutdown_workers`` are looked up when called: the workers
# import this module (for count_primes), and it must not load the pool machinery there.
import aioparallel
from aioparallel import Parallel, delayed, propagate

#: Worker processes; calls of every request share them (one warm pool per settings).
N_JOBS = 2
#: Calls one request is split into: a few per worker, so both stay busy to the end.
CHUNKS = 4

#: The id of the request being served: set by the middleware below, and, registered with
#: ``propagate``, set in the workers too while they run that request's calls.
request_id: ContextVar[str] = ContextVar("request_id", default="-")
propagate(request_id)

# The workers' records are handled here, by this process's logging: pid is the worker's.
logging.basicConfig(
    level=logging.INFO, format="%(levelname)s %(name)s pid=%(process)d: %(message)s"
)
log = logging.getLogger(__name__)


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
    log.info("request %s: %d primes in [%d, %d)", request_id.get(), count, start, stop)
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


@app.middleware("http")
async def name_the_request(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """The request's id, for this request's calls wherever they run, and in the reply."""
    rid = request.headers.get("x-request-id") or uuid.uuid4().hex[:12]
    token = request_id.set(rid)
    try:
        response = await call_next(request)
    finally:
        request_id.reset(token)
    response.headers["x-request-id"] = rid
    return response


@app.get("/ping")
async def ping() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/compute")
async def compute(request: Request, n: int = Query(ge=0, le=10_000_000)) -> dict[str, int]:
    """The number of primes below ``n``, counted in chunks on the worker processes."""
    step = max(1, -(-n // CHUNKS))
    counts = await request.app.state.parallel(
        delayed(count_primes)(start, min(start + step, n)) for start in range(0, n, step)
    )
    return {"n": n, "primes": sum(counts)}


@app.get("/metrics")
async def metrics() -> dict[str, Any]:
    """The worker pools' state and counters (``pool_stats()``: cheap, no await needed)."""
    return {"pools": aioparallel.pool_stats()}
