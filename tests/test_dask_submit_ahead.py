"""backend="dask" keeps its workers fed: batches are submitted ahead, within ``pre_dispatch``.

A lane that submits its next batch only once the previous result is back leaves each dask
worker idle for a client round trip between batches. These tests hold every task on its
worker (a gate) and count, on the in-process scheduler, how many of the run's tasks it has
at once: more than one per worker while the gate is shut, and never more calls than
``pre_dispatch``. Submitting ahead must cost nothing else: auto batching still times the
work, not the wait behind a queued batch, and a worker's death still fails only the task
that ran, not the batches queued behind it.
"""

from __future__ import annotations

import statistics
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import pytest_asyncio
from distributed import Client, SchedulerPlugin

from aioparallel import Parallel, WorkerCrashedError, delayed, parallel_config
from aioparallel.backends.base import Batch, RunBatch, RunOptions
from aioparallel.backends.dask.client import DaskBackend
from tests import dask_cluster
from tests.conftest import LeakCheck
from tests.dask_cluster import (
    ExternalCluster,
    Local,
    adopt_restarted_workers,
    kill_when_queued,
    wait_for_gate,
)

# the clusters are fixtures of tests/conftest.py: the in-process one with a scheduler log, and
# the session's external one
pytestmark = pytest.mark.usefixtures("dask_offload_thread")

#: Scheduler states of a task submitted and not yet finished.
_PENDING = frozenset({"waiting", "queued", "no-worker", "processing"})


class InFlight(SchedulerPlugin):
    """Counts the run's tasks the scheduler holds unfinished, and the most it ever held."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.pending: set[str] = set()
        self.most = 0

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if not str(key).startswith(self.prefix):
            return
        if finish in _PENDING:
            self.pending.add(str(key))
        else:
            self.pending.discard(str(key))
        self.most = max(self.most, len(self.pending))


def watch(local: Local) -> InFlight:
    counter = InFlight(f"{wait_for_gate.__name__}-")
    local.cluster.scheduler.add_plugin(counter)
    return counter


async def run_while_held(
    local: Local, run: Awaitable[list[Any]], held: Callable[[], bool]
) -> list[Any]:
    """Run with the gate shut until ``held()`` holds on the scheduler, then open it."""
    results: list[Any] = []

    async def collect() -> None:
        results.extend(await run)

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        try:
            await local.log.wait_for(held)
        finally:
            dask_cluster.gate.set()
    return results


@pytest.mark.asyncio
async def test_more_batches_in_flight_than_workers(local: Local) -> None:
    counter = watch(local)
    n_workers = len(local.cluster.scheduler.workers)
    async with parallel_config(backend="dask", client=local.client):
        run = Parallel()(delayed(wait_for_gate)(x) for x in range(8))
        results = await run_while_held(local, run, lambda: len(counter.pending) > n_workers)
    assert results == list(range(8))
    assert counter.most <= 2 * n_workers  # the default pre_dispatch, 2 * n_jobs


@pytest.mark.asyncio
@pytest.mark.parametrize("pre_dispatch", [1, 3])
async def test_pre_dispatch_bounds_the_calls_in_flight(local: Local, pre_dispatch: int) -> None:
    counter = watch(local)
    async with parallel_config(backend="dask", client=local.client):
        run = Parallel(pre_dispatch=pre_dispatch, batch_size=1)(
            delayed(wait_for_gate)(x) for x in range(8)
        )
        results = await run_while_held(local, run, lambda: len(counter.pending) == pre_dispatch)
    assert results == list(range(8))
    assert counter.most == pre_dispatch


# -- on real worker processes: what submitting ahead must not cost -----------------------------


@pytest_asyncio.fixture
async def strict(external: ExternalCluster) -> AsyncIterator[ExternalCluster]:
    """The session's external cluster with allowed-failures=0 for one test: the first death
    of a worker fails every task dask counts against it, so a batch queued behind the culprit
    is hit at once. Put back to the cluster's own value afterwards."""
    await external.set_allowed_failures(0)
    try:
        yield external
    finally:
        await external.set_allowed_failures(external.allowed_failures)


class CountingBackend(DaskBackend):
    """The dask backend, counting the batches (one dask task each) its runs send."""

    batches = 0

    def open_run(self, options: RunOptions) -> Any:
        return self._counted(options)

    @asynccontextmanager
    async def _counted(self, options: RunOptions) -> AsyncIterator[RunBatch]:
        async with super().open_run(options) as run_batch:

            async def counted(batch: Batch) -> list[Any]:
                self.batches += 1
                return await run_batch(batch)

            yield counted


def fresh_tiny() -> Callable[[int], int]:
    """A new function object each time: auto batching learns per function across runs."""

    def tiny(x: int) -> int:
        return x + 1

    return tiny


@pytest.mark.asyncio
async def test_auto_batching_times_the_work_not_the_wait_behind_a_queued_batch(
    external: ExternalCluster,
) -> None:
    """With two batches per worker, a batch waits on its worker behind the other: timing
    ``run_batch`` from the client counted that wait (and the round trip) as work and kept
    batches small (2,000 tiny calls: a median of 44 dask tasks per warm run against 17 with
    one batch per worker). The worker now reports how long a batch ran. Warm runs (a
    function's second, which starts at the size learned by its first) compare the steady
    state; a cold run's ramp from one call takes more batches with more of them in flight
    (the batcher ignores results of a stale size)."""
    warm: dict[int, list[int]] = {1: [], 2: []}
    async with Client(external.address, asynchronous=True, set_as_default=False) as client:
        for _ in range(3):
            for per_worker in (1, 2):
                tiny = fresh_tiny()
                for _run in ("cold", "warm"):
                    backend = CountingBackend(client=client)
                    backend.batches_per_worker = per_worker
                    async with parallel_config(backend=backend):
                        out = await Parallel()(delayed(tiny)(x) for x in range(2000))
                    assert out == [x + 1 for x in range(2000)]
                warm[per_worker].append(backend.batches)
    # one batch per worker is the baseline; margin for a loaded machine
    assert statistics.median(warm[2]) <= 1.5 * statistics.median(warm[1]) + 2, warm


@pytest.mark.asyncio
@pytest.mark.parametrize("return_exceptions", [True, False])
async def test_a_death_fails_the_task_that_ran_not_the_batches_queued_behind_it(
    strict: ExternalCluster, leak_check: LeakCheck, tmp_path: Path, return_exceptions: bool
) -> None:
    """dask counts a death against every task the worker held; with allowed-failures=0 a
    batch queued behind the culprit failed with it (KilledWorker). A batch that died in
    company is run again alone: the innocent succeeds, the culprit dies alone and is named."""
    report = tmp_path / "queued-behind-task-5"
    async with parallel_config(backend="dask", address=strict.address):
        run = Parallel(return_exceptions=return_exceptions, batch_size=1)(
            delayed(kill_when_queued)(x, 5, str(report)) for x in range(16)
        )
        with anyio.fail_after(50):
            if return_exceptions:
                out = await run
            else:
                with pytest.raises(WorkerCrashedError) as raised:
                    await run
    await strict.wait_for_workers()  # the nannies restarted the killed workers
    adopt_restarted_workers(leak_check, strict)
    assert int(report.read_text()) >= 1  # its worker held another batch when it died
    if return_exceptions:
        assert [x for x, v in enumerate(out) if isinstance(v, BaseException)] == [5], out
        assert [v for x, v in enumerate(out) if x != 5] == [x for x in range(16) if x != 5]
        error = out[5]
    else:
        error = raised.value
    assert type(error) is WorkerCrashedError and error.task_index == 5
    assert "died while running task 5 (kill_when_queued)" in str(error)
