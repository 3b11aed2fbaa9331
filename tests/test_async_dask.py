"""docs/async-tasks.md on ``backend="dask"``: coroutine functions run on the dask worker's event
loop, against the same real clusters as test_dask.py (the session's external one, an in-process
one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from aioparallel import Parallel, delayed, parallel_config
from tests import async_helpers as ah
from tests.dask_cluster import ExternalCluster, Local

pytestmark = pytest.mark.usefixtures("dask_offload_thread")


@pytest.mark.asyncio
async def test_async_tasks_run_on_the_dask_workers_loop(external: ExternalCluster) -> None:
    calls: list[Any] = [delayed(ah.on_dask_worker_loop)(x) for x in range(6)]
    calls += [delayed(ah.double)(x) for x in range(6)]
    calls += [delayed(ah.sync_pid)(x) for x in range(3)]  # mixed in: run in a thread
    with parallel_config(backend="dask", address=external.address):
        results = await Parallel(batch_size=5)(calls)
    assert results[:6] == [True] * 6
    assert results[6:12] == [2 * x for x in range(6)]
    assert [r[0] for r in results[12:]] == [0, 1, 2]


@pytest.mark.asyncio
async def test_async_errors_and_timeouts_on_dask(local: Local, tmp_path: Path) -> None:
    calls: list[Any] = [delayed(ah.fail_if)(x, 1) for x in range(3)]
    calls.append(delayed(ah.guarded)(str(tmp_path), 3))
    with parallel_config(backend="dask", client=local.client):
        results = await Parallel(timeout=0.5, return_exceptions=True, batch_size=4)(calls)
        assert results[0] == 0 and results[2] == 2
        assert isinstance(results[1], ValueError)
        assert isinstance(results[3], TimeoutError) and "task 3 (guarded)" in str(results[3])
        assert ah.count(tmp_path, "finally-") == 1  # cancelled inside the worker
        with pytest.raises(ValueError, match="bad input 1"):
            await Parallel()(calls[:3])


@pytest.mark.asyncio
async def test_cancelled_run_cancels_the_coroutines_on_dask(local: Local, tmp_path: Path) -> None:
    calls = [delayed(ah.guarded)(str(tmp_path), x) for x in range(4)]
    with parallel_config(backend="dask", client=local.client):
        with anyio.move_on_after(30) as outer:
            async with anyio.create_task_group() as tg:
                tg.start_soon(Parallel(batch_size=4), calls)
                with anyio.fail_after(10):
                    while ah.count(tmp_path, "start-") < 4:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
    assert not outer.cancelled_caught
    await local.log.wait_for(local.no_tasks)
    with anyio.fail_after(10):
        while ah.count(tmp_path, "finally-") < 4:  # noqa: ASYNC110
            await anyio.sleep(0.01)


@pytest.mark.asyncio
async def test_a_failure_after_a_dropped_task_is_raised_as_itself_on_dask(local: Local) -> None:
    """Task 2 fails while task 1 still waits: the batch drops task 1, and the run raises
    task 2's own error (its slot is not shifted onto task 1's)."""
    calls = [
        delayed(ah.double)(0),
        delayed(ah.nap)(1, ah.LONG),
        delayed(ah.fail_if)(2, 2),
        delayed(ah.double)(3),
    ]
    with parallel_config(backend="dask", client=local.client):
        with anyio.fail_after(30), pytest.raises(ValueError, match="bad input 2") as info:
            await Parallel(batch_size=4)(calls)
    assert "aioparallel: raised by task 2 (fail_if)" in info.value.__notes__
    await local.log.wait_for(local.no_tasks)
