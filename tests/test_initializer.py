"""``initializer=`` / ``initargs=`` (issue 15 item 1, joblib >= 1.5): run once in each
worker before its first task; again in a worker that replaces a crashed one; per thread on
the threads backend; once in the caller with ``n_jobs=1``; a failing initializer stops the
run with an ``InitializerError`` naming it.

The initializer writes one file per run of it (named by pid and thread) into ``tmp_path``
and sets a thread-local the tasks read back, so a test counts the runs and checks that every
task ran after one, in its own worker (thread).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from aioparallel import InitializerError, Parallel, delayed, parallel_config
from tests import proc_helpers as h

_LOCAL = threading.local()


def record(folder: str, tag: str = "ready") -> None:
    """The initializer: note this run of it, and leave ``tag`` for this thread's tasks."""
    name = f"init-{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex}"
    Path(folder, name).touch()
    _LOCAL.tag = tag


def report(_x: int) -> tuple[int, int, str | None]:
    return os.getpid(), threading.get_ident(), getattr(_LOCAL, "tag", None)


def report_slowly(x: int) -> tuple[int, int, str | None]:
    time.sleep(0.2)
    return report(x)


def runs(folder: Path) -> list[tuple[int, int]]:
    """(pid, thread) of each run of ``record`` in ``folder``."""
    found = []
    for path in folder.glob("init-*"):
        _, pid, thread, _ = path.name.split("-")
        found.append((int(pid), int(thread)))
    return found


def broken(folder: str) -> None:
    Path(folder, f"attempt-{os.getpid()}-{uuid.uuid4().hex}").touch()
    raise ValueError("no model file")  # INITIALIZER-FAILS-HERE


def dies(folder: str) -> None:
    Path(folder, f"attempt-{os.getpid()}-{uuid.uuid4().hex}").touch()
    os._exit(7)


# -- processes --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_processes_run_it_once_per_worker_before_its_first_task(tmp_path: Path) -> None:
    parallel = Parallel(
        n_jobs=2, batch_size=1, initializer=record, initargs=(str(tmp_path), "warm")
    )
    results = await parallel(delayed(report)(x) for x in range(20))
    assert {tag for _, _, tag in results} == {"warm"}
    pids = {pid for pid, _, _ in results}
    assert os.getpid() not in pids
    initialized = [pid for pid, _ in runs(tmp_path)]
    assert sorted(initialized) == sorted(set(initialized))  # once per worker
    assert pids <= set(initialized)


@pytest.mark.asyncio
async def test_parallel_config_sets_the_initializer(tmp_path: Path) -> None:
    with parallel_config("processes", n_jobs=2, initializer=record, initargs=(str(tmp_path),)):
        results = await Parallel(batch_size=1)(delayed(report)(x) for x in range(6))
    assert {tag for _, _, tag in results} == {"ready"}


@pytest.mark.asyncio
async def test_a_worker_replacing_a_crashed_one_runs_it_again(tmp_path: Path) -> None:
    parallel = Parallel(
        n_jobs=2, batch_size=1, return_exceptions=True, initializer=record,
        initargs=(str(tmp_path),),
    )  # fmt: skip
    async with parallel:
        before = await parallel(delayed(report)(x) for x in range(2))
        crashed = await parallel([delayed(h.exit3)(0)])
        # slow enough that the second lane needs a worker while the first holds the survivor
        after = await parallel(delayed(report_slowly)(x) for x in range(2))
    assert type(crashed[0]).__name__ == "WorkerCrashedError"
    assert {tag for _, _, tag in before + after} == {"ready"}
    initialized = [pid for pid, _ in runs(tmp_path)]
    assert sorted(initialized) == sorted(set(initialized))
    assert {pid for pid, _, _ in after} <= set(initialized)
    assert len(initialized) >= 3  # the replacement ran it too


@pytest.mark.asyncio
async def test_warm_workers_are_reused_only_with_the_same_initializer_and_args(
    tmp_path: Path,
) -> None:
    def call(tag: str) -> Any:
        parallel = Parallel(n_jobs=2, initializer=record, initargs=(str(tmp_path), tag))
        return parallel(delayed(report)(x) for x in range(4))

    first, again, other = await call("a"), await call("a"), await call("b")
    assert {t for _, _, t in first + again} == {"a"} and {t for _, _, t in other} == {"b"}
    assert {p for p, _, _ in again} <= {p for p, _, _ in first}  # warm, not initialized again
    assert not {p for p, _, _ in other} & {p for p, _, _ in first}
    initialized = [pid for pid, _ in runs(tmp_path)]
    assert sorted(initialized) == sorted(set(initialized))
    plain = await Parallel(n_jobs=2)(delayed(report)(x) for x in range(4))
    assert not {p for p, _, _ in plain} & set(initialized)  # no initializer: other workers


@pytest.mark.anyio
@pytest.mark.parametrize("return_exceptions", [False, True])
async def test_an_initializer_that_raises_stops_the_run_naming_it(
    tmp_path: Path, return_exceptions: bool
) -> None:
    parallel = Parallel(
        n_jobs=2, initializer=broken, initargs=(str(tmp_path),),
        return_exceptions=return_exceptions,
    )  # fmt: skip
    with pytest.raises(InitializerError, match="broken") as caught:
        await parallel(delayed(report)(x) for x in range(20))
    assert isinstance(caught.value.__cause__, ValueError)
    assert "INITIALIZER-FAILS-HERE" in str(caught.value.__cause__.__cause__)
    assert len(os.listdir(tmp_path)) <= 2  # attempts: no respawn loop


@pytest.mark.asyncio
async def test_an_initializer_that_kills_its_worker_stops_the_run(tmp_path: Path) -> None:
    parallel = Parallel(n_jobs=2, initializer=dies, initargs=(str(tmp_path),))
    with pytest.raises(InitializerError, match=r"exit code 7.*initializer dies"):
        await parallel(delayed(report)(x) for x in range(20))
    assert len(os.listdir(tmp_path)) <= 2


# -- threads and the caller ----------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("timeout", [None, 30.0])
async def test_threads_run_it_once_per_thread(tmp_path: Path, timeout: float | None) -> None:
    parallel = Parallel(
        n_jobs=2, backend="threads", batch_size=1, timeout=timeout, initializer=record,
        initargs=(str(tmp_path),),
    )  # fmt: skip
    results = await parallel(delayed(report)(x) for x in range(20))
    assert {tag for _, _, tag in results} == {"ready"}
    initialized = runs(tmp_path)
    assert {pid for pid, _ in initialized} == {os.getpid()}
    threads = [thread for _, thread in initialized]
    assert sorted(threads) == sorted(set(threads))  # once per thread
    assert {thread for _, thread, _ in results} <= set(threads)


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["sequential", "processes"])
async def test_one_job_runs_it_once_in_the_caller_before_the_first_call(
    tmp_path: Path, backend: str
) -> None:
    _LOCAL.__dict__.clear()
    parallel = Parallel(n_jobs=1, backend=backend, initializer=record, initargs=(str(tmp_path),))
    results = await parallel(delayed(report)(x) for x in range(5))
    assert results == [(os.getpid(), threading.get_ident(), "ready")] * 5
    assert runs(tmp_path) == [(os.getpid(), threading.get_ident())]
    _LOCAL.__dict__.clear()


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["threads", "sequential"])
async def test_in_process_initializer_errors_stop_the_run_naming_it(
    tmp_path: Path, backend: str
) -> None:
    parallel = Parallel(
        n_jobs=2, backend=backend, initializer=broken, initargs=(str(tmp_path),),
        return_exceptions=True,
    )  # fmt: skip
    with pytest.raises(InitializerError, match="broken") as caught:
        await parallel(delayed(report)(x) for x in range(5))
    assert isinstance(caught.value.__cause__, ValueError)


# -- parameters ------------------------------------------------------------------------------


def test_initializer_must_be_callable() -> None:
    with pytest.raises(TypeError, match="initializer"):
        Parallel(n_jobs=2, initializer="not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="initializer"):
        parallel_config(initializer=3)


def test_initargs_without_initializer_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="initargs"):
        Parallel(n_jobs=2, initargs=(1,))


def test_initializer_with_a_backend_object_is_a_value_error() -> None:
    from aioparallel.backends.threads import ThreadBackend

    with pytest.raises(ValueError, match="initializer"):
        Parallel(backend=ThreadBackend(2), initializer=record, initargs=("x",))


@pytest.mark.asyncio
async def test_an_unpicklable_initargs_is_a_serialization_error() -> None:
    from aioparallel import SerializationError

    parallel = Parallel(n_jobs=2, initializer=record, initargs=(threading.Lock(),))
    with pytest.raises(SerializationError, match="record"):
        await parallel(delayed(report)(x) for x in range(2))
