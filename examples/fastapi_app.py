"""A FastAPI app that offloads CPU-bound work to process workers.

Run it from the repository root::

    uvicorn examples.fastapi_app:app

then open http://127.0.0.1:8000/compute?n=200000 (the number of primes below n) while
http://127.0.0.1:8000/ping keeps answering at once: the counting runs on two worker
processes, and the event loop only awaits it.
"""

from __future__ import annotations

from fastapi import FastAPI, Query

from aioparallel import Parallel, delayed

app = FastAPI(title="aioparallel example")

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


@app.get("/ping")
async def ping() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/compute")
async def compute(n: int = Query(ge=0, le=10_000_000)) -> dict[str, int]:
    """The number of primes below ``n``, counted in chunks on two worker processes."""
    step = max(1, -(-n // CHUNKS))
    counts = await Parallel(n_jobs=2)(
        delayed(count_primes)(start, min(start + step, n)) for start in range(0, n, step)
    )
    return {"n": n, "primes": sum(counts)}
