"""Concurrent runs on one pool are served in the order they started (issue 18, W9).

A web backend runs one map per request on the shared warm pool. If the pool hands each
worker given back to whichever lane has waited longest, every run gets a turn after every
other run's, so under load all of them finish at the very end: nobody is answered until
everybody is. The pool serves waiting lanes by their run's start order instead, so the first
requests finish first.

And a batch that queued for a worker is timed from when it got one: auto batching must not
read a wait in line as slow tasks, or every run on a busy pool dispatches one call at a time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioparallel import Parallel, delayed
from aioparallel.backends.processes import batch as _batch
from aioparallel.backends.processes.pool.pool import Pool
from aioparallel.backends.processes.pool.roster import Standing
from aioparallel.backends.processes.pool.run_workers import RunWorkers, run_ticket
from tests.helpers import stamp, wait_file

pytestmark = pytest.mark.anyio


def warm(i: int) -> int:
    """Starts the workers. Not ``stamped``: a generator run's length is taken from its
    function's last completed run, so 4 warm-up calls of ``stamped`` would make every run of
    it look small, and equal runs would pass each other (the tests below are of runs whose
    length is unknown)."""
    return i


def stamped(run: int, i: int, seconds: float = 0.0) -> tuple[int, int]:
    """When (system-wide monotonic clock) this call of ``run`` ran; it takes ``seconds``."""
    if seconds:
        time.sleep(seconds)
    return run, time.monotonic_ns()


def hold(folder: str, i: int) -> int:
    """Says it holds a worker (``held-<i>`` in ``folder``), until ``folder/go`` exists."""
    stamp(folder, f"held-{i}")
    assert wait_file(os.path.join(folder, "go"))
    return i


class BatchLog:
    """The sizes of the batches ``BatchRun`` is given of ``func``'s calls whose first
    argument is ``run``; ``cut`` is set at each (``run_while_crowded`` renews it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, func: Any, run: int):
        self.sizes: list[int] = []
        self.cut = anyio.Event()
        real_init = _batch.BatchRun.__init__

        def counting_init(batch_run: Any, *args: Any, **kwargs: Any) -> None:
            real_init(batch_run, *args, **kwargs)
            call = batch_run.batch.calls[0]
            if call.func is func and call.args[0] == run:
                self.sizes.append(len(batch_run.batch.calls))
                self.cut.set()

        monkeypatch.setattr(_batch.BatchRun, "__init__", counting_init)


async def runs_in_line(parallel: Any, tmp_path: Path, inputs: list[Any]) -> list[list[Any]]:
    """``parallel(inputs[k])`` for each k, started in this order while ``hold`` keeps both
    workers of the pool, each once the one before waits in line; then ``hold`` lets go. So
    each run's first batch is cut when a worker is free for it, with the runs after it in
    line (the first two get the two workers, the others wait)."""
    folder = str(tmp_path)
    results: list[list[Any]] = [[] for _ in inputs]

    async def run(k: int) -> None:
        results[k] = await parallel(inputs[k])

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(parallel, [delayed(hold)(folder, i) for i in range(2)])
            for i in range(2):  # both workers are taken
                assert await anyio.to_thread.run_sync(wait_file, tmp_path / f"held-{i}")
            for k in range(len(inputs)):
                tg.start_soon(run, k)
                await anyio.wait_all_tasks_blocked()  # waits in line
            (tmp_path / "go").touch()
    return results


@pytest.mark.parametrize("as_list", [True, False], ids=["list", "generator"])
async def test_a_small_run_on_a_crowded_pool_goes_in_one_batch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, as_list: bool, anyio_backend: str
) -> None:
    """While every worker is busy and other runs wait for one, a run of a few milliseconds
    of work (its function's calls are known to be fast) goes in one batch: spread over
    workers that the runs behind it would take anyway, it would only pay a hand-over per
    batch (W9: 20-call requests of 1 ms calls went in batches of 1, 10 and 9, at 1.15 x the
    ideal time). On an idle pool it spreads, and so does the last run in line: nobody would
    take the worker it leaves (W9: the last request alone on one worker, the other idle)."""
    logs = [BatchLog(monkeypatch, stamped, run) for run in (0, 1, 2, 3)]

    def calls(run: int, n: int) -> Any:  # 1 ms each: a run outlasts the wake of the next
        made = (delayed(stamped)(run, i, 0.001) for i in range(n))
        return list(made) if as_list else made

    async with Parallel(n_jobs=2) as parallel:
        await parallel(delayed(warm)(i) for i in range(4))  # warm workers
        await parallel(calls(-1, 100))  # stamped is known to be fast
        assert len(await parallel(calls(0, 20))) == 20  # the pool is idle: it spreads
        assert len(logs[0].sizes) > 1, logs[0].sizes
        results = await runs_in_line(parallel, tmp_path, [calls(run, 20) for run in (1, 2, 3)])
    assert [[r for r, _ in got] for got in results] == [[1] * 20, [2] * 20, [3] * 20]
    assert logs[1].sizes == [20] and logs[2].sizes == [20], (logs[1].sizes, logs[2].sizes)
    # the last in line spreads; not asserted on trio, which runs woken tasks and
    # run_sync_soon callbacks in an order of its choosing: a worker freed by the first runs
    # may reach the last in line while another still waits (CI once cut it as [20] there)
    if anyio_backend != "trio":
        assert len(logs[3].sizes) > 1, logs[3].sizes


def fresh_nap() -> Any:
    """A function that takes ``seconds`` and returns its run and the worker's pid, made anew
    for each test: what one test's slow calls taught auto batching must not size the next
    test's runs."""

    def nap(run: int, i: int, seconds: float) -> tuple[int, int]:
        time.sleep(seconds)
        return run, os.getpid()

    return nap


@pytest.mark.parametrize("as_list", [True, False], ids=["list", "generator"])
async def test_a_crowded_run_slower_than_its_function_was_spreads_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, as_list: bool
) -> None:
    """A crowded pool's small run goes in one batch on what its function's calls took
    before; if they are slower now, the worker stops at the batch's budget (twice what
    they took) and the run sends the rest again, spread over the workers as a fresh run
    would: never slower for having been sent whole."""
    nap = fresh_nap()
    log = BatchLog(monkeypatch, nap, 1)

    def calls(run: int, n: int, seconds: float) -> Any:
        made = (delayed(nap)(run, i, seconds) for i in range(n))
        return list(made) if as_list else made

    async with Parallel(n_jobs=2) as parallel:
        await parallel(delayed(warm)(i) for i in range(4))  # warm workers
        await parallel(calls(-1, 200, 0.0))  # nap is known to be fast
        behind = [[delayed(warm)(i)] for i in range(2)]  # two short runs wait behind it
        slow, *_ = await runs_in_line(parallel, tmp_path, [calls(1, 8, 0.2), *behind])
    assert [r for r, _ in slow] == [1] * 8
    assert log.sizes[0] == 8, log.sizes  # sent whole
    assert len(log.sizes) > 2, log.sizes  # the worker stopped after a call; the rest spread
    assert len({pid for _, pid in slow}) == 2, slow


@pytest.mark.parametrize("as_list", [True, False], ids=["list", "generator"])
async def test_runs_of_a_new_function_on_a_crowded_pool_go_whole_once_it_is_measured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, as_list: bool
) -> None:
    """Nothing is known of a new function: a run's first batch is one call. But once one of
    its batches has been measured, by this run or a concurrent one, a batch cut while every
    worker is busy and other runs wait takes the rest whole (up to 40 ms of work), rather
    than growing from 2 by doubling: ten requests that start at once on a fresh web
    backend (W9) otherwise send their calls in batches of 1, 1, 2, 2, 4... (1.19 x the
    ideal time)."""
    nap = fresh_nap()
    logs = [BatchLog(monkeypatch, nap, run) for run in range(4)]

    def calls(run: int, n: int) -> Any:
        made = (delayed(nap)(run, i, 0.001) for i in range(n))
        return list(made) if as_list else made

    async with Parallel(n_jobs=2) as parallel:
        await parallel(delayed(warm)(i) for i in range(4))  # warm workers
        results = await runs_in_line(parallel, tmp_path, [calls(run, 10) for run in range(4)])
    assert [[r for r, _ in got] for got in results] == [[run] * 10 for run in range(4)]
    assert logs[0].sizes[0] == 1, logs[0].sizes  # nothing known: one call
    # cut before or after a batch of an earlier run was measured (trio may hand a worker
    # kept by the first run to the third before the first has read its batch's time);
    # once one is, with runs waiting behind: the rest whole, up to 40 ms of work by what
    # the calls took (a loaded machine's round trips count), not 2 by doubling
    for log in logs[1:3]:
        assert log.sizes == [10] or (log.sizes[0] == 1 and log.sizes[1] > 2), log.sizes


async def test_a_run_on_an_idle_pool_takes_every_free_worker_first(
    anyio_backend: Any, tmp_path: Path
) -> None:
    """A run that starts on an idle pool takes the workers it has calls for as it starts,
    before a run started just after it in the same turn of the loop: each request of a
    burst then runs at the pool's full width in turn, and the first is answered in half
    the time (W9: the requests otherwise finished in pairs, the median one at 0.6 x the
    total)."""
    if anyio_backend == "trio":
        pytest.skip(
            "trio runs woken tasks and run_sync_soon callbacks in an order of its choosing: "
            "a worker kept for a lane may go back to the pool before the lane comes for it"
        )
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    async with Parallel(n_jobs=2) as parallel:
        await parallel(delayed(warm)(i) for i in range(4))  # warm workers
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for folder in (first, second):  # in one turn of the loop
                    tg.start_soon(parallel, [delayed(hold)(str(folder), i) for i in range(2)])
                for i in range(2):  # both of the first run's calls run at once...
                    assert await anyio.to_thread.run_sync(wait_file, first / f"held-{i}")
                assert not list(second.glob("held-*"))  # ...and none of the second's
                (first / "go").touch()
                (second / "go").touch()


async def test_a_run_that_holds_every_worker_is_not_crowded_by_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every worker busy with one run's own batches is not a crowded pool for that run: its
    batches grow as auto batching finds, none is cut to a crowded run's size with a budget
    (a large run alone was, and learned a batch size of 4: CI)."""
    nap, budgets = fresh_nap(), []
    real_init = _batch.BatchRun.__init__

    def logging_init(batch_run: Any, *args: Any, **kwargs: Any) -> None:
        real_init(batch_run, *args, **kwargs)
        if batch_run.batch.calls[0].func is nap:
            budgets.append(batch_run.batch.budget)

    monkeypatch.setattr(_batch.BatchRun, "__init__", logging_init)
    async with Parallel(n_jobs=2) as parallel:
        await parallel(delayed(warm)(i) for i in range(4))  # warm workers
        await parallel(delayed(nap)(1, i, 0.0) for i in range(3000))
    assert budgets and budgets == [None] * len(budgets), budgets


@pytest.mark.parametrize("as_list", [True, False], ids=["list", "generator"])
async def test_a_runs_last_batch_gives_its_worker_back_at_once(
    monkeypatch: pytest.MonkeyPatch, as_list: bool
) -> None:
    """A batch after which its run has nothing to send gives its worker to the pool as it
    ends, not two loop turns later or when the run ends: the next request's lane, waiting
    for it, is woken before this run's teardown (W9's hand-over between two requests on a
    worker: a median 945 us idle before, 385 after)."""
    kept_at_end: list[int] = []
    real_end = RunWorkers.end

    def end(workers: Any) -> bool:
        kept_at_end.append(len(workers._kept))
        return real_end(workers)  # type: ignore[no-any-return]

    monkeypatch.setattr(RunWorkers, "end", end)
    async with Parallel(n_jobs=2) as parallel:
        for i in range(3):  # one batch each: the run's last
            made = (delayed(warm)(i) for _ in range(1))
            assert await parallel(list(made) if as_list else made) == [i]
    assert kept_at_end == [0, 0, 0]


async def test_waiters_are_served_by_run_ticket_then_arrival() -> None:
    pool = Pool(1)
    served: list[str] = []

    async def wait(name: str, ticket: int) -> None:
        worker = await pool.acquire(Standing(ticket))
        served.append(name)
        await pool.release(worker)

    with anyio.fail_after(20):
        holder = await pool.acquire(Standing(run_ticket()))
        early, late = run_ticket(), run_ticket()
        async with anyio.create_task_group() as tg:
            # they queue in this order: late, then early twice
            for name, ticket in (("late", late), ("early-1", early), ("early-2", early)):
                tg.start_soon(wait, name, ticket)
                await anyio.wait_all_tasks_blocked()
            await pool.release(holder)
        await pool.close()
    assert served == ["early-1", "early-2", "late"]


async def test_concurrent_runs_finish_in_the_order_they_started() -> None:
    """Six runs of 16 one-call batches of 20 ms share a 2-worker pool: the first run is done
    before the fifth and sixth have run a single call (round robin would interleave all
    six)."""
    n_runs, n_calls = 6, 16
    async with Parallel(n_jobs=2, batch_size=1) as parallel:
        await parallel(delayed(warm)(i) for i in range(4))  # warm workers
        stamps: dict[int, list[int]] = {}

        async def run(r: int, started: anyio.Event) -> None:
            calls = (delayed(stamped)(r, i, 0.02) for i in range(n_calls))
            coro = parallel(calls)
            started.set()
            stamps[r] = [t for _, t in await coro]

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for r in range(n_runs):
                    started = anyio.Event()
                    tg.start_soon(run, r, started)
                    await started.wait()
                    await anyio.wait_all_tasks_blocked()  # its lane is in line
    first_done = max(stamps[0])
    later = sorted(t for r in (4, 5) for t in stamps[r])
    assert later[0] > first_done, (
        f"{sum(t < first_done for t in later)} calls of the last two runs ran before the "
        "first run finished"
    )


async def test_a_batch_that_queued_is_timed_from_when_it_got_a_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run of tiny calls shares a 2-worker pool with an earlier run of 150 ms calls, so each
    of its batches first waits up to 150 ms in line: it still grows its batches."""
    batches = BatchLog(monkeypatch, stamped, 1).sizes  # the tiny run's
    slow, tiny = Parallel(n_jobs=2, batch_size=1), Parallel(n_jobs=2)  # one shared pool
    await tiny(delayed(stamped)(-1, 0) for _ in range(4))  # warm workers
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(slow, [delayed(stamped)(0, i, 0.15) for i in range(30)])
            await anyio.wait_all_tasks_blocked()
            results = await tiny(delayed(stamped)(1, i) for i in range(100))
    assert len(results) == 100
    # timed from the start of its wait, a batch looks as long as its wait: one call at a
    # time for as long as the slow run goes on (a dozen batches here), then growth
    assert batches.count(1) <= 4, f"{len(batches)} batches for 100 tiny calls: {batches}"


async def test_a_run_keeps_its_workers_from_one_batch_to_the_next(anyio_backend: Any) -> None:
    """Two runs of 30 one-call batches of 20 ms on a 2-worker pool, the second started while
    the first runs: a lane that finishes a batch takes its next one on the same worker, so
    the second run waits for the first one's tail instead of sharing every other worker."""
    if anyio_backend == "trio":
        pytest.skip(
            "trio runs woken tasks and run_sync_soon callbacks in an order of its choosing: "
            "a kept worker may go back to the pool before the lane comes for it (the runs' "
            "start order still decides who gets it)"
        )
    async with Parallel(n_jobs=2, batch_size=1) as parallel:
        await parallel(delayed(warm)(i) for i in range(4))  # warm workers
        stamps: dict[int, list[int]] = {}

        async def run(r: int) -> None:
            stamps[r] = [
                t for _, t in await parallel(delayed(stamped)(r, i, 0.02) for i in range(30))
            ]

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, 0)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(run, 1)
    first_done = max(stamps[0])
    early = sum(t < first_done for t in stamps[1])
    assert early <= 2, f"{early} calls of the second run ran before the first run finished"


@pytest.mark.parametrize("as_list", [True, False], ids=["lists", "generators"])
async def test_a_small_run_passes_a_huge_one_that_started_first(
    anyio_backend: Any, as_list: bool
) -> None:
    """A huge run (40 calls of 50 ms: 2 s of worker time) holds both workers of the pool;
    a small run of 4 such calls arrives once the huge one has used ~0.15 s. The huge run
    yields it the workers as their batches end: the small run is done while the huge one
    runs a batch or two more per worker (three on a loaded machine, where the small run
    may reach the pool just after a huge batch ended and its worker went on), not after its
    30-odd remaining calls. A run knows what it needs from its length (a list's; a
    generator's is taken as that of the last completed run of its function: 4 calls here)
    and what its function's calls take."""

    def calls(run: int, n: int) -> Any:
        made = (delayed(stamped)(run, i, 0.05) for i in range(n))
        return list(made) if as_list else made

    async with Parallel(n_jobs=2, batch_size=1, return_as="generator") as parallel:
        async for _ in parallel(calls(-1, 4)):
            pass  # warm workers, a call of stamped timed, and a run of it completed
        huge_ends: list[int] = []
        small_ends: list[int] = []
        small_started = 0

        async def small() -> None:
            nonlocal small_started
            small_started = time.monotonic_ns()
            async for _, t in parallel(calls(1, 4)):
                small_ends.append(t)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                async for _, t in parallel(calls(0, 40)):
                    huge_ends.append(t)
                    if len(huge_ends) == 3:
                        tg.start_soon(small)
    assert len(small_ends) == 4
    small_done = max(small_ends)
    meanwhile = sum(small_started < t < small_done for t in huge_ends)
    assert meanwhile <= 6, (
        f"the huge run finished {meanwhile} calls between the small run's start and end"
    )
