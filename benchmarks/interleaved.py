"""What the distributed benchmarks share: the two workloads, timing every contender on each,
interleaved, repeat after repeat, and the table and JSON of the medians.

A contender is a ``Runner``: ``await run(func, n)`` maps ``func`` over ``range(n)``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping

import anyio

from .workloads import double, spin_25ms

__all__ = ["WORKLOADS", "Runner", "Times", "main", "table", "time_interleaved"]

#: (name, function, calls)
WORKLOADS: list[tuple[str, Callable[[int], int], int]] = [
    ("64 x 25 ms", spin_25ms, 64),
    ("2,000 tiny", double, 2000),
]

Runner = Callable[[Callable[[int], int], int], Awaitable[list[int]]]
#: Seconds per (workload, contender), one entry per repeat.
Times = dict[str, dict[str, list[float]]]


async def time_interleaved(runners: Mapping[str, Runner], repeats: int) -> Times:
    """Warm every contender up (imports, worker processes, caches), then time each workload
    on each contender in turn, ``repeats`` times: what the machine does meanwhile falls on all
    of them alike. Each result is checked."""
    times: Times = {w: {c: [] for c in runners} for w, _, _ in WORKLOADS}
    for run in runners.values():
        await run(spin_25ms, 4)
        await run(double, 100)
    for _ in range(repeats):
        for workload, func, n in WORKLOADS:
            for contender, run in runners.items():
                began = time.perf_counter()
                out = await run(func, n)
                times[workload][contender].append(time.perf_counter() - began)
                assert len(out) == n and out[1] == func(1), (contender, workload)
    return times


def table(times: Times, versus: tuple[str, ...]) -> str:
    """The medians, in Markdown, with ``ours`` divided by each contender in ``versus``."""
    contenders = list(next(iter(times.values())))
    ratios = "".join(f" ours / {c.replace('/', '-')} |" for c in versus)
    lines = [
        "| workload | " + " | ".join(contenders) + " |" + ratios,
        "|---" * (len(contenders) + len(versus) + 1) + "|",
    ]
    for workload, by_contender in times.items():
        med = {c: statistics.median(t) for c, t in by_contender.items()}
        cells = " | ".join(f"{med[c]:.3f} s" for c in contenders)
        quotients = " | ".join(f"{med['ours'] / med[c]:.2f}" for c in versus)
        lines.append(f"| {workload} | {cells} | {quotients} |")
    return "\n".join(lines)


async def main(
    argv: list[str],
    doc: str,
    measure: Callable[[int], Awaitable[Times]],
    setting: str,
    versus: tuple[str, ...],
) -> None:
    """The command line of a distributed benchmark: ``[--repeats N] [--json PATH]``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", metavar="PATH", help="also write the times (seconds) here")
    args = parser.parse_args(argv)
    times = await measure(args.repeats)
    print(f"medians of {args.repeats} interleaved repeats; {setting}")
    print(table(times, versus))
    if args.json:
        medians = {w: {c: statistics.median(t) for c, t in by.items()} for w, by in times.items()}
        record = {"repeats": args.repeats, "times": times, "medians": medians}
        await anyio.Path(args.json).write_text(json.dumps(record, indent=2))
