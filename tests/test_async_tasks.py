"""docs/async-tasks.md: ``delayed(async_fn)`` is awaited where the call runs, on every backend.

Tasks live in ``tests.async_helpers`` (process workers import them by name). The caller's
loop is asyncio, uvloop or trio (anyio's plugin); the workers' own loops are asyncio, so
the tasks use asyncio freely, except on the sequential backend, where they run in the
caller's loop (those cases run on asyncio callers only).
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioparallel import Parallel, delayed, parallel_config
from aioparallel._detached import _in_trio
from aioparallel.backends.threads import ThreadBackend
from tests import async_helpers as ah
from tests.helpers import PROMPT, BatchSizes, collect

BACKENDS = ["processes", "threads"]
# -- results, order, mixed input ---------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["list", "generator", "generator_unordered"])
async def test_coroutine_functions_are_awaited(backend: str, mode: str) -> None:
    # uneven waits: async tasks finish out of input order on the worker
    calls = [delayed(ah.nap)(x, 0.01 * (x % 3)) for x in range(40)]
    results = await collect(Parallel(n_jobs=2, backend=backend, return_as=mode), calls)
    if mode == "generator_unordered":
        results.sort()
    assert results == list(range(40))


@pytest.mark.anyio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_mixed_sync_and_async_input(backend: str) -> None:
    def call(x: int) -> Any:
        return delayed(ah.double)(x) if x % 3 else delayed(ah.sync_pid)(x)

    results = await Parallel(n_jobs=2, backend=backend, batch_size=7)(call(x) for x in range(30))
    for x, r in enumerate(results):
        assert (r == 2 * x) if x % 3 else (r[0] == x)


@pytest.mark.anyio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_partials_bound_methods_callable_objects(backend: str) -> None:
    calls = [
        delayed(functools.partial(ah.nap, seconds=0))(1),
        delayed(ah.Service(10).add)(2),
        delayed(ah.AsyncCallable())(3),
        delayed(ah.make_coroutine)(4),  # a sync call returning a coroutine: awaited too
    ]
    assert await Parallel(n_jobs=2, backend=backend)(calls) == [1, 12, 4, 8]


async def test_sequential_awaits_in_the_callers_loop() -> None:
    loop_ids: list[int] = []

    async def where(x: int) -> int:
        import asyncio

        loop_ids.append(id(asyncio.get_running_loop()))
        await asyncio.sleep(0)
        return x

    import asyncio

    results = await Parallel(n_jobs=1)(delayed(where)(x) for x in range(3))
    assert results == [0, 1, 2]
    assert loop_ids == [id(asyncio.get_running_loop())] * 3  # no pickling, no other loop


test_sequential_awaits_in_the_callers_loop = pytest.mark.asyncio(
    test_sequential_awaits_in_the_callers_loop
)


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("backend", [*BACKENDS, "sequential"])
async def test_errors_and_return_exceptions(backend: str, anyio_backend_name: str) -> None:
    if backend == "sequential" and anyio_backend_name == "trio":
        pytest.skip("sequential runs the asyncio tasks in the caller's (trio) loop")
    calls = [delayed(ah.fail_if)(x, 5) for x in range(10)]
    with pytest.raises(ValueError, match="bad input 5") as info:
        await Parallel(n_jobs=2, backend=backend)(calls)
    assert "task 5 (fail_if)" in " ".join(getattr(info.value, "__notes__", []))
    results = await Parallel(n_jobs=2, backend=backend, return_exceptions=True)(calls)
    assert [r for i, r in enumerate(results) if i != 5] == [i for i in range(10) if i != 5]
    assert isinstance(results[5], ValueError)


@pytest.mark.anyio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_tasks_own_cancelled_error_is_its_outcome(backend: str) -> None:
    import asyncio

    calls = [delayed(ah.raise_cancelled)(0), delayed(ah.double)(1)]
    results = await Parallel(n_jobs=2, backend=backend, return_exceptions=True)(calls)
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1] == 2


#: Exceptions an async task may raise that must never be taken for the run's cancellation or
#: for the end of a stream, nor kill a worker's event loop (docs/cancellation.md). (A StopIteration
#: cannot leave a coroutine: Python itself turns it into a RuntimeError there.)
TASK_EXCEPTIONS: dict[str, type[BaseException]] = {
    "CancelledError": asyncio.CancelledError,
    "BaseException-subclass": ah.TaskBaseError,
    "KeyboardInterrupt": KeyboardInterrupt,
    "SystemExit": SystemExit,
    "StopAsyncIteration": StopAsyncIteration,
}
ALL_WAYS = {
    "processes": {"backend": "processes"},
    "threads": {"backend": "threads"},
    "threads-timeout": {"backend": "threads", "timeout": 30},
    "sequential": {"backend": "sequential"},
}


@pytest.mark.anyio
@pytest.mark.parametrize("way", list(ALL_WAYS))
@pytest.mark.parametrize("kind", list(TASK_EXCEPTIONS))
async def test_any_async_task_exception_is_its_outcome(way: str, kind: str) -> None:
    if (way, kind) == ("sequential", "CancelledError") and sys.version_info < (3, 11):
        if not _in_trio():
            pytest.skip(
                "3.10's asyncio cannot tell a coroutine's own CancelledError, awaited in the "
                "caller's loop, from the caller's cancellation (documented in async-tasks.md)"
            )
    exc_type = TASK_EXCEPTIONS[kind]
    calls = [delayed(ah.raise_at)(x, exc_type) for x in range(8)]
    options = ALL_WAYS[way]
    with anyio.fail_after(30):
        results = await Parallel(n_jobs=2, batch_size=4, return_exceptions=True, **options)(calls)  # type: ignore[call-overload]
    assert [r for x, r in enumerate(results) if x != 3] == [0, 1, 2, 4, 5, 6, 7]
    assert type(results[3]) is exc_type, results
    expected = RuntimeError if exc_type is StopAsyncIteration else exc_type
    with anyio.fail_after(30), pytest.raises(expected) as info:
        await Parallel(n_jobs=2, batch_size=4, **options)(calls)  # type: ignore[call-overload]
    if expected is RuntimeError:
        assert "task 3 (raise_at)" in str(info.value)
    else:
        assert "aioparallel: raised by task 3 (raise_at)" in info.value.__notes__


@pytest.mark.anyio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_failure_after_a_dropped_task_is_raised_as_itself(backend: str) -> None:
    """Async tasks finish out of order: task 2 fails while task 1 still waits, so the batch
    stops and drops task 1; the run raises task 2's own error, in its own slot."""
    calls = [
        delayed(ah.double)(0),
        delayed(ah.nap)(1, ah.LONG),
        delayed(ah.fail_if)(2, 2),
        delayed(ah.double)(3),
    ]
    with anyio.fail_after(30), pytest.raises(ValueError, match="bad input 2") as info:
        await Parallel(n_jobs=2, backend=backend, batch_size=4)(calls)
    assert "aioparallel: raised by task 2 (fail_if)" in info.value.__notes__


async def _sleep_long(x: int) -> int:
    await anyio.sleep(ah.LONG)
    return x


@pytest.mark.anyio
async def test_sequential_cancellation_passes_through_the_awaited_coroutine() -> None:
    """The run's own cancellation, arriving while the caller's loop awaits a task's
    coroutine, is not taken for that task's outcome: the caller's deadline fires promptly."""
    began = time.monotonic()
    with pytest.raises(TimeoutError), anyio.fail_after(0.2):
        await Parallel(n_jobs=1, return_exceptions=True)(delayed(_sleep_long)(x) for x in range(3))
    assert time.monotonic() - began < 0.2 + PROMPT


async def test_sequential_native_asyncio_cancellation_passes_through() -> None:
    """The same with asyncio's own timeout (a Task.cancel() no anyio scope records)."""
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await Parallel(n_jobs=1, return_exceptions=True)(
                delayed(_sleep_long)(x) for x in range(3)
            )
    assert time.monotonic() - began < 0.2 + PROMPT


test_sequential_native_asyncio_cancellation_passes_through = pytest.mark.asyncio(
    pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is 3.11+")(
        test_sequential_native_asyncio_cancellation_passes_through
    )
)


# -- concurrency, batching, bounds -------------------------------------------------------------


@pytest.mark.anyio
async def test_waits_overlap_on_process_workers() -> None:
    """200 tasks sleeping 50 ms on 2 workers: far below the serial time (10 s)."""
    n, seconds = 200, 0.05
    serial_time = n * seconds
    async with Parallel(n_jobs=2) as parallel:
        await parallel(delayed(ah.double)(x) for x in range(4))  # warm workers
        began = time.monotonic()
        results = await parallel(delayed(ah.nap)(x, seconds) for x in range(n))
        elapsed = time.monotonic() - began
    assert results == list(range(n))
    assert elapsed < serial_time / 4, f"{elapsed:.2f}s for {n} tasks"


@pytest.mark.anyio
async def test_waits_overlap_on_threads() -> None:
    n, seconds = 100, 0.05
    began = time.monotonic()
    results = await Parallel(n_jobs=2, backend="threads")(
        delayed(ah.nap)(x, seconds) for x in range(n)
    )
    assert results == list(range(n))
    assert time.monotonic() - began < n * seconds / 4


@pytest.mark.anyio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_worker_concurrency_bounds_tasks_in_flight(backend: str, tmp_path: Path) -> None:
    """With worker_concurrency=3 and one worker, never more than 3 tasks run at once."""
    calls = [delayed(ah.guarded_peak)(str(tmp_path), x) for x in range(12)]
    # n_jobs=2 with a lone batch: one worker runs everything
    results = await Parallel(n_jobs=2, backend=backend, worker_concurrency=3, batch_size=12)(calls)
    assert results == list(range(12))
    assert ah.count(tmp_path, "peak-") == 0, "more than 3 tasks were in flight"
    assert ah.count(tmp_path, "full-") > 0, "never 3 at once: no concurrency"


@pytest.mark.anyio
async def test_pre_dispatch_bounds_async_calls_taken(tmp_path: Path) -> None:
    taken = 0

    def calls() -> Any:
        nonlocal taken
        for x in range(40):
            taken += 1
            yield delayed(ah.nap)(x, 0.01)

    stream = Parallel(n_jobs=2, return_as="generator", pre_dispatch=6)(calls())
    seen = []
    async for r in stream:
        seen.append(r)
        assert taken - len(seen) <= 6
    assert seen == list(range(40))


@pytest.mark.anyio
async def test_progress_counts_async_tasks() -> None:
    events: list[Any] = []
    await Parallel(n_jobs=2, progress=events.append)(delayed(ah.double)(x) for x in range(50))
    assert events[-1].done == events[-1].total == 50


# -- a sync task with its own event loop ---------------------------------------------------------


@pytest.mark.anyio
async def test_sync_task_may_call_asyncio_run_on_a_worker() -> None:
    # the same worker runs async calls (its loop thread) and a sync asyncio.run in between
    calls = [delayed(ah.double)(1), delayed(ah.sync_runs_asyncio)(2), delayed(ah.double)(3)]
    assert await Parallel(n_jobs=2, batch_size=3)(calls) == [2, 4, 6]


# -- parameters --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 1.5, "4", True])
def test_worker_concurrency_is_validated(bad: Any) -> None:
    with pytest.raises(ValueError, match="worker_concurrency"):
        Parallel(worker_concurrency=bad)
    with pytest.raises(ValueError, match="worker_concurrency"):
        parallel_config(worker_concurrency=bad)


def test_worker_concurrency_from_parallel_config() -> None:
    assert Parallel().worker_concurrency == 16
    with parallel_config(worker_concurrency=4):
        assert Parallel().worker_concurrency == 4
        assert Parallel(worker_concurrency=2).worker_concurrency == 2


@pytest.fixture
def anyio_backend_name(anyio_backend: Any) -> str:
    return anyio_backend[0] if isinstance(anyio_backend, tuple) else str(anyio_backend)


@pytest.mark.anyio
async def test_sync_only_workers_never_import_asyncio() -> None:
    """The worker starts on the stdlib and ``aioparallel.child`` only; its loop thread (and
    asyncio) come with its first async call, so sync-only cold starts stay as fast as before."""
    probe = "'asyncio' in __import__('sys').modules"
    async with Parallel(n_jobs=2, batch_size=1) as parallel:  # fresh workers of its own
        assert await parallel(delayed(eval)(probe) for _ in range(4)) == [False] * 4


class _RecordingThreads(BatchSizes, ThreadBackend):
    """The thread backend, recording each batch's size."""


@pytest.mark.anyio
async def test_a_later_run_of_an_async_function_keeps_its_floor() -> None:
    """The async floor (``ASYNC_BATCH_FACTOR`` x ``worker_concurrency`` calls a batch) holds
    in every run of an async function, not only in its first: a later run, starting from a
    learned size as large, took its first call alone and cut its tail like a sync run's,
    down to batches of 1 (W8's last 230 tasks went in 16 batches, each a whole wait)."""

    async def nap(x: int) -> int:
        await asyncio.sleep(0.001)
        return x

    async with _RecordingThreads(2) as backend:
        for _ in range(2):
            backend.sizes = []
            calls = (delayed(nap)(i) for i in range(300))
            assert await Parallel(backend=backend, worker_concurrency=4)(calls) == list(range(300))
    assert min(backend.sizes) >= 4, backend.sizes  # never under one worker's tasks in flight


def test_auto_batching_floor_for_async_input() -> None:
    """An async batch's duration is mostly waiting: auto batching never sends a worker fewer
    than ASYNC_BATCH_FACTOR * worker_concurrency of them, except to share the input's tail."""
    from aioparallel.run.batching import AutoBatcher

    batcher = AutoBatcher()
    batcher.raise_floor(64)
    assert batcher.next_size(None, 2) == 64
    batcher.record(64, 10.0)  # slow batches do not shrink it below the floor
    assert batcher.next_size(None, 2) == 64
    assert batcher.next_size(40, 2) == 20  # the tail: shared between the workers
    # but never under one worker's tasks in flight (64 / ASYNC_BATCH_FACTOR): fewer take a
    # whole wait all the same
    assert batcher.next_size(24, 2) == 16
    assert batcher.next_size(10, 2) == 10


def test_tasks_dropped_before_they_start_leave_no_unawaited_coroutine() -> None:
    # a batch stopping at its first failure cancels the tasks of its other calls, some of
    # which have not taken a step yet (the race behind a CI run's "never awaited" warning)
    import asyncio
    import gc
    import warnings

    from aioparallel.child.async_loop import InFlight

    async def noop() -> None:
        return None

    async def main() -> None:
        tasks = InFlight(asyncio.get_running_loop(), None, lambda *a: None, lambda: None)
        for position in range(3):
            tasks.start(position, noop, (), {})
        started = list(tasks.tasks.values())
        tasks.cancel_all()  # before any of them ran
        await asyncio.gather(*started, return_exceptions=True)
        assert all(task.cancelled() for task in started)

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        asyncio.run(main())
        gc.collect()


def test_the_task_a_finished_one_starts_takes_its_first_step_before_the_others_woken_with_it() -> (
    None
):
    """Tasks woken together run one after another. The next call each one starts as it ends
    must take its first step (and begin its own wait) right then, not after every task woken
    with it, or the successors all wait and wake together again: a wave per wait, the waits
    and the CPU adding up (1,000 tasks of a 20 ms wait and 0.5 ms of CPU, 16 at a time on 2
    workers, Python 3.11: 0.97 s, against 0.80 s when each first step runs next)."""
    import asyncio

    from aioparallel.child.async_loop import InFlight

    log: list[tuple[str, int]] = []

    async def main() -> None:
        go = asyncio.Event()
        all_settled = asyncio.Event()
        settled = 0

        async def wait_for_go(i: int) -> None:
            log.append(("start", i))
            await go.wait()  # the first two are woken in one pass of the loop
            log.append(("end", i))

        def on_settled() -> None:
            nonlocal settled
            settled += 1
            if settled == 4:
                all_settled.set()

        loop = asyncio.get_running_loop()
        tasks = InFlight(loop, None, lambda *a: None, on_settled, limit=2)
        for position in range(4):
            tasks.start(position, wait_for_go, (position,), {})
        loop.call_later(0.01, go.set)
        await asyncio.wait_for(all_settled.wait(), 5)

    asyncio.run(main())
    assert log[:3] == [("start", 0), ("start", 1), ("end", 0)], log
    assert log.index(("start", 2)) < log.index(("end", 1)), log
