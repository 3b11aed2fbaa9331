"""docs/async-tasks.md under faults: async tasks cancelled, timed out, ignoring cancellation, and a
worker crash with many tasks in flight.

Tasks (``tests.async_helpers``) leave marker files: ``start-<x>`` when they start,
``finally-<x>`` from their ``finally`` block, ``done-<x>`` when they finish; each holds the
pid of the worker that ran it. The leak check (conftest) then proves no worker, thread,
descriptor or temp folder outlived the test.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioparallel import Parallel, WorkerCrashedError, delayed
from aioparallel.child.async_loop import CANCEL_GRACE
from tests import async_helpers as ah
from tests.helpers import PROMPT_PROCESSES
from tests.proc_helpers import wait_gone


def pids(folder: Path, prefix: str) -> set[int]:
    return {int(p.read_text()) for p in folder.iterdir() if p.name.startswith(prefix)}


async def wait_count(folder: Path, prefix: str, n: int, limit: float = 20.0) -> None:
    with anyio.fail_after(limit):
        while ah.count(folder, prefix) < n:  # noqa: ASYNC110  (files written by workers)
            await anyio.sleep(0.01)


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["processes", "threads"])
async def test_cancel_mid_flight_runs_finally_blocks(backend: str, tmp_path: Path) -> None:
    n = 8
    calls = [delayed(ah.guarded)(str(tmp_path), x) for x in range(n)]
    with anyio.move_on_after(60) as outer:
        async with anyio.create_task_group() as tg:
            tg.start_soon(Parallel(n_jobs=2, backend=backend, batch_size=4), calls)
            await wait_count(tmp_path, "start-", n)
            began = time.monotonic()
            tg.cancel_scope.cancel()
    assert not outer.cancelled_caught
    assert time.monotonic() - began < CANCEL_GRACE + PROMPT_PROCESSES
    if backend == "threads":  # the loops cancel their coroutines in the background
        await wait_count(tmp_path, "finally-", n, limit=PROMPT_PROCESSES)
    assert ah.count(tmp_path, "finally-") == n  # every coroutine's finally block ran
    assert not wait_gone(pids(tmp_path, "start-") - {_own_pid()}, PROMPT_PROCESSES)


@pytest.mark.anyio
async def test_task_ignoring_cancellation_gets_its_worker_killed(tmp_path: Path) -> None:
    calls = [delayed(ah.stubborn)(str(tmp_path), x) for x in range(3)]
    began = 0.0
    with anyio.move_on_after(60) as outer:
        async with anyio.create_task_group() as tg:
            tg.start_soon(Parallel(n_jobs=2, batch_size=3), calls)
            await wait_count(tmp_path, "start-", 3)
            began = time.monotonic()
            tg.cancel_scope.cancel()
    assert not outer.cancelled_caught
    assert time.monotonic() - began < CANCEL_GRACE + PROMPT_PROCESSES  # the grace, then the kill
    assert ah.count(tmp_path, "ignored-") == 3  # it was asked first
    assert not wait_gone(pids(tmp_path, "start-"), PROMPT_PROCESSES)


@pytest.mark.anyio
async def test_timeout_cancels_the_coroutine_and_the_worker_carries_on(tmp_path: Path) -> None:
    calls: list[Any] = [delayed(ah.nap)(x, 0.3) for x in range(6)]
    calls[2] = delayed(ah.guarded)(str(tmp_path), 2)
    results = await Parallel(n_jobs=2, batch_size=6, timeout=1.0, return_exceptions=True)(calls)
    assert isinstance(results[2], TimeoutError)
    assert "task 2 (guarded)" in str(results[2])
    assert "finally blocks ran" in str(results[2])
    assert ah.count(tmp_path, "finally-") == 1
    assert [r for i, r in enumerate(results) if i != 2] == [0, 1, 3, 4, 5]


@pytest.mark.anyio
async def test_timeout_of_a_task_ignoring_cancellation_kills_its_worker(tmp_path: Path) -> None:
    calls: list[Any] = [delayed(ah.guarded)(str(tmp_path), x) for x in range(4)]
    calls[1] = delayed(ah.stubborn)(str(tmp_path), 1)
    began = time.monotonic()
    results = await Parallel(n_jobs=2, batch_size=4, timeout=0.5, return_exceptions=True)(calls)
    assert time.monotonic() - began < 0.5 + CANCEL_GRACE + PROMPT_PROCESSES
    assert isinstance(results[1], TimeoutError) and "was killed" in str(results[1])
    # the others timed out and were cancelled before the grace ran out, or were in flight
    # when the worker was killed: either way each failed naming itself
    for x in (0, 2, 3):
        assert isinstance(results[x], (TimeoutError, WorkerCrashedError))
        assert f"task {x} (guarded)" in str(results[x])
    assert not wait_gone(pids(tmp_path, "start-"), PROMPT_PROCESSES)


@pytest.mark.anyio
async def test_crash_with_16_in_flight_fails_exactly_those(tmp_path: Path) -> None:
    quick, n = 4, 20
    calls = [delayed(ah.crash_with_in_flight)(str(tmp_path), x, quick, n) for x in range(n)]
    parallel = Parallel(n_jobs=2, batch_size=n, worker_concurrency=16, return_exceptions=True)
    results = await parallel(calls)
    assert results[:quick] == list(range(quick))
    for x in range(quick, n):
        error = results[x]
        assert isinstance(error, WorkerCrashedError), (x, error)
        assert f"task {x} (crash_with_in_flight)" in str(error)
    assert ah.count(tmp_path, "start-") == n  # nothing ran twice: no task was re-run
    print("\n".join(f"{x}: {type(r).__name__}: {r}" for x, r in enumerate(results)))


def _own_pid() -> int:
    import os

    return os.getpid()


@pytest.mark.anyio
async def test_async_task_blocking_its_loop_is_timed_out_and_its_worker_killed(
    tmp_path: Path,
) -> None:
    calls = [delayed(ah.block_the_loop)(str(tmp_path), 0), delayed(ah.nap)(1, 0)]
    began = time.monotonic()
    results = await Parallel(n_jobs=2, batch_size=2, timeout=0.5, return_exceptions=True)(calls)
    assert time.monotonic() - began < 0.5 + CANCEL_GRACE + PROMPT_PROCESSES
    assert isinstance(results[0], TimeoutError) and "was killed" in str(results[0])
    assert "task 0 (block_the_loop)" in str(results[0])
    # begun on the blocked loop: overdue as well, or crashed with the worker; handed to it
    # but not begun when it blocked: run again (a quick nap: its result)
    if results[1] != 1:
        assert isinstance(results[1], (TimeoutError, WorkerCrashedError)), results[1]
        assert "task 1 (nap)" in str(results[1])
    assert not wait_gone(pids(tmp_path, "start-"), PROMPT_PROCESSES)
