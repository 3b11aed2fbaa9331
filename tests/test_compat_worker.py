"""joblib compatibility, worker side (issue 15 items 2, 3 and 6): a multiprocessing context
as the backend, ``parallel_config(inner_max_num_threads=N)``, and ``multiprocessing.Manager``
proxies passed to process workers.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections.abc import Iterator
from typing import Any

import pytest

from aioparallel import Parallel, delayed, parallel_config
from tests import proc_helpers as h

# -- item 3: a multiprocessing context is the process backend ------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "backend",
    [
        multiprocessing.get_context("spawn"),
        multiprocessing.get_context("forkserver"),
        multiprocessing.get_context(),
        multiprocessing,  # joblib accepts anything with Pool and Lock, the module too
    ],
    ids=["spawn", "forkserver", "default", "module"],
)
async def test_a_multiprocessing_context_is_the_process_backend(backend: Any) -> None:
    parallel = Parallel(n_jobs=2, backend=backend)
    assert parallel._backend_name == "processes"
    results = await parallel(delayed(h.square_and_pid)(x) for x in range(6))
    assert [r for r, _ in results] == [x * x for x in range(6)]
    assert os.getpid() not in {pid for _, pid in results}


@pytest.mark.asyncio
async def test_a_multiprocessing_context_in_parallel_config() -> None:
    with parallel_config(backend=multiprocessing.get_context("spawn"), n_jobs=2):
        parallel = Parallel()
        results = await parallel(delayed(h.pid_of)(x) for x in range(4))
    assert parallel._backend_name == "processes"
    assert os.getpid() not in results


def test_a_multiprocessing_context_with_sharedmem_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="sharedmem"):
        Parallel(n_jobs=2, backend=multiprocessing.get_context("spawn"), require="sharedmem")


def test_a_multiprocessing_context_with_one_job_runs_in_the_caller() -> None:
    assert Parallel(n_jobs=1, backend=multiprocessing.get_context("spawn"))._backend_name == (
        "sequential"
    )


# -- item 2: inner_max_num_threads ------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("threads", [1, 3])
async def test_inner_max_num_threads_sets_the_workers_blas_cap(
    threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in h.BLAS_VARS:
        monkeypatch.delenv(name, raising=False)
    with parallel_config("processes", inner_max_num_threads=threads):
        envs = await Parallel(n_jobs=2)(delayed(h.env_of)(h.BLAS_VARS) for _ in range(2))
    assert envs == [dict.fromkeys(h.BLAS_VARS, str(threads))] * 2


@pytest.mark.asyncio
async def test_inner_max_num_threads_wins_over_the_users_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # as joblib: the explicit setting is more specific than the inherited environment
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    (before,) = await Parallel(n_jobs=2)([delayed(h.env_of)(["OPENBLAS_NUM_THREADS"])])
    with parallel_config("loky", inner_max_num_threads=1):
        (after,) = await Parallel(n_jobs=2)([delayed(h.env_of)(["OPENBLAS_NUM_THREADS"])])
    assert before == {"OPENBLAS_NUM_THREADS": "4"}
    assert after == {"OPENBLAS_NUM_THREADS": "1"}


@pytest.mark.asyncio
async def test_warm_workers_with_another_cap_are_not_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in h.BLAS_VARS:
        monkeypatch.delenv(name, raising=False)
    seen = []
    for threads in (1, 2, 1):
        with parallel_config("processes", inner_max_num_threads=threads):
            (env,) = await Parallel(n_jobs=2)([delayed(h.env_of)(["OMP_NUM_THREADS"])])
        seen.append(env["OMP_NUM_THREADS"])
    assert seen == ["1", "2", "1"]


@pytest.mark.parametrize("backend", ["threads", "threading", "dask"])
def test_inner_max_num_threads_on_a_backend_without_workers_of_ours_is_a_value_error(
    backend: str,
) -> None:
    extra = {"address": "tcp://127.0.0.1:1"} if backend == "dask" else {}
    with pytest.raises(ValueError, match="inner_max_num_threads"):
        with parallel_config(backend, inner_max_num_threads=2, **extra):
            Parallel(n_jobs=2)
    with parallel_config(inner_max_num_threads=2), pytest.raises(ValueError, match="inner_max"):
        Parallel(n_jobs=2, backend="threads")


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_inner_max_num_threads_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(ValueError, match="inner_max_num_threads"):
        parallel_config("processes", inner_max_num_threads=bad)


def test_inner_max_num_threads_with_one_job_is_accepted() -> None:
    # n_jobs=1 runs in the caller: no worker to cap (joblib does the same)
    with parallel_config("processes", inner_max_num_threads=2):
        assert Parallel(n_jobs=1)._backend_name == "sequential"


# -- item 6: multiprocessing.Manager proxies -------------------------------------------------


@pytest.fixture(scope="module")
def spawn() -> Iterator[Any]:
    """The spawn context. Its resource tracker (multiprocessing's own helper process, which
    would live for the rest of the session) starts before the leak check's snapshot and is
    stopped when this module's tests are done, so no later test counts it as a child."""
    from multiprocessing import resource_tracker

    tracker: Any = resource_tracker._resource_tracker  # type: ignore[attr-defined]
    tracker.ensure_running()
    yield multiprocessing.get_context("spawn")
    if tracker._fd is not None:  # what ResourceTracker._stop() does (3.11+ only)
        os.close(tracker._fd)
        os.waitpid(tracker._pid, 0)
        tracker._fd = tracker._pid = None


def share(items: Any, queue: Any, x: int) -> int:
    items.append(x)
    queue.put(x * x)
    return os.getpid()


@pytest.mark.asyncio
async def test_manager_proxies_work_in_process_workers(spawn: Any) -> None:
    with spawn.Manager() as manager:
        items, queue = manager.list(), manager.Queue()
        pids = await Parallel(n_jobs=2)(delayed(share)(items, queue, x) for x in range(8))
        assert os.getpid() not in pids
        assert sorted(items) == list(range(8))
        assert sorted(queue.get(timeout=10) for _ in range(8)) == [x * x for x in range(8)]
        del items, queue  # their connections to the manager close with them
    gc.collect()  # and the manager process's pipes with its Popen (the leak check counts fds)


@pytest.mark.asyncio
async def test_manager_proxies_reach_warm_workers_started_before_the_manager(
    spawn: Any,
) -> None:
    parallel = Parallel(n_jobs=2)
    async with parallel:  # warm workers, started before the manager
        await parallel(delayed(h.pid_of)(x) for x in range(4))
        with spawn.Manager() as manager:
            shared = manager.dict()
            await parallel(delayed(shared.__setitem__)(x, x) for x in range(4))
            assert dict(shared) == {x: x for x in range(4)}
            del shared
        gc.collect()


def authkey_of_worker(_x: int) -> bytes:
    return bytes(multiprocessing.current_process().authkey)


@pytest.mark.asyncio
async def test_workers_follow_a_changed_authkey() -> None:
    process = multiprocessing.current_process()
    old = process.authkey
    try:
        process.authkey = b"another key for this test"
        keys = await Parallel(n_jobs=2)(delayed(authkey_of_worker)(x) for x in range(4))
    finally:
        process.authkey = old
    assert set(keys) == {b"another key for this test"}


def test_the_authkey_never_reaches_a_worker_by_its_environment_or_argv() -> None:
    import inspect

    from aioparallel.backends.processes import worker as _worker_process

    source = inspect.getsource(_worker_process.WorkerProcess.spawn)
    assert "authkey" not in source  # it travels by the SETUP frame of the worker's own pipe


def test_workers_import_multiprocessing_only_when_the_parent_has() -> None:
    # the authkey costs a worker the import of multiprocessing (~5-10 ms): only paid once
    # the parent has imported multiprocessing.managers, so Manager proxies can exist
    import subprocess
    import sys

    script = """if True:
        import asyncio, sys
        from aioparallel import Parallel, delayed

        def loaded(_x):
            import sys
            return "multiprocessing" in sys.modules

        async def main():
            return await Parallel(n_jobs=2)(delayed(loaded)(x) for x in range(2))

        print(asyncio.run(main()), "multiprocessing.managers" in sys.modules)
        import multiprocessing.managers
        print(asyncio.run(main()))
    """
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split("\n")
    assert out[:2] == ["[False, False] False", "[True, True]"]
