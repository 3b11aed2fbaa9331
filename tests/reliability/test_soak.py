"""Soak: thousands of small consecutive runs on one warm pool leave no trace.

After each run the test samples the parent's file descriptors, threads, child processes and
RSS; the first 100 and the last 100 samples must look alike (no fd, thread or child
growth; RSS medians within ``RSS_DRIFT``). 500 runs by default, 5,000 with ``-m heavy``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import psutil
import pytest

from aioparallel import Parallel, delayed
from tests.reliability.conftest import Report
from tests.reliability.helpers import square_and_pid

pytestmark = pytest.mark.anyio

WINDOW = 100
CALLS = 20
MB = 1024**2
#: Largest allowed growth of the median RSS, last window vs first, by number of runs.
RSS_DRIFT = {500: 8 * MB, 5_000: 16 * MB}


@pytest.fixture(params=["asyncio", pytest.param("trio", marks=pytest.mark.heavy)])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.mark.parametrize(
    "runs",
    [
        pytest.param(500, id="500"),
        pytest.param(5_000, id="5000", marks=[pytest.mark.heavy, pytest.mark.timeout(1800)]),
    ],
)
@pytest.mark.parametrize("backend", ["processes", "threads"])
async def test_soak_small_runs_on_a_warm_pool(
    backend: str, runs: int, report: Report, loop_name: str
) -> None:
    me = psutil.Process()
    samples: list[tuple[int, int, int, int]] = []
    pids: set[int] = set()
    expected = [i * i for i in range(CALLS)]
    began = time.monotonic()
    for _ in range(runs):
        results = await Parallel(n_jobs=2, backend=backend)(
            delayed(square_and_pid)(i) for i in range(CALLS)
        )
        assert [r for r, _ in results] == expected
        pids.update(pid for _, pid in results)
        samples.append(
            (
                me.num_fds(),
                me.num_threads(),
                len(me.children(recursive=True)),
                me.memory_info().rss,
            )
        )
    took = time.monotonic() - began
    first, last = samples[:WINDOW], samples[-WINDOW:]

    def most(window: list[tuple[int, ...]], i: int) -> int:
        return max(s[i] for s in window)

    rss_first = statistics.median(s[3] for s in first)
    rss_last = statistics.median(s[3] for s in last)
    report.figure(
        f"soak: {runs:,} runs ({backend}, {loop_name})",
        f"{took:.1f} s; fds {most(first, 0)}->{most(last, 0)}, "
        f"threads {most(first, 1)}->{most(last, 1)}, children {most(first, 2)}->{most(last, 2)}, "
        f"RSS median {rss_first / MB:.1f}->{rss_last / MB:.1f} MB "
        f"({(rss_last - rss_first) / MB:+.2f} MB), {len(pids)} distinct worker pids",
    )
    assert most(last, 0) <= most(first, 0), "file descriptors grew"
    assert most(last, 1) <= most(first, 1), "threads grew"
    assert most(last, 2) <= most(first, 2), "child processes grew"
    assert rss_last - rss_first < RSS_DRIFT[runs], "RSS grew"
    if backend == "processes":
        assert most(last, 2) <= 2
        assert len(pids) <= 2, f"the warm pool was replaced: {len(pids)} worker pids"
    else:
        assert most(last, 2) == 0
