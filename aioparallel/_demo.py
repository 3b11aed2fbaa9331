"""``python -m aioparallel demo``: CPU-bound work on process workers, the event loop kept free.

It maps a pure-Python function over inputs with a progress bar while a heartbeat task in the
same loop measures how late its 5 ms ticks wake up, then prints the speedup over a plain
sequential loop and the worst loop lag.
"""

from __future__ import annotations

import argparse
import os
import time

import anyio

from ._call import delayed
from ._parallel import Parallel
from ._system import cpu_count


def count_primes(limit: int) -> int:
    """Deliberately naive trial division: pure-Python CPU work that holds the GIL."""
    count = 0
    for n in range(2, limit):
        d = 2
        while d * d <= n:
            if n % d == 0:
                break
            d += 1
        else:
            count += 1
    return count


async def _heartbeat(lags: list[float], stop: anyio.Event, tick: float = 0.005) -> None:
    while not stop.is_set():
        before = time.perf_counter()
        await anyio.sleep(tick)
        lags.append(time.perf_counter() - before - tick)


async def _main(n_jobs: int, tasks: int, size: int) -> None:
    load_before = _load_average()
    inputs = [size + i for i in range(tasks)]
    print(f"aioparallel demo: {tasks} calls of count_primes(~{size}) on {n_jobs} workers")

    began = time.perf_counter()
    expected = [count_primes(n) for n in inputs]
    sequential = time.perf_counter() - began
    print(f"  plain sequential loop: {sequential:.2f} s")

    try:
        import tqdm  # noqa: F401

        progress = True
    except ImportError:
        progress = False
    lags: list[float] = []
    stop = anyio.Event()
    # Start the workers outside the timing: later calls in this loop reuse the warm pool.
    await Parallel(n_jobs=n_jobs)(delayed(count_primes)(10) for _ in range(n_jobs))
    parallel = Parallel(n_jobs=n_jobs, progress=progress, verbose=0 if progress else 5)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_heartbeat, lags, stop)
        began = time.perf_counter()
        results = await parallel([delayed(count_primes)(n) for n in inputs])
        elapsed = time.perf_counter() - began
        stop.set()
    assert results == expected, "parallel results differ from the sequential ones"
    print(f"  await Parallel(n_jobs={n_jobs}):  {elapsed:.2f} s  (results identical)")
    print(f"  speedup over sequential: {sequential / elapsed:.2f}x on {cpu_count()} CPUs")
    worst = max(lags, default=0.0) * 1000
    print(f"  event loop: {len(lags)} heartbeats of 5 ms, max lag {worst:.1f} ms")
    for note in _verdicts(worst, sequential / elapsed, n_jobs, load_before):
        print(f"  {note}")


#: Above this, a heartbeat came visibly late: say so rather than claim a free loop.
RESPONSIVE_MS = 50.0


def _verdicts(worst_ms: float, speedup: float, n_jobs: int, load_before: float | None) -> list[str]:
    """What the figures say, including when they say the machine was busy."""
    notes = []
    if worst_ms <= RESPONSIVE_MS:
        notes.append(f"the event loop stayed responsive (no tick over {RESPONSIVE_MS:g} ms late)")
    else:
        notes.append(f"WARNING: a heartbeat was {worst_ms:.0f} ms late: the loop was held up")
    usable = min(n_jobs, cpu_count())
    if usable > 1 and speedup < 0.75 * usable:
        notes.append(f"WARNING: speedup {speedup:.2f}x is well below {usable} CPUs")
    if load_before is not None and load_before > 0.5 * cpu_count():
        notes.append(
            f"the machine was busy before the demo (1-min load {load_before:.2f} on "
            f"{cpu_count()} CPUs): other processes compete for the cores, figures are noisy"
        )
    return notes


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on this platform
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aioparallel demo",
        description=(
            "Map a CPU-bound function on process workers with a progress bar while a "
            "heartbeat task in the same event loop measures how late its 5 ms ticks wake up; "
            "print the speedup over a plain loop and the worst loop lag."
        ),
    )
    parser.add_argument(
        "--n-jobs",
        type=int,
        default=max(2, cpu_count()),
        help="worker processes (default: %(default)s)",
    )
    parser.add_argument(
        "--tasks", type=int, default=48, help="number of calls (default: %(default)s)"
    )
    parser.add_argument(
        "--size",
        type=int,
        default=20000,
        help="work per call: primes counted below this (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    anyio.run(_main, args.n_jobs, args.tasks, args.size)
    return 0
