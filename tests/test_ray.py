"""backend="ray" on a real local Ray instance (2 CPUs), started once per session.

Each test runs over asyncio and trio (Ray's refs are awaited through a concurrent future that
wakes the caller's loop, not with asyncio-only ``await ref``). Ray's processes are exempt from
the leak check (``ray_cluster``); nothing else is.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from aioparallel import (
    InitializerError,
    Parallel,
    PicklingError,
    RemoteTraceback,
    TaskTimeoutError,
    WorkerCrashedError,
    delayed,
    parallel_config,
)
from tests.ray_helpers import (
    WAIT,
    RaySession,
    add,
    exit_hard,
    fail_on,
    names,
    pid,
    refuse,
    remember,
    remembered,
    square,
    square_later,
    tick,
    tick_async,
    tick_deaf,
    total,
)

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'aioparallel[ray]'")

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ray_cluster")]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def ray_parallel(**kwargs: Any) -> Parallel[Any]:
    kwargs.setdefault("n_jobs", 2)
    return Parallel(backend="ray", **kwargs)


async def wait_for(condition: Any, what: str) -> None:
    """Until ``condition()`` holds, checked every 20 ms; bounded by WAIT."""
    with anyio.fail_after(WAIT):
        while not condition():  # noqa: ASYNC110 (a file another process writes: nothing to await)
            await anyio.sleep(0.02)


def ticks(folder: Path) -> int:
    path = folder / "ticks"
    return path.stat().st_size if path.exists() else 0


async def stopped_ticking(folder: Path) -> bool:
    """True once the tick file has not grown for 0.5 s (a running task ticks every 20 ms)."""
    with anyio.move_on_after(WAIT):
        while True:
            before = ticks(folder)
            await anyio.sleep(0.5)
            if ticks(folder) == before:
                return True
    return False


async def test_results_in_input_order_in_every_mode(mode: str) -> None:
    calls = [delayed(add)(x, y=1) for x in range(40)]
    parallel = ray_parallel(return_as=mode, batch_size=3)
    if mode == "list":
        results = await parallel(calls)
    else:
        results = [r async for r in parallel(calls)]
    if mode == "generator_unordered":
        results.sort()
    assert results == [x + 1 for x in range(40)]


async def test_n_jobs_minus_one_is_the_clusters_cpus() -> None:
    from aioparallel.backends.ray.client import RayBackend

    async with RayBackend(-1) as backend:
        assert backend.n_workers == 2
    async with RayBackend(-2) as backend:
        assert backend.n_workers == 1


async def test_the_calls_run_in_ray_workers() -> None:
    pids = await ray_parallel(batch_size=1)(delayed(pid)(x) for x in range(4))
    assert ray.get(ray.remote(pid).remote()) not in (None, 0)
    assert set(pids).isdisjoint({__import__("os").getpid()})


async def test_task_error_keeps_its_type_and_the_remote_traceback() -> None:
    with pytest.raises(ValueError, match="bad input 5") as info:
        await ray_parallel(batch_size=4)(delayed(fail_on)(x, bad=5) for x in range(12))
    error = info.value
    assert type(error) is ValueError  # the task's own type, never a Ray wrapper
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "task 5 (fail_on)" in str(error.__cause__)
    assert 'raise ValueError(f"bad input {x}")' in str(error.__cause__)
    assert "aioparallel: raised by task 5 (fail_on)" in error.__notes__


async def test_return_exceptions_fills_every_slot() -> None:
    results = await ray_parallel(batch_size=3, return_exceptions=True)(
        delayed(fail_on)(x, bad=4) for x in range(9)
    )
    assert [r for i, r in enumerate(results) if i != 4] == [0, 1, 2, 3, 5, 6, 7, 8]
    assert type(results[4]) is ValueError


async def test_a_dead_worker_is_worker_crashed_error_naming_the_task_and_not_rerun(
    tmp_path: Path,
) -> None:
    with pytest.raises(WorkerCrashedError) as info:
        await ray_parallel(batch_size=1)(
            delayed(exit_hard)(x, bad=3, folder=str(tmp_path)) for x in range(6)
        )
    assert info.value.task_index == 3
    assert "task 3 (exit_hard)" in str(info.value)
    assert "not retried" in str(info.value)
    assert len(names(tmp_path, "attempt-*")) == 1  # Ray did not run it again
    # the next run gets healthy workers
    assert await ray_parallel()(delayed(square)(x) for x in range(4)) == [0, 1, 4, 9]


async def test_timeout_interrupts_the_call_in_its_worker(tmp_path: Path) -> None:
    with pytest.raises(TaskTimeoutError, match=r"task 1 \(tick\).*timeout=0.5s") as info:
        await ray_parallel(batch_size=1, timeout=0.5)(
            delayed(tick)(x, str(tmp_path)) if x == 1 else delayed(square)(x) for x in range(3)
        )
    assert "interrupted" in str(info.value)
    assert ticks(tmp_path) > 0
    assert await stopped_ticking(tmp_path)  # the call itself stopped, not just our wait


async def test_a_call_deaf_to_its_timeout_is_killed_at_the_backstop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psutil

    from aioparallel.backends.ray import client

    monkeypatch.setattr(client, "_BACKSTOP_SLACK", 1.0)
    with pytest.raises(TaskTimeoutError, match=r"task 0 \(tick_deaf\).*did not stop"):
        await ray_parallel(timeout=0.5)([delayed(tick_deaf)(0, str(tmp_path))])
    worker = int((tmp_path / "pid").read_text())
    await wait_for(lambda: not psutil.pid_exists(worker), "the worker killed")
    assert await stopped_ticking(tmp_path)


async def test_async_task_timeout_cancels_its_coroutine(tmp_path: Path) -> None:
    with pytest.raises(TimeoutError, match=r"task 0 \(tick_async\)"):
        await ray_parallel(timeout=0.5)([delayed(tick_async)(0, str(tmp_path))])
    assert (tmp_path / "finally").exists()
    assert await stopped_ticking(tmp_path)


async def test_cancellation_stops_the_running_ray_task(tmp_path: Path) -> None:
    async def cancel_once_ticking(scope: anyio.CancelScope) -> None:
        await wait_for(lambda: ticks(tmp_path) > 0, "the task ticking")
        scope.cancel()

    began = 0.0
    async with anyio.create_task_group() as group:
        with anyio.CancelScope() as scope:
            group.start_soon(cancel_once_ticking, scope)
            began = time.monotonic()
            await ray_parallel()([delayed(tick)(0, str(tmp_path))])
        cancelled_in = time.monotonic() - began
    assert scope.cancelled_caught
    assert cancelled_in < 10
    assert await stopped_ticking(tmp_path)
    pid_of_task = int((tmp_path / "pid").read_text())
    assert pid_of_task != 0


async def test_a_task_deaf_to_interrupts_is_killed(tmp_path: Path) -> None:
    import psutil

    with anyio.move_on_after(WAIT) as scope:
        async with anyio.create_task_group() as group:

            async def cancel_once_ticking() -> None:
                await wait_for(lambda: ticks(tmp_path) > 0, "the task ticking")
                group.cancel_scope.cancel()

            group.start_soon(cancel_once_ticking)
            await ray_parallel()([delayed(tick)(0, str(tmp_path), ignore_interrupts=True)])
    assert not scope.cancelled_caught
    worker = int((tmp_path / "pid").read_text())
    await wait_for(lambda: not psutil.pid_exists(worker), "the worker killed")
    assert await stopped_ticking(tmp_path)


async def test_cancelled_async_task_runs_its_finally(tmp_path: Path) -> None:
    with anyio.move_on_after(WAIT):
        async with anyio.create_task_group() as group:

            async def cancel_once_ticking() -> None:
                await wait_for(lambda: ticks(tmp_path) > 0, "the task ticking")
                group.cancel_scope.cancel()

            group.start_soon(cancel_once_ticking)
            await ray_parallel()([delayed(tick_async)(0, str(tmp_path))])
    await wait_for(lambda: (tmp_path / "finally").exists(), "the coroutine's finally")
    assert await stopped_ticking(tmp_path)


async def test_async_tasks_mixed_with_sync_ones() -> None:
    calls = [delayed(square_later if x % 2 else square)(x) for x in range(20)]
    assert await ray_parallel()(calls) == [x * x for x in range(20)]


async def test_auto_batching_groups_tiny_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    from aioparallel.backends.ray import client

    sent: list[int] = []
    original = client._RayRun.run_batch

    async def counting(self: Any, batch: Any) -> list[Any]:
        sent.append(len(batch.calls))
        return await original(self, batch)

    monkeypatch.setattr(client._RayRun, "run_batch", counting)
    results = await ray_parallel()(delayed(square)(x) for x in range(2000))
    assert results == [x * x for x in range(2000)]
    assert max(sent) > 10 and len(sent) < 400, sent


async def test_pre_dispatch_bounds_what_is_taken_from_the_input() -> None:
    taken: list[int] = []
    done: list[int] = []

    def produce() -> Any:
        for x in range(30):
            taken.append(x)
            assert len(taken) - len(done) <= 4 + 1, (len(taken), len(done))
            yield delayed(square_later)(x)

    async for _value in ray_parallel(pre_dispatch="2*n_jobs", batch_size=1, return_as="generator")(
        produce()
    ):
        done.append(_value)
    assert len(done) == 30


async def test_verbose_reports_progress(capsys: pytest.CaptureFixture[str]) -> None:
    await ray_parallel(verbose=10, batch_size=1)(delayed(square)(x) for x in range(6))
    err = capsys.readouterr().err
    assert "[Parallel(n_jobs=2)]: Done   6 out of   6" in err


async def test_initializer_runs_once_per_worker_process(tmp_path: Path) -> None:
    parallel = ray_parallel(batch_size=1, initializer=remember, initargs=("model", str(tmp_path)))
    seen = await parallel(delayed(remembered)(x) for x in range(12))
    assert {value for _pid, value in seen} == {"model"}
    inits = [name.split("-")[1] for name in names(tmp_path, "init-*")]
    assert sorted(set(inits)) == sorted(inits)  # no process ran it twice
    assert {str(p) for p, _value in seen} <= set(inits)


async def test_a_failing_initializer_stops_the_run() -> None:
    with pytest.raises(InitializerError, match="initializer refuse raised RuntimeError") as info:
        await ray_parallel(initializer=refuse, initargs=("x",), return_exceptions=True)(
            delayed(square)(x) for x in range(4)
        )
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "no model here" in str(info.value.__cause__.__cause__)


async def test_a_large_array_is_put_once_per_run(monkeypatch: pytest.MonkeyPatch) -> None:
    puts: list[int] = []
    put = ray.put

    def counting_put(value: Any, **kwargs: Any) -> Any:
        puts.append(getattr(value, "nbytes", 0))
        return put(value, **kwargs)

    monkeypatch.setattr(ray, "put", counting_put)
    big = np.ones(300_000)  # 2.4 MB > max_nbytes (1M)
    small = np.ones(10)
    results = await ray_parallel(batch_size=2)(
        delayed(total)(big if x % 3 else small, scale=x) for x in range(9)
    )
    assert results == [10.0 * x if x % 3 == 0 else 300_000.0 * x for x in range(9)]
    assert puts == [big.nbytes]


async def test_max_nbytes_none_sends_arrays_with_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray, "put", None)  # would fail if called
    big = np.ones(300_000)
    assert await ray_parallel(max_nbytes=None)([delayed(total)(big)]) == [300_000.0]


async def test_a_large_batch_is_pickled_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from aioparallel.backends.ray import client

    threads: list[str] = []
    submit = client._submit

    def recording(args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return submit(args)

    monkeypatch.setattr(client, "_submit", recording)
    loop_thread = threading.current_thread().name
    big = "x" * 300_000
    assert await ray_parallel(batch_size=1)([delayed(len)(big), delayed(len)("x")]) == [300_000, 1]
    assert len(threads) == 2
    assert threads.count(loop_thread) == 1  # the small one was submitted on the loop


async def test_unpicklable_argument_names_its_task() -> None:
    import threading

    with pytest.raises(PicklingError, match=r"task 2 \(add\) could not be sent"):
        await ray_parallel(batch_size=4)(
            delayed(add)(threading.Lock() if x == 2 else x) for x in range(4)
        )


async def test_the_loop_keeps_running_while_a_batch_runs() -> None:
    beats = 0

    async def beat() -> None:
        nonlocal beats
        while True:
            await anyio.sleep(0.01)
            beats += 1

    async with anyio.create_task_group() as group:
        group.start_soon(beat)
        await ray_parallel(batch_size=1)(delayed(time.sleep)(0.5) for _ in range(2))
        group.cancel_scope.cancel()
    assert beats > 10  # ~50 if the loop was free the whole time


async def test_uses_the_ray_this_process_is_connected_to(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_second_init(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("ray.init called while connected")

    monkeypatch.setattr(ray, "init", no_second_init)
    with parallel_config(backend="ray", address="127.0.0.1:1"):  # connected first: ignored
        assert await Parallel(n_jobs=2)(delayed(square)(x) for x in range(3)) == [0, 1, 4]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_address_connects_a_new_driver(ray_cluster: RaySession) -> None:
    script = (
        "import asyncio, ray\n"
        "from aioparallel import Parallel, delayed, parallel_config\n"
        "from tests.ray_helpers import square\n"
        "async def main():\n"
        f"    with parallel_config(backend='ray', address={ray_cluster.address!r}):\n"
        "        print(await Parallel(n_jobs=-1)(delayed(square)(x) for x in range(5)))\n"
        "    print(ray.get_runtime_context().gcs_address)\n"
        "asyncio.run(main())\n"
        "ray.shutdown()\n"
    )
    done = await anyio.run_process(
        [sys.executable, "-c", script], cwd=ROOT, check=False, stderr=subprocess.STDOUT
    )
    out = done.stdout.decode()
    assert done.returncode == 0, out
    assert "[0, 1, 4, 9, 16]" in out
    assert ray_cluster.address in out


@pytest.mark.timeout(240)
def test_the_docs_ray_examples_run(tmp_path: Path) -> None:
    """The Ray blocks of docs/distributed.md, skipped by test_docs_examples (which runs without
    Ray), run here, each in a fresh interpreter as a reader would paste it (each starts a
    local Ray of its own: ~5 s)."""
    from tests.test_docs_examples import extract_blocks, run_block

    blocks = [
        b for b in extract_blocks(ROOT / "docs" / "distributed.md") if 'backend="ray"' in b.source
    ]
    assert len(blocks) >= 2
    for block in blocks:
        done = run_block(block, tmp_path)
        assert done.returncode == 0, f"{block.id}:\n{done.stdout}\n{done.stderr}"
