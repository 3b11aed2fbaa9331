"""Where W6's loop lag comes from: time CPython's garbage collections during W1-sized runs.

    python -m benchmarks.gc_pauses

Runs 20,000 tiny calls 10 times with a 1 ms heartbeat in the same loop, in a process that
has the benchmark's peer libraries imported (as the benchmark process does), and prints the
worst heartbeat lag per run next to the longest collection of each generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import time
from typing import Any

import anyio

from aioparallel import Parallel, delayed

from .workloads import double

PEER_MODULES = ("joblib", "mpire", "aiomultiprocess", "matplotlib.pyplot")


async def _heartbeat(lags: list[float], stop: anyio.Event) -> None:
    while not stop.is_set():
        began = time.perf_counter()
        await anyio.sleep(0.001)
        lags.append(time.perf_counter() - began - 0.001)


async def main() -> None:
    for name in PEER_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    pauses: list[tuple[float, int]] = []
    started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((time.perf_counter() - started[0], info["generation"]))

    worst = []
    async with Parallel(n_jobs=2) as parallel:
        await parallel(delayed(double)(i) for i in range(1000))
        gc.callbacks.append(on_gc)
        try:
            for _ in range(10):
                lags: list[float] = []
                stop = anyio.Event()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_heartbeat, lags, stop)
                    await parallel(delayed(double)(i) for i in range(20_000))
                    stop.set()
                worst.append(max(lags))
        finally:
            gc.callbacks.remove(on_gc)
    print("worst heartbeat lag per run, ms:", [round(w * 1000, 1) for w in worst])
    for generation in (0, 1, 2):
        times = [d for d, g in pauses if g == generation]
        longest = max(times, default=0.0) * 1000
        print(f"generation {generation}: {len(times)} collections, longest {longest:.2f} ms")


if __name__ == "__main__":
    asyncio.run(main())
