"""Warm workers across successive event loops (docs/workers.md).

A sync script that calls ``asyncio.run(...)`` again and again, and a test suite whose every
test has its own loop, reuse the same worker processes; the pool still never passes its
``n_jobs``, idle workers still exit after ``idle_timeout`` (no loop needs to run for that),
and two loops in two threads can use it at once. ``shutdown_workers()`` stops the idle
workers: the leak check calls it, so every test still starts and ends without children.
"""

from __future__ import annotations

import asyncio
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import aioparallel
from aioparallel import Parallel, delayed, parallel_config
from aioparallel.backends.processes import process as _process
from aioparallel.backends.processes.pool import pool as _pool
from aioparallel.backends.processes.pool import shared as _shared
from tests import proc_helpers as h
from tests.conftest import Snapshot, leaks_after
from tests.proc_helpers import worker_children

N_JOBS = 2
LOOP_LIMIT = 30.0


def _run(runner: str, main: Callable[[], Any]) -> Any:
    """Run ``main()`` in a new event loop of the given kind, in this thread."""
    if runner == "asyncio":
        return asyncio.run(main())
    if runner == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.run(main())
    trio = pytest.importorskip("trio")
    return trio.run(main)


async def _square_pids(n: int = 20) -> set[int]:
    results = await Parallel(n_jobs=N_JOBS)(delayed(h.square_and_pid)(x) for x in range(n))
    assert [v for v, _ in results] == [x * x for x in range(n)]
    return {pid for _, pid in results}


def _roster_is_consistent(pool: _pool.Pool) -> None:
    """Nothing held, every place an idle worker, and those are exactly our workers."""
    roster = pool._roster
    assert not roster.busy
    assert not roster.waiters
    assert roster.count == len(roster.idle) <= pool.size
    assert {w.pid for w in roster.idle} == worker_children()
    assert all(w.alive for w in roster.idle)


# -- reuse ------------------------------------------------------------------------------------


def test_successive_asyncio_runs_reuse_the_same_workers() -> None:
    first = asyncio.run(_square_pids())
    workers = worker_children()
    assert first <= workers and 1 <= len(workers) <= N_JOBS
    for _ in range(3):
        assert asyncio.run(_square_pids()) <= workers
        assert worker_children() == workers  # nothing new spawned, nothing stopped
    aioparallel.shutdown_workers()
    assert h.wait_gone(workers, 0) == []  # stopped and reaped before it returns


def test_asyncio_trio_and_uvloop_loops_share_the_workers() -> None:
    _run("asyncio", _square_pids)
    workers = worker_children()
    for runner in ("trio", "uvloop", "asyncio", "trio"):
        assert _run(runner, _square_pids) <= workers, runner
        assert worker_children() == workers, runner


def test_workers_spawned_in_a_thread_outlive_the_thread() -> None:
    """The kernel's parent-death signal follows the spawning thread: a worker spawned by a
    loop in a short-lived thread must not die with that thread."""
    spawned: list[set[int]] = []
    thread = threading.Thread(target=lambda: spawned.append(asyncio.run(_square_pids())))
    thread.start()
    thread.join()
    (workers,) = spawned
    assert asyncio.run(_square_pids()) <= workers
    assert not any(h.pid_dead(pid) for pid in workers)
    assert worker_children() == workers


# -- two loops at once --------------------------------------------------------------------------


@pytest.mark.parametrize("runners", [("asyncio", "asyncio"), ("asyncio", "trio")])
def test_two_loops_in_two_threads_share_the_pool_within_n_jobs(runners: tuple[str, str]) -> None:
    """Workers pass between the loops (a release in one wakes a waiter in the other), the
    results are right, and no instant sees more than ``n_jobs`` worker processes."""
    start = threading.Barrier(len(runners))
    results: dict[int, list[list[tuple[int, int]]]] = {}
    errors: list[BaseException] = []

    def loop_thread(k: int, runner: str) -> None:
        async def main() -> list[list[tuple[int, int]]]:
            start.wait(LOOP_LIMIT)
            return [
                await Parallel(n_jobs=N_JOBS, batch_size=1)(
                    delayed(h.slow_tagged)(k * 1000 + run * 100 + x, 0.005) for x in range(12)
                )
                for run in range(5)
            ]

        try:
            results[k] = _run(runner, main)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=loop_thread, args=kr) for kr in enumerate(runners)]
    for thread in threads:
        thread.start()
    most = 0
    while any(thread.is_alive() for thread in threads):  # sample while they run
        most = max(most, len(worker_children()))
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert most <= N_JOBS, f"{most} worker processes for n_jobs={N_JOBS}"
    for k in range(len(runners)):
        for run, values in enumerate(results[k]):
            expected = [k * 1000 + run * 100 + x for x in range(12)]
            assert [v for v, _ in values] == expected
    _roster_is_consistent(_shared.shared_pool(N_JOBS, 300.0))


# -- idle timeout, loop end, shutdown -------------------------------------------------------------


def test_idle_workers_exit_after_idle_timeout_with_no_loop_running() -> None:
    async def main() -> set[int]:
        with parallel_config(backend="processes", idle_timeout=0.5):
            return await _square_pids()

    workers = asyncio.run(main())
    assert not any(h.pid_gone(pid) for pid in workers)  # warm after its loop ended
    assert h.wait_gone(workers, 10.0) == []  # then stopped, with no loop to run a keeper
    assert asyncio.run(_square_pids()).isdisjoint(workers)  # fresh ones on demand


@pytest.mark.parametrize("runner", ["asyncio", "uvloop", "trio"])
def test_a_run_cut_short_by_its_loop_end_leaves_the_pool_consistent(
    runner: str, tmp_path: Path
) -> None:
    """A run still going when its loop ends (a task nobody awaited): the end of the loop
    cancels it while both workers are busy; they are killed and reaped, their places freed,
    and none is handed out."""
    left: list[Any] = []

    async def run() -> None:
        await Parallel(n_jobs=N_JOBS)(
            delayed(h.pid_then_sleep)(str(tmp_path), x) for x in range(N_JOBS)
        )

    async def main() -> set[int]:
        if runner == "trio":
            import trio

            trio.lowlevel.spawn_system_task(run)  # cancelled when the main task returns
        else:
            left.append(asyncio.get_running_loop().create_task(run()))  # asyncio.run cancels it
        return set((await h.wait_for_pids(tmp_path, N_JOBS)).values())

    busy = _run(runner, main)
    assert h.wait_gone(busy, 10.0) == []
    pool = _shared.shared_pool(N_JOBS, 300.0)
    _roster_is_consistent(pool)
    assert pool._roster.count == 0
    assert asyncio.run(_square_pids()).isdisjoint(busy)
    _roster_is_consistent(pool)


def test_shutdown_workers_stops_idle_workers_only(tmp_path: Path) -> None:
    """A worker busy in another thread's loop keeps its call; it goes idle after it."""
    release = tmp_path / "release"
    done: list[list[int]] = []

    async def busy_run() -> None:
        calls = [delayed(h.pid_then_wait_file)(str(tmp_path), 0, str(release))]
        done.append(await Parallel(n_jobs=N_JOBS)(calls))

    idle = asyncio.run(_square_pids())
    thread = threading.Thread(target=asyncio.run, args=(busy_run(),))
    thread.start()
    try:
        busy = h.wait_for_pids_sync(tmp_path, 1)[0]
        aioparallel.shutdown_workers()
        assert h.wait_gone(idle - {busy}, 0) == []
        assert not h.pid_gone(busy)
        assert not any(t.name.startswith("aioparallel") for t in threading.enumerate())
    finally:
        release.touch()
        thread.join()
    assert done == [[0]]
    assert worker_children() == {busy}  # back in the pool, idle
    aioparallel.shutdown_workers()
    assert worker_children() == set()


def test_the_leak_check_still_reports_a_busy_worker(tmp_path: Path) -> None:
    before = Snapshot.take()
    release = tmp_path / "release"

    async def busy_run() -> None:
        await Parallel(n_jobs=N_JOBS)(
            [delayed(h.pid_then_wait_file)(str(tmp_path), 0, str(release))]
        )

    thread = threading.Thread(target=asyncio.run, args=(busy_run(),))
    thread.start()
    try:
        busy = h.wait_for_pids_sync(tmp_path, 1)[0]
        leaks = leaks_after(before, wait=0.05)
        assert any(f"child process {busy} " in leak for leak in leaks), leaks
    finally:
        release.touch()
        thread.join()
    assert leaks_after(before) == []  # idle now: the check's shutdown stops it


# -- a forked child -------------------------------------------------------------------------------


@pytest.fixture
def no_fork_warning() -> Iterator[None]:
    with warnings.catch_warnings():  # 3.12+: fork() of a process with threads
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


@pytest.mark.usefixtures("no_fork_warning")
def test_a_forked_child_does_not_inherit_the_parents_workers() -> None:
    """A fork of the parent (os.fork, multiprocessing's fork context) must not write to the
    parent's workers, nor kill them when it exits."""
    workers = asyncio.run(_square_pids())
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        clean = not _shared._shared and not _process._live_pids
        os._exit(0 if clean else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert asyncio.run(_square_pids()) <= workers
