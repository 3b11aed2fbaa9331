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

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from aioparallel import Parallel, delayed, parallel_config

from .workloads import double, spin_25ms, spin_iterations

#: (name, function, calls)
WORKLOADS: list[tuple[str, Callable[[int], int], int]] = [
    ("64 x 25 ms", spin_25ms, 64),
    ("2,000 tiny", double, 2000),
]
CONTENDERS = ["ours", "joblib-ray", "ray.remote"]

Runner = Callable[[Callable[[int], int], int], Awaitable[list[int]]]


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


async def measure(repeats: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per (workload, contender), one entry per repeat, interleaved."""
    import ray

    spin_iterations()  # calibrate before Ray starts, so its workers inherit the loop length
    times: dict[str, dict[str, list[float]]] = {
        w: {c: [] for c in CONTENDERS} for w, _, _ in WORKLOADS
    }
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        runners = {
            "ours": _ours_runner(),
            "joblib-ray": _joblib_runner(),
            "ray.remote": _raw_runner(),
        }
        for run in runners.values():  # warm up: imports, worker processes, function exports
            await run(spin_25ms, 4)
            await run(double, 100)
        for _ in range(repeats):
            for workload, func, n in WORKLOADS:
                for contender, run in runners.items():
                    began = time.perf_counter()
                    out = await run(func, n)
                    times[workload][contender].append(time.perf_counter() - began)
                    assert len(out) == n and out[1] == func(1), (contender, workload)
    finally:
        ray.shutdown()
    return times


def table(times: dict[str, dict[str, list[float]]]) -> str:
    head = "| workload | " + " | ".join(CONTENDERS) + " | ours / joblib-ray | ours / ray.remote |"
    lines = [head, "|---" * (len(CONTENDERS) + 3) + "|"]
    for workload, by_contender in times.items():
        med = {c: statistics.median(t) for c, t in by_contender.items()}
        cells = " | ".join(f"{med[c]:.3f} s" for c in CONTENDERS)
        ratios = f"{med['ours'] / med['joblib-ray']:.2f} | {med['ours'] / med['ray.remote']:.2f}"
        lines.append(f"| {workload} | {cells} | {ratios} |")
    return "\n".join(lines)


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", metavar="PATH", help="also write the times (seconds) here")
    args = parser.parse_args(argv)
    times = await measure(args.repeats)
    print(f"medians of {args.repeats} interleaved repeats; local Ray, num_cpus=2")
    print(table(times))
    if args.json:
        medians = {w: {c: statistics.median(t) for c, t in by.items()} for w, by in times.items()}
        record = {"repeats": args.repeats, "times": times, "medians": medians}
        await anyio.Path(args.json).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
