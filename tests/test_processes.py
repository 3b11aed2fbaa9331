"""The process backend with real worker processes (issue 3): results, pickling, the warm
pool's life cycle, errors, crashes, cancellation, timeouts, parent death, nesting, BLAS caps.

Pids come from the tasks themselves (``os.getpid()`` returned, or written to a file in
``tmp_path`` before a task blocks); waits are bounded polls, and time limits are generous
upper bounds (the machine is small and shared).
"""

from __future__ import annotations

import asyncio
import importlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

import aioparallel
from aioparallel import (
    Parallel,
    RemoteTraceback,
    SerializationError,
    WorkerCrashedError,
    delayed,
    parallel_config,
)
from aioparallel._system import FEATURES
from tests import proc_helpers as h
from tests.helpers import PROMPT_PROCESSES

ROOT = Path(__file__).resolve().parent.parent
#: Upper bound for "within a second or two".
CRASH_LIMIT = 10.0


async def run_mode(parallel: Any, calls: Any) -> list[Any]:
    """The results of one call of ``parallel``, whatever its return_as, in arrival order."""
    if parallel.return_as == "list":
        return list(await parallel(calls))
    return [r async for r in parallel(calls)]


# -- results and pickling ------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["list", "generator"])
async def test_results_in_input_order(mode: str) -> None:
    # uneven durations, so completion order differs from input order
    calls = [delayed(h.slow_tagged)(x, 0.02 * (x % 4 == 0)) for x in range(40)]
    results = await run_mode(Parallel(n_jobs=2, return_as=mode), calls)
    assert results == [(x, x * x) for x in range(40)]


@pytest.mark.anyio
async def test_unordered_yields_in_completion_order(tmp_path: Path) -> None:
    # Task 0 blocks until the parent has received every other result: only a stream that
    # really yields in completion order gets there (else task 0 gives up after 10 s and the
    # order check fails).
    release = tmp_path / "release"
    calls = [delayed(h.pid_then_wait_file)(str(tmp_path), 0, str(release))]
    calls += [delayed(h.tagged)(x) for x in range(1, 20)]
    seen: list[Any] = []
    async for result in Parallel(n_jobs=2, return_as="generator_unordered")(calls):
        seen.append(result)
        if len(seen) == 19:
            release.touch()
    assert seen[-1] == 0
    assert sorted(seen[:-1]) == [(x, x * x) for x in range(1, 20)]


def _make_adder(n: int) -> Callable[[int], int]:
    def add(x: int) -> int:
        return x + n

    return add


@pytest.mark.anyio
async def test_lambdas_closures_and_main_functions() -> None:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec("def triple(x):\n    return 3 * x\n", namespace)
    triple = namespace["triple"]
    assert triple.__module__ == "__main__"
    offset = 1000
    funcs: list[Callable[[int], int]] = [
        lambda x: x * 2,
        _make_adder(offset),
        triple,
        lambda x: (lambda y: y - offset)(x),
    ]
    calls = [delayed(f)(x) for f in funcs for x in range(5)]
    results = await Parallel(n_jobs=2)(calls)
    assert results == [f(x) for f in funcs for x in range(5)]


@pytest.mark.asyncio
async def test_module_importable_only_through_the_parents_sys_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # warm the workers first: the sys.path change must reach workers that already run
    assert await Parallel(n_jobs=2)(delayed(h.square)(x) for x in range(4)) == [0, 1, 4, 9]
    folder = tmp_path / "only_here"
    folder.mkdir()
    name = "aioparallel_test_only_on_parent_path"
    (folder / f"{name}.py").write_text("def where(x):\n    return x + 1, __name__\n")
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module(name)
    try:
        results = await Parallel(n_jobs=2)(delayed(module.where)(x) for x in range(6))
    finally:
        sys.modules.pop(name, None)
    assert results == [(x + 1, name) for x in range(6)]


@pytest.mark.asyncio
async def test_worker_output_reaches_the_parent_and_leaves_the_protocol_alone(
    capfd: pytest.CaptureFixture[str],
) -> None:
    results = await Parallel(n_jobs=2)(delayed(h.noisy)(x) for x in range(10))
    assert results == [x * x for x in range(10)]
    out, err = capfd.readouterr()
    for x in range(10):
        assert f"worker-stdout {x}\n" in out
        assert f"worker-stderr {x}\n" in err
    assert out.count("raw fd write") == 10


def test_unflushed_worker_output_reaches_the_parent_by_the_end_of_the_loop(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)  # block-buffered worker stdout

    async def main() -> list[int]:
        return await Parallel(n_jobs=2)(delayed(h.quiet_print)(x) for x in range(4))

    # several pools: output lost to a race at shutdown would show (it did, before the worker
    # was asked to exit through its request pipe alone, and flushed before exiting)
    for _ in range(5):
        assert asyncio.run(main()) == [0, 1, 2, 3]
        out, err = capfd.readouterr()
        for x in range(4):
            assert f"unflushed-stderr {x}\n" in err  # stderr is line-buffered
            assert f"unflushed-stdout {x}\n" in out


# -- the warm pool -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_consecutive_calls_reuse_the_same_workers() -> None:
    first = await Parallel(n_jobs=2)(delayed(h.square_and_pid)(x) for x in range(20))
    workers = h.worker_children()
    assert 1 <= len(workers) <= 2
    assert {pid for _, pid in first} <= workers
    second = await Parallel(n_jobs=2)(delayed(h.square_and_pid)(x) for x in range(20))
    assert [v for v, _ in second] == [x * x for x in range(20)]
    assert {pid for _, pid in second} <= workers
    assert h.worker_children() == workers  # nothing new spawned


@pytest.mark.anyio
async def test_idle_workers_exit_after_idle_timeout() -> None:
    async with parallel_config(backend="processes", idle_timeout=1.0):
        pids = set(await Parallel(n_jobs=2)(delayed(h.pid_of)(x) for x in range(4)))
        assert not any(h.pid_gone(pid) for pid in pids)  # still warm right after the run
        assert await h.wait_gone_async(pids, 10.0) == []
        assert not (h.worker_children() & pids)
        # the pool spawns fresh workers on demand afterwards
        again = await Parallel(n_jobs=2)(delayed(h.square_and_pid)(x) for x in range(4))
    assert [v for v, _ in again] == [0, 1, 4, 9]
    assert not ({pid for _, pid in again} & pids)


@pytest.mark.anyio
async def test_many_concurrent_calls_share_the_pool() -> None:
    results: dict[int, list[tuple[int, int]]] = {}

    async def one(k: int) -> None:
        calls = (delayed(h.square_and_pid)(k * 100 + x) for x in range(30))
        results[k] = await Parallel(n_jobs=2)(calls)

    async with anyio.create_task_group() as tg:
        for k in range(20):
            tg.start_soon(one, k)
    for k in range(20):
        assert [v for v, _ in results[k]] == [(k * 100 + x) ** 2 for x in range(30)]
    pids = {pid for values in results.values() for _, pid in values}
    assert len(pids) <= 2
    assert len(h.worker_children()) <= 2


@pytest.mark.anyio
async def test_async_with_parallel_keeps_its_workers_and_stops_them_on_exit() -> None:
    async with Parallel(n_jobs=2) as parallel:
        first = await parallel(delayed(h.square_and_pid)(x) for x in range(20))
        workers = h.worker_children()
        second = await parallel(delayed(h.square_and_pid)(x) for x in range(20, 40))
        assert h.worker_children() == workers
    assert [v for v, _ in first + second] == [x * x for x in range(40)]
    assert {pid for _, pid in first + second} <= workers
    assert [pid for pid in workers if not h.pid_gone(pid)] == []
    assert not (h.worker_children() & workers)


@pytest.mark.asyncio
async def test_auto_batching_pickles_the_function_once_per_batch() -> None:
    counter = h.PickleCounter()
    h.PickleCounter.pickles = 0
    n = 20_000
    started = time.monotonic()
    results = await Parallel(n_jobs=2)([delayed(counter)(x) for x in range(n)])
    elapsed = time.monotonic() - started
    assert [x for _, _, x in results] == list(range(n))
    # every unpickled copy has its own serial in its worker: copies received == batches
    copies = [(pid, serial) for pid, serial, _ in results]
    batches = len(set(copies))
    assert h.PickleCounter.pickles == batches
    assert batches <= n // 20, f"{batches} batches for {n} tiny calls: auto batching is off"
    # a batch is a run of consecutive calls sharing one copy
    runs = sum(1 for i in range(n) if i == 0 or copies[i] != copies[i - 1])
    assert runs == batches
    assert elapsed < 30, elapsed


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_task_error_keeps_its_type_and_the_worker_traceback() -> None:
    calls = [delayed(h.raise_value_error)(x) if x == 3 else delayed(h.tagged)(x) for x in range(6)]
    with pytest.raises(ValueError, match="bad input 3") as info:
        await Parallel(n_jobs=2)(calls)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "FAILING-LINE-MARKER" in str(cause)  # the failing source line, from the worker
    assert 'raise ValueError(f"bad input {x}")' in str(cause)
    notes = getattr(info.value, "__notes__", [])
    assert any("task 3" in note and "raise_value_error" in note for note in notes), notes


def _closes_over_a_lock() -> Callable[[int], int]:
    lock = threading.Lock()

    def locked(x: int) -> int:
        with lock:
            return x

    return locked


UNPICKLABLE = {
    "function": lambda x: delayed(_closes_over_a_lock())(x),
    "argument": lambda x: delayed(h.take_arg)(threading.Lock()),
    "lock result": lambda x: delayed(h.return_lock)(x),
    "generator result": lambda x: delayed(h.return_generator)(x),
    "argument unpickling fails in the worker": lambda x: delayed(h.take_arg)(h.FailsToUnpickle()),
}


@pytest.mark.anyio
@pytest.mark.parametrize("what", list(UNPICKLABLE))
async def test_serialization_errors_name_the_task(what: str) -> None:
    calls = [UNPICKLABLE[what](x) if x == 2 else delayed(h.tagged)(x) for x in range(5)]
    started = time.monotonic()
    with pytest.raises(SerializationError) as info:
        await Parallel(n_jobs=2)(calls)
    assert time.monotonic() - started < CRASH_LIMIT
    text = str(info.value) + " ".join(getattr(info.value, "__notes__", []))
    assert "task 2" in text
    if what == "argument unpickling fails in the worker":
        assert "UNPICKLE-MARKER" in str(info.value.__cause__)
    # the pool is still usable
    assert await Parallel(n_jobs=2)(delayed(h.square)(x) for x in range(4)) == [0, 1, 4, 9]


DEATHS = {
    "os._exit(3)": (h.exit3, 3),
    "SIGKILL": (h.sigkill_self, -9),
    "segfault": (h.segfault, -11),
}


@pytest.mark.anyio
@pytest.mark.parametrize("how", list(DEATHS))
async def test_worker_death_is_a_worker_crashed_error(how: str) -> None:
    die, exitcode = DEATHS[how]
    calls = [delayed(die)(x) if x == 2 else delayed(h.square_and_pid)(x) for x in range(5)]
    started = time.monotonic()
    with pytest.raises(WorkerCrashedError) as info:
        await Parallel(n_jobs=2)(calls)
    assert time.monotonic() - started < CRASH_LIMIT
    assert info.value.task_index == 2
    assert info.value.exitcode == exitcode
    assert "task 2" in str(info.value)
    # the next call works, on healthy workers
    again = await Parallel(n_jobs=2)(delayed(h.square_and_pid)(x) for x in range(6))
    assert [v for v, _ in again] == [x * x for x in range(6)]
    assert all(not h.pid_gone(pid) for _, pid in again)


@pytest.mark.anyio
async def test_idle_workers_killed_from_outside_are_replaced_quietly() -> None:
    first = await Parallel(n_jobs=2)(delayed(h.square_and_pid)(x) for x in range(10))
    workers = h.worker_children()
    assert {pid for _, pid in first} <= workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    await h.wait_dead_async(workers)  # reaped by the loop's child watcher, or a zombie
    again = await Parallel(n_jobs=2)(delayed(h.square_and_pid)(x) for x in range(10))
    assert [v for v, _ in again] == [x * x for x in range(10)]
    assert not ({pid for _, pid in again} & workers)


@pytest.mark.anyio
async def test_exception_class_defined_in_a_function_keeps_its_identity() -> None:
    class LocalError(Exception):
        pass

    def boom(x: int) -> int:
        if x == 2:
            raise LocalError(f"local {x}")
        return x

    with pytest.raises(LocalError, match="local 2"):
        await Parallel(n_jobs=2)(delayed(boom)(x) for x in range(4))
    results = await Parallel(n_jobs=2, return_exceptions=True)(delayed(boom)(x) for x in range(4))
    assert results[:2] == [0, 1] and results[3] == 3
    assert type(results[2]) is LocalError


@pytest.mark.asyncio
async def test_crash_is_detected_while_a_forked_grandchild_holds_the_pipes(
    tmp_path: Path,
) -> None:
    """Crash detection must not rely on end of file alone: a grandchild forked by a task
    holds the worker's pipes open after the worker died."""
    calls = [delayed(h.fork_then_exit)(str(tmp_path), x) for x in range(3)]
    try:
        with anyio.fail_after(5):
            with pytest.raises(WorkerCrashedError) as info:
                await Parallel(n_jobs=2)(calls)
    finally:
        grandchild = tmp_path / "grandchild.pid"
        if grandchild.exists():
            try:
                os.kill(int(grandchild.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert info.value.task_index == 1
    assert info.value.exitcode == 3


# -- cancellation --------------------------------------------------------------------------------


def _sleepers(folder: Path, n: int = 4) -> list[Any]:
    return [delayed(h.pid_then_sleep)(str(folder), x) for x in range(n)]


def _assert_killed(pids: dict[int, int]) -> None:
    alive = [pid for pid in pids.values() if not h.pid_gone(pid)]
    assert alive == [], f"workers of cancelled tasks still running: {alive}"
    assert not (h.worker_children() & set(pids.values()))


@pytest.mark.anyio
async def test_fail_after_kills_the_running_workers(tmp_path: Path) -> None:
    pids: dict[int, int] = {}
    fired = 0.0

    async def expire_once_running(scope: anyio.CancelScope) -> None:
        nonlocal pids, fired
        pids = await h.wait_for_pids(tmp_path, 2)
        fired = time.monotonic()
        scope.deadline = anyio.current_time()

    with pytest.raises(TimeoutError):
        with anyio.fail_after(60) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(expire_once_running, scope)
                await Parallel(n_jobs=2)(_sleepers(tmp_path))
    assert time.monotonic() - fired < PROMPT_PROCESSES
    assert len(pids) == 2
    _assert_killed(pids)


@pytest.mark.asyncio
@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is new in 3.11")
async def test_asyncio_timeout_kills_the_running_workers(tmp_path: Path) -> None:
    pids: dict[int, int] = {}
    fired = 0.0

    async def expire_once_running(deadline: asyncio.Timeout) -> None:
        nonlocal pids, fired
        pids = await h.wait_for_pids(tmp_path, 2)
        fired = time.monotonic()
        deadline.reschedule(asyncio.get_running_loop().time())

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(60) as deadline:
            expirer = asyncio.create_task(expire_once_running(deadline))
            try:
                await Parallel(n_jobs=2)(_sleepers(tmp_path))
            finally:
                await expirer
    assert time.monotonic() - fired < PROMPT_PROCESSES
    _assert_killed(pids)


@pytest.mark.asyncio
async def test_cancelled_task_kills_the_running_workers(tmp_path: Path) -> None:
    task = asyncio.create_task(Parallel(n_jobs=2)(_sleepers(tmp_path)))
    pids = await h.wait_for_pids(tmp_path, 2)
    fired = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - fired < PROMPT_PROCESSES
    _assert_killed(pids)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["generator", "generator_unordered"])
async def test_break_then_aclose_kills_the_running_workers(tmp_path: Path, mode: str) -> None:
    calls = [delayed(h.sleep_if)(x, range(1, 6), str(tmp_path)) for x in range(6)]
    stream = Parallel(n_jobs=2, return_as=mode)(calls)
    async for result in stream:
        assert result == (0, 0)
        break
    pids = await h.wait_for_pids(tmp_path, 2)
    fired = time.monotonic()
    await stream.aclose()
    assert time.monotonic() - fired < PROMPT_PROCESSES
    _assert_killed(pids)


@pytest.mark.anyio
async def test_break_alone_kills_the_running_workers(tmp_path: Path) -> None:
    calls = [delayed(h.sleep_if)(x, range(1, 6), str(tmp_path)) for x in range(6)]
    pids: dict[int, int] = {}
    with pytest.warns(ResourceWarning, match="not closed while its run was still going"):
        async for _ in Parallel(n_jobs=2, return_as="generator")(calls):
            pids = await h.wait_for_pids(tmp_path, 2)
            break
    # the dropped iterator cancels its run; cleanup finishes in the background
    assert await h.wait_gone_async(pids.values(), PROMPT_PROCESSES) == []


@pytest.mark.anyio
async def test_cancelling_at_any_moment_leaves_no_task_running(tmp_path: Path) -> None:
    # from before the first worker exists to well into the tasks
    for i, delay in enumerate([0, 0.001, 0.005, 0.02, 0.05, 0.1, 0.2]):
        folder = tmp_path / str(i)
        folder.mkdir()
        with anyio.move_on_after(delay):
            await Parallel(n_jobs=2)(_sleepers(folder))
        _assert_killed(h.read_pids(folder))
        assert await Parallel(n_jobs=2)(delayed(h.square)(x) for x in range(4)) == [0, 1, 4, 9]
        assert len(h.worker_children()) <= 2


@pytest.mark.anyio
async def test_timeout_names_the_task_and_kills_its_worker(tmp_path: Path) -> None:
    calls = [delayed(h.sleep_if)(x, {3}, str(tmp_path)) for x in range(6)]
    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        await Parallel(n_jobs=2, timeout=1)(calls)
    assert time.monotonic() - started < CRASH_LIMIT
    assert "task 3" in str(info.value)
    assert "timeout=1s" in str(info.value)
    pids = h.read_pids(tmp_path)
    assert list(pids) == [3]
    _assert_killed(pids)
    # the pool is usable afterwards
    assert await Parallel(n_jobs=2)(delayed(h.square)(x) for x in range(4)) == [0, 1, 4, 9]


# -- process life ---------------------------------------------------------------------------------

PARENT_SCRIPT = """
import asyncio, sys
sys.path.insert(0, {root!r})
from aioparallel import Parallel, delayed
from tests import proc_helpers as h
from tests.helpers import PROMPT_PROCESSES

async def main():
    await Parallel(n_jobs=2)(delayed(h.pid_then_sleep)({folder!r}, x) for x in range(4))

asyncio.run(main())
"""


def test_workers_exit_when_the_parent_is_sigkilled(tmp_path: Path) -> None:
    folder = tmp_path / "pids"
    folder.mkdir()
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT.format(root=str(ROOT), folder=str(folder)))
    parent = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path)
    try:
        pids = h.wait_for_pids_sync(folder, 2, limit=30)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
    killed = time.monotonic()
    assert h.wait_gone(pids.values(), 5.0) == []
    assert time.monotonic() - killed < 5.0


@pytest.mark.skipif(
    not FEATURES.death_signal,
    reason="no PR_SET_PDEATHSIG (macOS, AIOPARALLEL_PORTABLE=1): the lifeline thread waits "
    "for a C call holding the GIL to return, the documented exception",
)
def test_workers_in_a_gil_holding_call_exit_when_the_parent_is_sigkilled(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "pids"
    folder.mkdir()
    script = tmp_path / "parent.py"
    script.write_text(
        PARENT_SCRIPT.format(root=str(ROOT), folder=str(folder)).replace(
            "h.pid_then_sleep", "h.pid_then_hold_the_gil"
        )
    )
    parent = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path)
    try:
        pids = h.wait_for_pids_sync(folder, 2, limit=30)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
    try:
        assert h.wait_gone(pids.values(), 5.0) == []
    finally:
        assert h.wait_gone(pids.values(), 30.0) == []  # no stray process either way


@pytest.mark.asyncio
async def test_nested_parallel_in_a_worker_runs_sequentially() -> None:
    results = await Parallel(n_jobs=2)(delayed(h.nested_run)(4) for _ in range(2))
    for inner_pids, worker_pid, flag in results:
        assert inner_pids == [worker_pid] * 4  # the inner calls ran in the worker itself
        assert flag == "1"
    assert os.environ.get("AIOPARALLEL_IN_WORKER") is None


@pytest.mark.asyncio
async def test_workers_cap_blas_threads_unless_the_user_set_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in h.BLAS_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    (env,) = await Parallel(n_jobs=2)([delayed(h.env_of)(h.BLAS_VARS)] * 1)
    expected = str(max(1, aioparallel.cpu_count() // 2))
    assert env == {name: "7" if name == "MKL_NUM_THREADS" else expected for name in h.BLAS_VARS}


@pytest.mark.asyncio
async def test_blas_cap_is_cpu_count_divided_by_n_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    import aioparallel._system

    for name in h.BLAS_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(aioparallel._system, "cpu_count", lambda: 8)
    (env,) = await Parallel(n_jobs=2)([delayed(h.env_of)(h.BLAS_VARS)])
    assert set(env.values()) == {"4"}


@pytest.mark.asyncio
async def test_no_listening_socket(tmp_path: Path) -> None:
    def listening(proc: psutil.Process) -> set[Any]:
        return {c.laddr for c in proc.net_connections(kind="all") if c.status == "LISTEN"}

    me = psutil.Process()
    before = listening(me)
    release = tmp_path / "release"
    calls = [delayed(h.pid_then_wait_file)(str(tmp_path), x, str(release)) for x in range(4)]
    async with anyio.create_task_group() as tg:
        tg.start_soon(Parallel(n_jobs=2), calls)
        pids = await h.wait_for_pids(tmp_path, 2)
        try:
            assert listening(me) - before == set()
            for pid in set(pids.values()):
                worker = psutil.Process(pid)
                assert listening(worker) == set()
                assert worker.net_connections(kind="inet") == []
        finally:
            release.touch()


# -- one call: a run of one lane (no task group) keeps every guarantee ------------------------


@pytest.mark.anyio
async def test_one_call_crash_names_the_call_and_the_pool_recovers() -> None:
    async with Parallel(n_jobs=2) as parallel:
        with pytest.raises(WorkerCrashedError) as info:
            await parallel([delayed(h.exit3)(0)])
        assert info.value.task_index == 0 and info.value.exitcode == 3
        ((value, _pid),) = await parallel([delayed(h.square_and_pid)(3)])
        assert value == 9


@pytest.mark.anyio
async def test_one_call_timeout_blames_it_and_kills_its_worker(tmp_path: Path) -> None:
    with pytest.raises(TimeoutError, match="task 0") as info:
        await Parallel(n_jobs=2, timeout=0.5)([delayed(h.pid_then_sleep)(str(tmp_path), 0)])
    assert "pid_then_sleep" in str(info.value)
    pids = h.read_pids(tmp_path)
    assert await h.wait_gone_async(pids.values(), PROMPT_PROCESSES) == []


@pytest.mark.asyncio
async def test_one_call_cancelled_kills_its_worker(tmp_path: Path) -> None:
    task = asyncio.create_task(Parallel(n_jobs=2)(_sleepers(tmp_path, n=1)))
    pids = await h.wait_for_pids(tmp_path, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await h.wait_gone_async(pids.values(), PROMPT_PROCESSES) == []


@pytest.mark.anyio
async def test_one_call_failure_is_raised_or_returned() -> None:
    with pytest.raises(ValueError, match="math domain error"):
        await Parallel(n_jobs=2)([delayed(math.sqrt)(-1)])
    (result,) = await Parallel(n_jobs=2, return_exceptions=True)([delayed(math.sqrt)(-1)])
    assert type(result) is ValueError
