"""``initializer=`` on ``backend="dask"`` (issue 15 item 1): ``initializer(*initargs)`` runs
once in each dask worker process, through a worker plugin, before the worker runs our tasks,
also in a worker that joins later; a failing one stops the run with ``InitializerError``.

Real worker processes (``tests.dask_cluster.ExternalCluster``): the initializer appends the
worker's pid to a file given in ``initargs`` and sets a module global that tasks read back.
The workers import this module by name (``tests.test_dask_initializer``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from distributed import Client

from aioparallel import (
    InitializerError,
    Parallel,
    SerializationError,
    delayed,
    parallel_config,
)
from tests.dask_cluster import ExternalCluster

#: Set by the initializer in each dask worker process; read back by ``report``.
TAG: str | None = None


def record(path: str, tag: str) -> None:
    """The initializer: note this worker's pid in ``path``, leave ``tag`` for its tasks."""
    global TAG
    with open(path, "a") as file:
        file.write(f"{os.getpid()}\n")
    TAG = tag


def explode(message: str) -> None:
    raise ValueError(message)


def leave() -> None:
    raise SystemExit(3)


def report(_x: int) -> tuple[int, str | None]:
    return os.getpid(), TAG


def on_cluster(cluster: ExternalCluster, **kwargs: Any) -> Parallel[Any]:
    """A dask Parallel on ``cluster`` (the scheduler address is a backend option)."""
    with parallel_config("dask", address=cluster.address):
        return Parallel(**kwargs)


def runs(path: Path) -> list[int]:
    """The pids the initializer ran in, one line per run."""
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def assert_once_per_worker(cluster: ExternalCluster, path: Path) -> None:
    """One run in each worker process (the nannies' children include a helper or two)."""
    pids = runs(path)
    assert len(pids) == len(set(pids)) == cluster.n_workers, pids
    assert set(pids) <= cluster.worker_pids()


# ``external`` (the session's real cluster) and ``dask_offload_thread`` are in conftest.py
pytestmark = pytest.mark.usefixtures("dask_offload_thread")


@pytest_asyncio.fixture(autouse=True)
async def _unregister_initializers(external: ExternalCluster) -> AsyncIterator[None]:
    """The session's cluster keeps worker plugins until told: each test's initializers go with
    it, so that the tests after it (and workers that join later) run none of them."""
    async with Client(external.address, asynchronous=True, set_as_default=False) as client:
        before = set(await client.run_on_scheduler(_worker_plugin_names))
        try:
            yield
        finally:
            for name in set(await client.run_on_scheduler(_worker_plugin_names)) - before:
                await client.unregister_worker_plugin(name)


def _worker_plugin_names(dask_scheduler: Any) -> list[str]:  # runs on the scheduler
    return list(dask_scheduler.worker_plugins)


@pytest.mark.asyncio
async def test_runs_once_per_dask_worker_and_tasks_see_it(
    external: ExternalCluster, tmp_path: Path
) -> None:
    path = tmp_path / "runs.txt"
    parallel = on_cluster(external, initializer=record, initargs=(str(path), "a"))
    first = await parallel(delayed(report)(x) for x in range(20))
    second = await parallel(delayed(report)(x) for x in range(20))  # a new client, same pair
    assert {tag for _, tag in first + second} == {"a"}
    assert_once_per_worker(external, path)  # not once per run
    assert {pid for pid, _ in first + second} <= set(runs(path))


@pytest.mark.asyncio
async def test_another_pair_runs_too_via_parallel_config(
    external: ExternalCluster, tmp_path: Path
) -> None:
    paths = [tmp_path / "b.txt", tmp_path / "c.txt"]
    for path, tag in zip(paths, "bc", strict=True):
        with parallel_config(
            "dask", address=external.address, initializer=record, initargs=(str(path), tag)
        ):
            results = await Parallel()(delayed(report)(x) for x in range(10))
        assert {t for _, t in results} == {tag}
    for path in paths:
        assert_once_per_worker(external, path)


@pytest.mark.asyncio
async def test_a_worker_joining_later_runs_it(external: ExternalCluster, tmp_path: Path) -> None:
    path = tmp_path / "runs.txt"
    parallel = on_cluster(external, initializer=record, initargs=(str(path), "d"))
    await parallel(delayed(report)(x) for x in range(4))
    before = external.worker_pids()
    nanny = external.spawn_worker()
    external.n_workers += 1
    try:
        await external.wait_for_workers()
        assert_once_per_worker(external, path)  # set up as it joined, before any task of ours
        assert set(runs(path)) & (external.worker_pids() - before)
        results = await parallel(delayed(report)(x) for x in range(40))
        assert {t for _, t in results} == {"d"}
        assert_once_per_worker(external, path)
    finally:
        await external.retire_worker(nanny)  # the session's cluster: back to its own size


@pytest.mark.asyncio
async def test_a_raising_initializer_is_an_initializer_error(external: ExternalCluster) -> None:
    parallel = on_cluster(
        external,
        initializer=explode,
        initargs=("no model here",),
        return_exceptions=True,
    )
    for _ in range(2):  # the failed pair is forgotten, not taken as done the second time
        with pytest.raises(InitializerError, match="explode") as info:
            await parallel(delayed(report)(x) for x in range(4))
        assert isinstance(info.value.__cause__, ValueError)
        assert "no model here" in str(info.value.__cause__)


@pytest.mark.asyncio
async def test_an_unpicklable_initargs_is_a_serialization_error(external: ExternalCluster) -> None:
    parallel = on_cluster(external, initializer=record, initargs=(threading.Lock(), "x"))
    with pytest.raises(SerializationError, match="record") as info:
        await parallel(delayed(report)(x) for x in range(2))
    assert isinstance(info.value.__cause__, TypeError)  # cloudpickle's own error


@pytest.mark.asyncio
async def test_an_initializer_raising_system_exit_does_not_take_the_worker_down(
    external: ExternalCluster,
) -> None:
    before = external.worker_pids()
    with pytest.raises(InitializerError, match=r"leave.*SystemExit"):
        await on_cluster(external, initializer=leave)(delayed(report)(x) for x in range(2))
    results = await on_cluster(external)(delayed(report)(x) for x in range(4))
    assert {pid for pid, _ in results} <= before == external.worker_pids()
