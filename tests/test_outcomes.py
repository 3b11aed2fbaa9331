"""Per-task outcomes with process workers (issue 9), in every ``return_as`` mode.

With ``return_exceptions=True`` a task's own exception, its ``TimeoutError`` and the
``WorkerCrashedError`` of the worker that died running it each land in that task's slot, and
the run goes on. Without it, the first error stops the run.

Tasks return ``(x, ...)`` tuples and exceptions carry a note naming their task, so results
streamed in completion order can be put back in their slots.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from aioparallel import Parallel, RemoteTraceback, TaskTimeoutError, WorkerCrashedError, delayed
from tests import proc_helpers as h

MODES = ["list", "generator", "generator_unordered"]
_TASK_NOTE = re.compile(r"raised by task (\d+)")


def slot_of(value: Any) -> int:
    """The input index a result or an exception belongs to."""
    if isinstance(value, BaseException):
        notes = getattr(value, "__notes__", [])
        indices = {int(m[1]) for note in notes for m in [_TASK_NOTE.search(note)] if m}
        assert len(indices) == 1, f"{value!r} does not name its task: {notes}"
        return indices.pop()
    return int(value[0])


async def outcomes(parallel: Any, calls: list[Any]) -> list[Any]:
    """One result per input, in input order, whatever the mode."""
    if parallel.return_as == "list":
        return list(await parallel(calls))
    received = [r async for r in parallel(calls)]
    assert len(received) == len(calls)
    if parallel.return_as == "generator":
        return received
    slots: list[Any] = [None] * len(calls)
    for value in received:
        index = slot_of(value)
        assert slots[index] is None, f"two results for task {index}"
        slots[index] = value
    return slots


def assert_slots(results: list[Any], failures: dict[int, type[BaseException]]) -> None:
    """Every slot holds ``(x, x*x)``, except ``failures``: exceptions naming their task."""
    for x, value in enumerate(results):
        if x in failures:
            assert type(value) is failures[x], (x, value)
            assert slot_of(value) == x
        else:
            assert value == (x, x * x), (x, value)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_exceptions_land_in_their_slots(mode: str) -> None:
    bad = {3, 7, 11}
    calls = [delayed(h.fail_on)(x, bad) for x in range(20)]
    results = await outcomes(Parallel(n_jobs=2, return_as=mode, return_exceptions=True), calls)
    assert_slots(results, dict.fromkeys(bad, KeyError))
    for x in bad:
        cause = results[x].__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "FAIL-ON-MARKER" in str(cause)  # the worker's failing line
        assert any("fail_on" in note for note in results[x].__notes__)


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_a_crash_fails_only_its_own_task(mode: str) -> None:
    # batches of 10 (pre_dispatch wide enough not to cut them): task 15 kills the worker in
    # the middle of batch 10-19, whose other tasks must still get their results
    calls = [delayed(h.die_at)(x, 15) for x in range(30)]
    parallel = Parallel(
        n_jobs=2, return_as=mode, return_exceptions=True, batch_size=10, pre_dispatch="all"
    )
    started = time.monotonic()
    results = await outcomes(parallel, calls)
    assert time.monotonic() - started < 10
    assert_slots(results, {15: WorkerCrashedError})
    assert results[15].task_index == 15
    assert results[15].exitcode == 3


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_a_timeout_fails_only_its_own_task(tmp_path: Path, mode: str) -> None:
    calls = [delayed(h.sleep_if)(x, {4}, str(tmp_path)) for x in range(10)]
    parallel = Parallel(n_jobs=2, return_as=mode, return_exceptions=True, timeout=1)
    results = await outcomes(parallel, calls)
    assert_slots(results, {4: TaskTimeoutError})
    assert "timeout=1s" in str(results[4])
    assert [pid for pid in h.read_pids(tmp_path).values() if not h.pid_gone(pid)] == []


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_time_in_the_queue_does_not_count_against_the_timeout(mode: str) -> None:
    # 4 tasks of 0.6 s on 2 workers: the last two wait ~0.6 s, then run 0.6 s (< timeout=1)
    calls = [delayed(h.slow_tagged)(x, 0.6) for x in range(4)]
    parallel = Parallel(n_jobs=2, return_as=mode, return_exceptions=True, timeout=1)
    results = await outcomes(parallel, calls)
    assert_slots(results, {})


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_without_return_exceptions_the_first_error_stops_the_run(
    tmp_path: Path, mode: str
) -> None:
    n = 200
    calls = [delayed(h.fail_or_sleep)(str(tmp_path), x, 5, 0.05) for x in range(n)]
    parallel = Parallel(n_jobs=2, return_as=mode)
    received: list[Any] = []
    with pytest.raises(KeyError, match="task input 5 is bad"):
        if mode == "list":
            await parallel(calls)
        else:
            async for value in parallel(calls):
                received.append(value)
    assert all(value == (value[0], value[0] ** 2) and value[0] != 5 for value in received)
    if mode == "generator":
        assert received == [(x, x * x) for x in range(len(received))]
        assert len(received) <= 5
    started = h.count_started(tmp_path)
    assert started < n // 4, f"{started} of {n} tasks started after the first error"


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_showcase_a_thousand_tasks_with_five_failures(mode: str) -> None:
    calls = [delayed(h.showcase_task)(x) for x in range(1000)]
    parallel = Parallel(n_jobs=2, return_as=mode, return_exceptions=True, timeout=2)
    started = time.monotonic()
    results = await outcomes(parallel, calls)
    elapsed = time.monotonic() - started
    print(f"\n1,000 tasks, 5 failures ({mode}): {elapsed:.2f}s")
    failures: dict[int, type[BaseException]] = {
        100: KeyError,
        300: WorkerCrashedError,
        500: KeyError,
        700: TaskTimeoutError,
        900: KeyError,
    }
    assert_slots(results, failures)
    assert sum(isinstance(r, BaseException) for r in results) == 5
    assert results[300].exitcode == 3
    assert "task 700" in str(results[700])
    assert elapsed < 30
