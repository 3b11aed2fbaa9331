"""backend="dask" (§7) against real clusters: external processes and an in-process LocalCluster.

The external cluster (a scheduler and two nanny-managed single-thread workers) is started
once for the session; the in-process one per test, where a test needs to reach into the
scheduler (its task table, a plugin) or to hold a task with a ``threading.Event``.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from distributed import Client, Event, LocalCluster, Queue

from aioparallel import (
    AioParallelError,
    Parallel,
    PicklingError,
    RemoteTraceback,
    TaskTimeoutError,
    WorkerCrashedError,
    delayed,
    parallel_config,
)
from aioparallel._call import Call
from aioparallel.backends.base import Batch, Failure, RunOptions
from aioparallel.backends.dask.client import DaskBackend
from benchmarks.probes import Heartbeat
from tests import dask_cluster
from tests.conftest import LeakCheck
from tests.dask_cluster import (
    ExternalCluster,
    Local,
    add,
    adopt_restarted_workers,
    exit_task,
    fail_on,
    kill_own_worker,
    make_lock,
    pid,
    report_then_wait,
    square,
    total,
    type_name,
    wait_for_gate,
)
from tests.helpers import MAX_LAG_MS, best_of
from tests.test_loop_lag import MANY, many_small_objects


def calls(func: Any, xs: Any) -> list[Call[Any]]:
    return [Call(func, (x,), {}) for x in xs]


# The clusters (``external``: the session's real one; ``local``: in-process, per test) and
# distributed's offload thread are fixtures of tests/conftest.py.
pytestmark = pytest.mark.usefixtures("dask_offload_thread")


# -- construction ------------------------------------------------------------------------------


def test_needs_a_client_or_an_address() -> None:
    with pytest.raises(ValueError, match=r'client=client.*address="tcp://127\.0\.0\.1:8786"'):
        DaskBackend(None)


@pytest.mark.asyncio
async def test_parallel_without_client_says_how() -> None:
    with pytest.raises(ValueError, match="client=client"):
        async with parallel_config(backend="dask"):
            await Parallel()(delayed(square)(x) for x in range(3))


def test_importing_aioparallel_does_not_import_dask() -> None:
    code = (
        "import sys, aioparallel; from aioparallel import Parallel, delayed, parallel_config; "
        "assert not [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_trio_is_refused_with_a_reason() -> None:
    trio = pytest.importorskip("trio")

    async def main() -> None:
        async with DaskBackend(address="tcp://127.0.0.1:1"):
            pass

    with pytest.raises(RuntimeError, match="asyncio"):
        trio.run(main)


# -- the protocol, on external processes -------------------------------------------------------


@pytest.mark.asyncio
async def test_address_opens_and_closes_its_own_client(external: ExternalCluster) -> None:
    backend = DaskBackend(None, address=external.address)
    async with backend:
        assert backend.n_workers == 2  # the cluster's threads
        own = backend._client
        async with backend.open_run(RunOptions()) as run_batch:
            assert await run_batch(Batch(0, calls(square, range(4)))) == [0, 1, 4, 9]
    assert own.status == "closed"


@pytest.mark.asyncio
@pytest.mark.parametrize(("n_jobs", "expected"), [(None, 2), (-1, 2), (-2, 1), (5, 5)])
async def test_n_workers(external: ExternalCluster, n_jobs: int | None, expected: int) -> None:
    async with DaskBackend(n_jobs, address=external.address) as backend:
        assert backend.n_workers == expected


@pytest.mark.asyncio
async def test_batches_in_order_with_kwargs(external: ExternalCluster) -> None:
    async with Client(external.address, asynchronous=True, set_as_default=False) as client:
        async with (
            DaskBackend(client=client) as backend,
            backend.open_run(RunOptions()) as run_batch,
        ):
            batches = [
                Batch(i * 3, [Call(add, (x,), {"y": 100}) for x in range(i * 3, i * 3 + 3)])
                for i in range(4)
            ]
            results: dict[int, list[Any]] = {}

            async def one(batch: Batch) -> None:
                results[batch.start] = await run_batch(batch)

            async with anyio.create_task_group() as tg:
                for batch in batches:
                    tg.start_soon(one, batch)
            assert [r for start in sorted(results) for r in results[start]] == [
                x + 100 for x in range(12)
            ]
            # Identical batches are not deduplicated (pure=False): each one runs.
            pids = [await run_batch(Batch(0, calls(pid, [0]))) for _ in range(2)]
            assert {p for [p] in pids} <= external.worker_pids()
        assert client.status == "running"  # a passed client is the user's: never closed


@pytest.mark.asyncio
async def test_a_result_of_many_small_objects_does_not_stall_the_loop(
    external: ExternalCluster,
) -> None:
    async with (
        DaskBackend(address=external.address) as backend,
        backend.open_run(RunOptions()) as run_batch,
    ):
        assert await run_batch(Batch(0, calls(many_small_objects, [2]))) == [[(0, "0"), (1, "1")]]

        async def lag() -> float:
            gc.collect()  # settle the full collection pytest's heap owes (see test_loop_lag)
            async with Heartbeat() as beat:
                (result,) = await run_batch(Batch(0, calls(many_small_objects, [MANY])))
            assert result == many_small_objects(MANY)
            return beat.max_ms

        lags = await best_of(lag, MAX_LAG_MS)
    assert min(lags) < MAX_LAG_MS, lags


@pytest.mark.asyncio
async def test_task_error_keeps_type_index_and_worker_traceback(external: ExternalCluster) -> None:
    async with (
        DaskBackend(address=external.address) as backend,
        backend.open_run(RunOptions(stop_on_error=True)) as run_batch,
    ):
        out = await run_batch(Batch(10, [Call(fail_on, (x, 12), {}) for x in range(10, 15)]))
    assert out[:2] == [10, 11]
    assert len(out) == 3 and type(out[2]) is Failure  # stopped at the first failure
    exc = out[2].exc
    assert type(exc) is ValueError and str(exc) == "bad input 12"
    assert "task 12 (fail_on)" in " ".join(exc.__notes__)
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert 'raise ValueError(f"bad input {x}")' in exc.__cause__.tb


@pytest.mark.asyncio
async def test_without_stop_on_error_every_slot_is_filled(external: ExternalCluster) -> None:
    async with (
        DaskBackend(address=external.address) as backend,
        backend.open_run(RunOptions(stop_on_error=False)) as run_batch,
    ):
        out = await run_batch(Batch(0, [Call(fail_on, (x, 1), {}) for x in range(4)]))
    assert out[0] == 0 and out[2:] == [2, 3]
    assert type(out[1]) is Failure and type(out[1].exc) is ValueError


@pytest.mark.asyncio
async def test_unpicklable_result_fails_its_own_task(external: ExternalCluster) -> None:
    async with (
        DaskBackend(address=external.address) as backend,
        backend.open_run(RunOptions(stop_on_error=False)) as run_batch,
    ):
        out = await run_batch(Batch(0, [Call(square, (2,), {}), Call(make_lock, (0,), {})]))
    assert out[0] == 4
    assert type(out[1]) is Failure and type(out[1].exc) is PicklingError
    assert "task 1 (make_lock)" in str(out[1].exc)


@pytest.mark.asyncio
async def test_unpicklable_argument_names_its_task(external: ExternalCluster) -> None:
    import threading

    lock = threading.Lock()
    async with (
        DaskBackend(address=external.address) as backend,
        backend.open_run(RunOptions(stop_on_error=False)) as run_batch,
    ):
        out = await run_batch(Batch(5, [Call(type_name, (1,), {}), Call(type_name, (lock,), {})]))
    assert out[0] == "int"
    assert type(out[1]) is Failure and type(out[1].exc) is PicklingError
    assert "task 6 (type_name)" in str(out[1].exc)


@pytest.mark.asyncio
async def test_module_missing_on_the_workers_names_its_task(
    external: ExternalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cluster cannot unpickle the batch: its calls are resent one per task, to tell."""
    (tmp_path / "client_only_module.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from client_only_module import triple  # type: ignore[import-not-found]

    async with (
        DaskBackend(address=external.address) as backend,
        backend.open_run(RunOptions(stop_on_error=False)) as run_batch,
    ):
        out = await run_batch(Batch(0, [Call(triple, (1,), {}), Call(square, (3,), {})]))
    assert type(out[0]) is Failure  # dask says which module it could not import, and where
    assert "task 0 (triple)" in " ".join(out[0].exc.__notes__)
    assert "No module named 'client_only_module'" in str(out[0].exc.__cause__)
    assert out[1] == 9
    monkeypatch.delitem(sys.modules, "client_only_module")


@pytest.mark.asyncio
async def test_system_exit_in_a_task_does_not_stop_the_worker(local: Local) -> None:
    async with (
        DaskBackend(client=local.client) as backend,
        backend.open_run(RunOptions(stop_on_error=False)) as run_batch,
    ):
        out = await run_batch(Batch(0, [Call(exit_task, (3,), {}), Call(square, (2,), {})]))
    assert type(out[0]) is Failure and type(out[0].exc) is AioParallelError
    assert "SystemExit(3)" in str(out[0].exc)
    assert out[1] == 4
    assert len(local.cluster.scheduler.workers) == 2


def test_runs_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list[Any]:
        async with (
            LocalCluster(
                n_workers=1, processes=False, asynchronous=True, dashboard_address=":0"
            ) as cluster,
            Client(cluster, asynchronous=True, set_as_default=False) as client,
            parallel_config(backend="dask", client=client),
        ):
            return await Parallel()(delayed(square)(x) for x in range(5))

    assert uvloop.run(main()) == [0, 1, 4, 9, 16]


# -- workers that die --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_worker_killed_mid_task_is_retried_elsewhere(
    external: ExternalCluster, leak_check: LeakCheck
) -> None:
    """Documented in docs/distributed.md: dask reschedules the task; the run succeeds."""
    names = f"started-{uuid.uuid4().hex}", f"go-{uuid.uuid4().hex}"
    async with (
        Client(external.address, asynchronous=True, set_as_default=False) as client,
        DaskBackend(client=client) as backend,
        backend.open_run(RunOptions()) as run_batch,
    ):
        started = await Queue(names[0], client=client)
        go = Event(names[1], client=client)
        out: list[Any] = []

        async def run() -> None:
            out.extend(await run_batch(Batch(0, [Call(report_then_wait, (7, *names), {})])))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            first = await started.get(timeout=30)
            os.kill(first, signal.SIGKILL)
            second = await started.get(timeout=30)  # the retry, on another worker process
            assert second != first
            await go.set()
        assert out == [7]
    await external.wait_for_workers()  # the nanny restarted the killed worker
    adopt_restarted_workers(leak_check, external)


@pytest.mark.asyncio
async def test_task_that_kills_every_worker_raises_worker_crashed(
    external: ExternalCluster, leak_check: LeakCheck
) -> None:
    """After allowed-failures retries (1 on this cluster) dask gives up: WorkerCrashedError."""
    async with (
        DaskBackend(address=external.address) as backend,
        backend.open_run(RunOptions()) as run_batch,
    ):
        with anyio.fail_after(60):
            out = await run_batch(Batch(3, calls(kill_own_worker, [0])))
    assert len(out) == 1 and type(out[0]) is Failure
    exc = out[0].exc
    assert type(exc) is WorkerCrashedError and exc.task_index == 3
    assert "task 3 (kill_own_worker)" in str(exc) and "allowed-failures" in str(exc)
    await external.wait_for_workers()
    adopt_restarted_workers(leak_check, external)


# -- in-process cluster: cancellation, scatter, timeout ----------------------------------------


@pytest.mark.asyncio
async def test_cancel_cancels_the_dask_futures(local: Local) -> None:
    cluster, client = local.cluster, local.client
    async with DaskBackend(client=client) as backend, backend.open_run(RunOptions()) as run_batch:
        with anyio.move_on_after(30) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_batch, Batch(0, calls(wait_for_gate, [1])))
                await anyio.to_thread.run_sync(dask_cluster.started.wait, 10)
                assert cluster.scheduler.tasks  # the batch is running
                tg.cancel_scope.cancel()
        assert not scope.cancelled_caught  # the cancel returned at once, not after 30 s
        await local.log.wait_for(local.no_tasks)


@pytest.mark.asyncio
async def test_large_array_is_scattered_once(local: Local) -> None:
    cluster, client = local.cluster, local.client

    log = local.log
    big = np.ones(200_000)  # 1.6 MB > max_nbytes
    small = np.ones(10)
    batches = [
        Batch(0, [Call(total, (big,), {}), Call(total, ([big, small],), {"d": {"x": big}})]),
        Batch(2, [Call(total, ((big, big),), {})]),
        Batch(3, [Call(total, (small,), {})]),
    ]
    async with DaskBackend(client=client) as backend:
        async with backend.open_run(RunOptions(max_nbytes=1024**2)) as run_batch:
            out = [await run_batch(batch) for batch in batches]
            scattered = [k for k in cluster.scheduler.tasks if k.startswith("aioparallel-array-")]
            assert len(scattered) == 1  # one copy on the cluster while the run goes on
        assert out == [[200_000.0, 400_010.0], [400_000.0], [10.0]]
        await local.log.wait_for(local.no_tasks)
        assert log.array_keys == set(scattered)  # and no other scatter ever happened

        async with backend.open_run(RunOptions(max_nbytes=None)) as run_batch:
            assert await run_batch(Batch(0, [Call(type_name, (big,), {})])) == ["ndarray"]
        assert log.array_keys == set(scattered)  # max_nbytes=None: sent inline


@pytest.mark.asyncio
async def test_timeout_names_the_task_and_limit(local: Local) -> None:
    client = local.client
    async with (
        DaskBackend(client=client) as backend,
        backend.open_run(RunOptions(timeout=0.2)) as run_batch,
    ):
        out = await run_batch(Batch(4, [Call(square, (3,), {}), Call(wait_for_gate, (1,), {})]))
    assert out[0] == 9 and type(out[1]) is Failure
    exc = out[1].exc
    assert type(exc) is TaskTimeoutError
    assert "task 5 (wait_for_gate)" in str(exc) and "timeout=0.2s" in str(exc)


@pytest.mark.asyncio
async def test_synchronous_client_lends_its_address(local: Local) -> None:
    cluster = local.cluster
    sync_client = await anyio.to_thread.run_sync(lambda: Client(cluster.scheduler_address))
    try:
        async with DaskBackend(client=sync_client) as backend:
            async with backend.open_run(RunOptions()) as run_batch:
                assert await run_batch(Batch(0, calls(square, [5]))) == [25]
            assert backend._client is not sync_client
        assert sync_client.status == "running"
    finally:
        await anyio.to_thread.run_sync(sync_client.close)


# -- end to end through Parallel ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_parallel_list_and_generators(external: ExternalCluster) -> None:
    async with Client(external.address, asynchronous=True, set_as_default=False) as client:
        async with parallel_config(backend="dask", client=client):
            assert await Parallel()(delayed(square)(x) for x in range(20)) == [
                x * x for x in range(20)
            ]
            ordered = [
                r
                async for r in Parallel(return_as="generator")(
                    delayed(square)(x) for x in range(10)
                )
            ]
            assert ordered == [x * x for x in range(10)]
            unordered = [
                r
                async for r in Parallel(return_as="generator_unordered")(
                    delayed(square)(x) for x in range(10)
                )
            ]
            assert sorted(unordered) == [x * x for x in range(10)]
        async with parallel_config(backend="dask", address=external.address):
            assert await Parallel(n_jobs=2)(delayed(add)(x, y=1) for x in range(5)) == [
                1,
                2,
                3,
                4,
                5,
            ]


@pytest.mark.asyncio
async def test_parallel_reraises_the_first_error(external: ExternalCluster) -> None:
    async with parallel_config(backend="dask", address=external.address):
        with pytest.raises(ValueError, match="bad input 3") as info:
            await Parallel(batch_size=1)(delayed(fail_on)(x, 3) for x in range(8))
    assert "task 3 (fail_on)" in " ".join(info.value.__notes__)
    assert "bad input" in str(info.value.__cause__)
    async with parallel_config(backend="dask", address=external.address):
        out = await Parallel(return_exceptions=True)(delayed(fail_on)(x, 3) for x in range(5))
    assert out[:3] == [0, 1, 2] and type(out[3]) is ValueError and out[4] == 4


@pytest.mark.asyncio
async def test_parallel_cancelled_leaves_no_tasks(local: Local) -> None:
    client = local.client
    with anyio.move_on_after(30) as scope:
        async with anyio.create_task_group() as tg, parallel_config(backend="dask", client=client):

            async def run() -> None:
                await Parallel(batch_size=1)(delayed(wait_for_gate)(x) for x in range(6))

            tg.start_soon(run)
            await anyio.to_thread.run_sync(dask_cluster.started.wait, 10)
            tg.cancel_scope.cancel()
    assert not scope.cancelled_caught
    await local.log.wait_for(local.no_tasks)


@pytest.mark.asyncio
async def test_parallel_scatters_a_shared_array_once(local: Local) -> None:
    client = local.client
    log = local.log
    big = np.arange(300_000, dtype=np.float64)
    async with parallel_config(backend="dask", client=client):
        out = await Parallel(batch_size=1)(delayed(total)(big) for _ in range(6))
    assert out == [float(big.sum())] * 6
    await local.log.wait_for(local.no_tasks)
    assert len(log.array_keys) == 1


@pytest.mark.asyncio
async def test_dask_futures_in_arguments_arrive_as_values(local: Local) -> None:
    client = local.client
    [remote] = await client.scatter([np.ones(4)])
    async with parallel_config(backend="dask", client=client):
        assert (
            await Parallel()(delayed(total)([remote], d={"x": remote}) for _ in range(3))
            == [8.0] * 3
        )


def test_cluster_fixture_leaves_nothing(tmp_path: Path) -> None:
    cluster = ExternalCluster(tmp_path, n_workers=1)
    cluster.start()
    family = cluster.worker_pids() | {p.pid for p in cluster.processes}
    cluster.stop()
    import psutil

    assert not [
        p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
    ]
