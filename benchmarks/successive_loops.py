"""Ten ``asyncio.run`` calls of ten tiny calls each, next to the same ten calls in one event
loop and to ten ``joblib.Parallel`` calls (issue 16 §2: sync callers and test suites).

    python -m benchmarks.successive_loops [--rounds N]

Each figure starts cold (no worker running) and counts the workers' start-up, as a script
or a test session pays it. aioparallel's target: ten ``asyncio.run`` within 1.5x of one
loop, and well under joblib's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable

from aioparallel import Parallel, delayed

from .workloads import double

N_JOBS = 2
RUNS = 10
CALLS = 10
EXPECTED = [double(x) for x in range(CALLS)]


def _cold() -> None:
    """Stop the warm workers of both libraries, so the next figure pays the start-up."""
    import aioparallel

    shutdown = getattr(aioparallel, "shutdown_workers", None)
    if shutdown is not None:  # absent before issue 16: each loop's pool died with it
        shutdown()
    from joblib.externals.loky import get_reusable_executor  # type: ignore[import-untyped]

    get_reusable_executor().shutdown(wait=True)


async def _one_call() -> list[int]:
    return await Parallel(n_jobs=N_JOBS)(delayed(double)(x) for x in range(CALLS))


def successive_loops() -> None:
    for _ in range(RUNS):
        assert asyncio.run(_one_call()) == EXPECTED


def one_loop() -> None:
    async def main() -> None:
        for _ in range(RUNS):
            assert await _one_call() == EXPECTED

    asyncio.run(main())


def joblib_calls() -> None:
    import joblib  # type: ignore[import-untyped]

    for _ in range(RUNS):
        calls = (joblib.delayed(double)(x) for x in range(CALLS))
        assert joblib.Parallel(n_jobs=N_JOBS)(calls) == EXPECTED


def _seconds(fn: Callable[[], None]) -> float:
    _cold()
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    peers: dict[str, Callable[[], None]] = {
        f"aioparallel, {RUNS} x asyncio.run": successive_loops,
        "aioparallel, one loop": one_loop,
        f"joblib, {RUNS} x Parallel": joblib_calls,
    }
    samples: dict[str, list[float]] = {name: [] for name in peers}
    for _ in range(rounds):  # interleaved, so a busy moment hits every peer
        for name, fn in peers.items():
            samples[name].append(_seconds(fn))
    _cold()
    print(f"{RUNS} calls of {CALLS} x double(x) on {N_JOBS} workers, cold start, {rounds} rounds")
    print("| peer | median s | min s |")
    print("|---|---|---|")
    for name, values in samples.items():
        print(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} |")
    loops, one = (statistics.median(samples[n]) for n in list(peers)[:2])
    print(f"\n{RUNS} x asyncio.run / one loop: {loops / one:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
