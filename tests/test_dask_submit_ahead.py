"""backend="dask" keeps its workers fed: batches are submitted ahead, within ``pre_dispatch``.

A lane that submits its next batch only once the previous result is back leaves each dask
worker idle for a client round trip between batches. These tests hold every task on its
worker (a gate) and count, on the in-process scheduler, how many of the run's tasks it has
at once: more than one per worker while the gate is shut, and never more calls than
``pre_dispatch``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from distributed import SchedulerPlugin

from aioparallel import Parallel, delayed, parallel_config
from tests import dask_cluster, test_dask
from tests.dask_cluster import wait_for_gate
from tests.test_dask import Local

# test_dask's fixtures: its in-process cluster with a scheduler log, and dask's offload thread
local = test_dask.local
_dask_offload_thread = test_dask._dask_offload_thread

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
