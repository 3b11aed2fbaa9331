"""joblib compatibility of the public surface (issue 15): what a migrating user's code, and
joblib's own tests, rely on. One section per item; the nox session ``compat`` runs joblib's
test_parallel.py itself."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
import time
import warnings
from typing import Any

import pytest

import aioparallel
from aioparallel import Parallel, SerializationError, delayed, parallel_config
from aioparallel.backends.dask import worker as _dask_worker
from tests.helpers import Gate, square, wait_gate
from tests.proc_helpers import BadAtPickle, BadAtUnpickleInParent, FailsToUnpickle, take_arg

# -- 4: one timeout class, both TimeoutErrors ---------------------------------------------------


def test_task_timeout_error_is_both_timeout_errors() -> None:
    assert issubclass(aioparallel.TaskTimeoutError, TimeoutError)
    assert issubclass(aioparallel.TaskTimeoutError, multiprocessing.TimeoutError)
    assert issubclass(aioparallel.TaskTimeoutError, aioparallel.AioParallelError)
    error = aioparallel.TaskTimeoutError("task 3 (f) ran past timeout=1s")
    assert str(error) == "task 3 (f) ran past timeout=1s"
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is aioparallel.TaskTimeoutError and str(copy) == str(error)


def test_process_timeout_raises_task_timeout_error() -> None:
    with pytest.raises(multiprocessing.TimeoutError) as info:
        asyncio.run(Parallel(n_jobs=2, timeout=0.3)(delayed(time.sleep)(s) for s in (0, 30)))
    assert type(info.value) is aioparallel.TaskTimeoutError
    assert "task 1 (sleep) ran past timeout=0.3s" in str(info.value)


@pytest.mark.parametrize("n_jobs", [1, 2], ids=["one-thread", "threads"])
def test_thread_timeout_raises_task_timeout_error(n_jobs: int) -> None:
    gate = Gate()
    try:
        with pytest.raises(multiprocessing.TimeoutError) as info:
            asyncio.run(
                Parallel(n_jobs=n_jobs, backend="threads", timeout=0.2)(
                    [delayed(wait_gate)(gate, 1)]
                )
            )
    finally:
        gate.open()
    assert type(info.value) is aioparallel.TaskTimeoutError
    assert "task 0 (wait_gate) ran past timeout=0.2s" in str(info.value)
    while gate.passed < 1:  # the abandoned call finishes before the leak check looks
        time.sleep(0.01)


def test_dask_worker_timeout_is_task_timeout_error() -> None:
    """The dask worker's half builds the error; the parent unpickles it as is."""
    gate = Gate()
    try:
        _ran, ((kind, blob),) = _dask_worker.run_calls([(wait_gate, (gate, 1), {})], 7, True, 0.1)
    finally:
        gate.open()
    for thread in threading.enumerate():
        if thread.name == "aioparallel-task-7":
            thread.join(10)
    assert kind == _dask_worker.RAISED
    error, _tb = pickle.loads(blob)
    assert type(error) is aioparallel.TaskTimeoutError
    assert "task 7 (wait_gate)" in str(error)


# -- 5: serialization errors are pickle's errors too --------------------------------------------


def test_serialization_error_classes() -> None:
    assert issubclass(aioparallel.PicklingError, SerializationError)
    assert issubclass(aioparallel.PicklingError, pickle.PicklingError)
    assert issubclass(aioparallel.UnpicklingError, SerializationError)
    assert issubclass(aioparallel.UnpicklingError, pickle.UnpicklingError)


def test_unpicklable_argument_is_a_pickling_error() -> None:
    with pytest.raises(pickle.PicklingError) as info:
        asyncio.run(Parallel(n_jobs=2)(delayed(take_arg)(BadAtPickle("raise")) for _ in range(3)))
    assert type(info.value) is aioparallel.PicklingError
    assert "could not be pickled for a worker process" in str(info.value)


def test_argument_failing_to_unpickle_in_worker_is_an_unpickling_error() -> None:
    with pytest.raises(pickle.UnpicklingError) as info:
        asyncio.run(Parallel(n_jobs=2)([delayed(take_arg)(FailsToUnpickle())]))
    assert type(info.value) is aioparallel.UnpicklingError
    assert "could not be unpickled in the worker process" in str(info.value)


def test_unpicklable_result_is_a_pickling_error() -> None:
    with pytest.raises(pickle.PicklingError) as info:
        asyncio.run(Parallel(n_jobs=2)([delayed(threading.Lock)()]))
    assert type(info.value) is aioparallel.PicklingError
    assert "could not be pickled" in str(info.value)


def test_result_failing_to_unpickle_in_parent_is_an_unpickling_error() -> None:
    from tests.proc_helpers import return_instance

    with pytest.raises(pickle.UnpicklingError) as info:
        asyncio.run(Parallel(n_jobs=2)([delayed(return_instance)(BadAtUnpickleInParent, "raise")]))
    assert type(info.value) is aioparallel.UnpicklingError
    assert "could not be unpickled in the parent" in str(info.value)


# -- 7: nesting cap -----------------------------------------------------------------------------


def ran_elsewhere(caller: int, limit: int) -> list[bool]:
    """Per nesting level: did this call run on another thread than its caller's?"""
    here = [threading.get_ident() != caller]
    if limit == 0:
        return here
    me = threading.get_ident()
    inner = asyncio.run(Parallel()(delayed(ran_elsewhere)(me, limit - 1) for _ in range(1)))
    return here + inner[0]


def test_nested_threads_run_sequentially_past_one_level() -> None:
    """joblib's test_nested_parallelism_limit: threads, threads, then sequential."""
    me = threading.get_ident()
    with parallel_config("threads", n_jobs=2):
        levels = asyncio.run(Parallel()([delayed(ran_elsewhere)(me, 2)]))[0]
    assert levels == [True, True, False]


def count_threads_below(depth: int) -> int:
    """Recurse without a bound of our own: the nesting cap is the only one."""
    if depth > 4:  # a bound for the unfixed code: at most 30 threads
        return depth
    results = asyncio.run(Parallel()(delayed(count_threads_below_seq)(depth + 1) for _ in range(2)))
    return max(results)


def count_threads_below_seq(depth: int) -> int:
    """At the sequential level the call runs on the caller's running loop: stop there."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return count_threads_below(depth)
    return depth


def test_thread_bomb_is_capped() -> None:
    """joblib's test_thread_bomb_mitigation: recursion under parallel_config('threads',
    n_jobs=2) stops starting threads after two levels."""
    before = threading.active_count()
    with parallel_config("threads", n_jobs=2):
        deepest = count_threads_below(0)
    assert deepest == 3  # level 0 and 1 on threads, level 2 in the caller's loop
    assert threading.active_count() <= before + 8


def inner_processes(n_jobs: int) -> tuple[list[str], set[int]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pids = asyncio.run(
            Parallel(n_jobs=n_jobs, backend="processes")(delayed(os.getpid)() for _ in range(2))
        )
    return [str(w.message) for w in caught], set(pids)


def test_processes_below_threads_warn_and_run_sequentially() -> None:
    """joblib's test_nested_parallel_warnings, ('threading', 'loky')."""
    results = asyncio.run(Parallel(n_jobs=2, backend="threads")([delayed(inner_processes)(2)]))
    messages, pids = results[0]
    assert pids == {os.getpid()}
    assert len(messages) == 1 and "backed parallel loops cannot" in messages[0]
    results = asyncio.run(Parallel(n_jobs=2, backend="threads")([delayed(inner_processes)(1)]))
    assert results[0] == ([], {os.getpid()})  # n_jobs=1: nothing to warn about


# -- 8: n_jobs=1 takes one item, runs it, takes the next ----------------------------------------


def consume(queue: list[str], x: int) -> None:
    queue.append(f"Consumed {x}")


@pytest.mark.parametrize(
    "params", [{}, {"backend": "sequential"}, {"timeout": 10}, {"backend": "threads"}]
)
def test_one_job_dispatches_one_item_at_a_time(params: dict[str, Any]) -> None:
    queue: list[str] = []

    def producer() -> Any:
        for i in range(6):
            queue.append(f"Produced {i}")
            yield delayed(consume)(queue, i)

    asyncio.run(Parallel(n_jobs=1, **params)(producer()))
    assert queue == [f"{what} {i}" for i in range(6) for what in ("Produced", "Consumed")]


def test_one_job_with_explicit_batch_size_takes_batches() -> None:
    queue: list[str] = []

    def producer() -> Any:
        for i in range(4):
            queue.append(f"Produced {i}")
            yield delayed(consume)(queue, i)

    asyncio.run(Parallel(n_jobs=1, batch_size=2)(producer()))
    assert queue[:4] == ["Produced 0", "Produced 1", "Consumed 0", "Consumed 1"]


# -- 9: n_jobs converts to int as in joblib -----------------------------------------------------


@pytest.mark.parametrize("n_jobs", ["2", 2.3, 2, 2.9])
@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_n_jobs_converts_to_int(n_jobs: Any, backend: str) -> None:
    p = Parallel(n_jobs=n_jobs, backend=backend)
    assert p.n_jobs == 2
    assert asyncio.run(p(delayed(square)(i) for i in range(5))) == [0, 1, 4, 9, 16]
    with parallel_config(n_jobs=n_jobs):
        assert Parallel(backend=backend).n_jobs == 2


@pytest.mark.parametrize("n_jobs", ["2.3", "abc", "", float("nan"), float("inf"), [2]])
def test_n_jobs_that_do_not_convert(n_jobs: Any) -> None:
    for make in (lambda: Parallel(n_jobs=n_jobs), lambda: parallel_config(n_jobs=n_jobs)):
        with pytest.raises(ValueError, match="n_jobs could not be converted to int") as info:
            make()
        assert repr(n_jobs) in str(info.value)


@pytest.mark.parametrize("n_jobs", [0, 0.5, "0", -0.9])
def test_n_jobs_zero_after_conversion(n_jobs: Any) -> None:
    with pytest.raises(ValueError, match="n_jobs == 0 in Parallel has no meaning"):
        Parallel(n_jobs=n_jobs)


# -- 10: dask without distributed ---------------------------------------------------------------

_NO_DISTRIBUTED = """
import importlib.abc, sys

class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('distributed', 'dask'):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, Missing())
import aioparallel
for make in (
    lambda: aioparallel.parallel_config(backend='dask'),
    lambda: aioparallel.parallel_backend('dask'),
    lambda: aioparallel.Parallel(backend='dask'),
):
    try:
        make()
    except ValueError as exc:
        print('ValueError:', exc)
    else:
        print('accepted')
aioparallel.parallel_config(backend='threads')  # the others still work
"""


def test_dask_backend_without_distributed_fails_at_creation() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _NO_DISTRIBUTED],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert len(out) == 3, out
    for line in out:
        assert line.startswith("ValueError:"), out
        assert "Please install dask" in line and "pip install 'aioparallel[dask]'" in line


# -- 11: inconsistent hints and constraints -----------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prefer": "processes", "require": "sharedmem"},
        {"backend": "loky", "require": "sharedmem"},
        {"backend": "multiprocessing", "require": "sharedmem"},
        {"backend": "processes", "require": "sharedmem"},
    ],
)
def test_inconsistent_hints_and_constraints(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="sharedmem"):
        Parallel(**kwargs)


def test_prefer_processes_with_require_sharedmem_in_config() -> None:
    with pytest.raises(ValueError, match="inconsistent"):
        parallel_config(prefer="processes", require="sharedmem")
    with parallel_config(prefer="processes"), pytest.raises(ValueError, match="inconsistent"):
        Parallel(require="sharedmem")


# -- 12: effective_n_jobs and parallel_backend --------------------------------------------------


def test_effective_n_jobs() -> None:
    cpus = aioparallel.cpu_count()
    assert aioparallel.effective_n_jobs() == cpus
    assert aioparallel.effective_n_jobs(1) == 1
    assert aioparallel.effective_n_jobs(3) == 3
    assert aioparallel.effective_n_jobs("3") == 3
    assert aioparallel.effective_n_jobs(-2) == max(1, cpus - 1)
    assert aioparallel.effective_n_jobs(None) == 1
    with pytest.raises(ValueError, match="n_jobs == 0 in Parallel has no meaning"):
        aioparallel.effective_n_jobs(0)
    with parallel_config("threads", n_jobs=3):
        assert aioparallel.effective_n_jobs(None) == 3
        assert aioparallel.effective_n_jobs() == cpus
    with parallel_config("sequential", n_jobs=3):
        assert aioparallel.effective_n_jobs(4) == 1


def test_parallel_backend_is_the_older_name() -> None:
    with aioparallel.parallel_backend("threads", n_jobs=3) as (backend, n_jobs):
        assert (backend, n_jobs) == ("threads", 3)
        p = Parallel()
        assert p.n_jobs == 3
        assert asyncio.run(p(delayed(threading.get_ident)() for _ in range(1))) != [
            threading.get_ident()
        ]
    with aioparallel.parallel_backend("threads"):
        assert Parallel().n_jobs == aioparallel.cpu_count()  # joblib's default: n_jobs=-1
    assert Parallel().n_jobs == 1


# -- 13: joblib's key phrases in our messages ---------------------------------------------------


def test_messages_contain_joblibs_phrases() -> None:
    with pytest.raises(ValueError, match="n_jobs == 0 in Parallel has no meaning"):
        Parallel(n_jobs=0)
    with pytest.raises(ValueError, match="n_jobs == 0 in Parallel has no meaning"):
        parallel_config(n_jobs=0)
    for make in (
        lambda: Parallel(backend="gpu"),
        lambda: parallel_config(backend="gpu"),
        lambda: Parallel(backend=object()),
    ):
        with pytest.raises(ValueError, match="Invalid backend") as info:
            make()
        assert "'threads'" in str(info.value) or "Backend object" in str(info.value)


def test_new_names_are_public() -> None:
    for name in (
        "TaskTimeoutError",
        "PicklingError",
        "UnpicklingError",
        "effective_n_jobs",
        "parallel_backend",
    ):
        assert name in aioparallel.__all__
        assert getattr(aioparallel, name) is not None
