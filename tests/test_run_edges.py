"""Edges of a run on the in-process backends (threads, sequential) and of its parameters.

Issue 13: a task's exception of any type is its outcome (A1-A3); cleanup of the user's
generator is bounded (B8); a slow progress callback never delays the run (C11); a cancelled
thread batch starts no new call (C13); numeric parameters never overflow (D17); no parameter
is silently ignored or reroutes the run (E20); an unclosed running stream warns (E21).
"""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import threading
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from functools import partial
from typing import Any

import anyio
import pytest

from aioparallel import Parallel, ProgressEvent, delayed, parallel_config
from aioparallel.backends.threads import ThreadBackend
from tests.helpers import (
    PROMPT,
    Gate,
    Tracker,
    collect,
    endless_calls,
    identity,
    square,
    wait_gate,
)

pytestmark = pytest.mark.anyio


class Cancelled(BaseException):
    """Looks like trio's Cancelled (a BaseException named Cancelled), raised by a task."""


class CustomBase(BaseException):
    pass


#: Exceptions a task may raise that must never be taken for the run's cancellation, for the
#: end of a stream, or dropped.
TASK_EXCEPTIONS: dict[str, type[BaseException]] = {
    "CancelledError": asyncio.CancelledError,
    "Cancelled-lookalike": Cancelled,
    "BaseException-subclass": CustomBase,
    "KeyboardInterrupt": KeyboardInterrupt,
    "SystemExit": SystemExit,
    "StopIteration": StopIteration,
    "StopAsyncIteration": StopAsyncIteration,
}
STOPPERS = (StopIteration, StopAsyncIteration)

#: In-process ways to run calls: (backend, extra Parallel options).
IN_PROCESS = {
    "sequential": {"backend": "sequential"},
    "threads": {"backend": "threads"},
    "threads-timeout": {"backend": "threads", "timeout": 30},
}


def raise_at(x: int, exc_type: type[BaseException], bad: int = 3) -> int:
    if x == bad:
        raise exc_type(f"raised by task input {x}")
    return x


# -- A1, A2, A3: a task's exception of any type is its outcome ----------------------------------


@pytest.mark.parametrize("way", list(IN_PROCESS))
@pytest.mark.parametrize("kind", list(TASK_EXCEPTIONS))
@pytest.mark.parametrize("mode", ["list", "generator", "generator_unordered"])
async def test_any_task_exception_with_return_exceptions_is_a_result(
    way: str, kind: str, mode: str
) -> None:
    exc_type = TASK_EXCEPTIONS[kind]
    p = Parallel(n_jobs=2, batch_size=1, return_exceptions=True, return_as=mode, **IN_PROCESS[way])  # type: ignore[call-overload]
    with anyio.fail_after(10):
        results = await collect(p, (delayed(raise_at)(i, exc_type) for i in range(8)))
    assert len(results) == 8, results
    errors = [r for r in results if isinstance(r, BaseException)]
    assert [type(e) for e in errors] == [exc_type]
    assert sorted(r for r in results if not isinstance(r, BaseException)) == [0, 1, 2, 4, 5, 6, 7]
    if mode != "generator_unordered":
        assert isinstance(results[3], exc_type)


@pytest.mark.parametrize("way", list(IN_PROCESS))
@pytest.mark.parametrize("kind", list(TASK_EXCEPTIONS))
@pytest.mark.parametrize("mode", ["list", "generator", "generator_unordered"])
async def test_any_task_exception_is_reraised_never_a_short_result(
    way: str, kind: str, mode: str
) -> None:
    """Re-raised with its own type; a StopIteration-like one as a RuntimeError naming the
    task (PEP 479: it cannot leave a coroutine or ``__anext__`` as itself)."""
    exc_type = TASK_EXCEPTIONS[kind]
    p = Parallel(n_jobs=2, batch_size=1, return_as=mode, **IN_PROCESS[way])  # type: ignore[call-overload]
    expected = RuntimeError if exc_type in STOPPERS else exc_type
    got: list[Any] = []
    with anyio.fail_after(10), pytest.raises(expected) as info:
        got = await collect(p, (delayed(raise_at)(i, exc_type) for i in range(8)))
    assert got == [], "a short result was returned instead of the task's exception"
    if exc_type in STOPPERS:
        assert "task 3 (raise_at)" in str(info.value)
        assert type(info.value.__cause__) is exc_type
    else:
        assert type(info.value) is exc_type
        assert "aioparallel: raised by task 3 (raise_at)" in info.value.__notes__


async def test_a_list_result_has_one_slot_per_call() -> None:
    """The run raises instead of returning placeholders when a backend drops results."""
    from aioparallel.run.budget import Budget
    from aioparallel.run.results import ListSink

    sink: ListSink[Any] = ListSink(Budget(None))
    sink.reserve(0, 4)
    sink.put(0, [0, 1])
    with pytest.raises(RuntimeError, match="2 of 4 results"):
        sink.result()
    sink.put(2, [2, 3])
    assert sink.result() == [0, 1, 2, 3]


# -- B8: the user's generator's cleanup is bounded ----------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("mode", ["list", "generator"])
async def test_a_hanging_generator_finally_does_not_block_cancellation(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aioparallel.run import run as _run

    monkeypatch.setattr(_run, "SOURCE_CLOSE_GRACE", 0.3, raising=False)
    never = anyio.Event()
    closing = anyio.Event()

    async def producer() -> AsyncIterator[Any]:
        try:
            i = 0
            while True:
                yield delayed(square)(i)
                i += 1
        finally:
            closing.set()
            await never.wait()

    p = Parallel(backend="threads", n_jobs=2, return_as=mode)  # type: ignore[call-overload]
    began = time.monotonic()
    with pytest.warns(RuntimeWarning, match="did not finish closing"):
        with anyio.move_on_after(0.2) as scope:
            if mode == "list":
                await p(producer())
            else:
                async with p(producer()) as stream:
                    async for _ in stream:
                        pass
    assert scope.cancelled_caught
    assert closing.is_set()
    assert time.monotonic() - began < 0.2 + 0.3 + PROMPT


# -- C11: a slow progress callback never delays the run -----------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_slow_progress_callback_does_not_slow_the_run(kind: str) -> None:
    def task(x: int) -> int:
        time.sleep(0.05)
        return x

    events: list[ProgressEvent] = []
    overlapping = threading.Lock()

    def slow_sync(event: ProgressEvent) -> None:
        assert overlapping.acquire(blocking=False), "two callbacks ran at once"
        try:
            time.sleep(0.3)
            events.append(event)
        finally:
            overlapping.release()

    async def slow_async(event: ProgressEvent) -> None:
        await anyio.sleep(0.3)
        events.append(event)

    async def timed(progress: Any) -> float:
        p = Parallel(n_jobs=2, backend="threads", batch_size=1, progress=progress)
        began = time.monotonic()
        assert await p(delayed(task)(i) for i in range(20)) == list(range(20))
        return time.monotonic() - began

    baseline = await timed(False)
    elapsed = await timed(slow_sync if kind == "sync" else slow_async)
    # unfixed: 20 x 0.3 s of callbacks; fixed: the run plus about one callback
    assert elapsed < 2 * baseline + 4 * 0.3, (baseline, elapsed)
    assert events and events[-1].done == 20 and events[-1].total == 20
    done = [e.done for e in events]
    assert done == sorted(done)


# -- C13: a cancelled thread batch starts no new call -------------------------------------------


async def test_cancelled_thread_batch_starts_no_new_call() -> None:
    tracker, gate = Tracker(), Gate()
    p = Parallel(n_jobs=2, backend="threads", batch_size=50)
    try:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(p, tracker.calls(100, partial(wait_gate, gate)))
                assert await anyio.to_thread.run_sync(gate.wait_for_waiting, 2)
                scope.cancel()
    finally:
        gate.open()
    assert await anyio.to_thread.run_sync(tracker.wait_idle)
    assert tracker.started == 2, f"{tracker.started - 2} calls started after the cancellation"


# -- D17: numeric parameters never overflow -----------------------------------------------------


@pytest.mark.parametrize(
    "pre_dispatch",
    ["1" + "0" * 400 + "*n_jobs", "n_jobs*" + "9" * 400, "0." + "0" * 400 + "1*n_jobs"],
)
def test_huge_pre_dispatch_is_a_valid_bound(pre_dispatch: str) -> None:
    from aioparallel._parsing import parse_pre_dispatch

    bound = parse_pre_dispatch(pre_dispatch, 2)
    assert bound is not None and bound >= 1
    Parallel(n_jobs=2, pre_dispatch=pre_dispatch)


@pytest.mark.parametrize(
    "pre_dispatch", ["1" * 5000, "1" * 5000 + "*n_jobs", "²", "²*n_jobs", "1e3*n_jobs", "nan"]
)
def test_unusable_pre_dispatch_is_a_value_error(pre_dispatch: str) -> None:
    with pytest.raises(ValueError, match="invalid pre_dispatch"):
        Parallel(n_jobs=2, pre_dispatch=pre_dispatch)


@pytest.mark.parametrize("max_nbytes", ["9" * 400 + "G", "1" * 400, "1" * 5000 + "K", "²M"])
def test_max_nbytes_never_overflows(max_nbytes: str) -> None:
    from aioparallel._parsing import parse_max_nbytes

    try:
        value = parse_max_nbytes(max_nbytes)
    except ValueError as exc:
        assert "invalid max_nbytes" in str(exc)
    else:
        assert value is not None and value > 10**300


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_timeout_is_a_value_error(timeout: float) -> None:
    with pytest.raises(ValueError, match="invalid timeout"):
        Parallel(timeout=timeout)


# -- E20: honoured, or a ValueError that says why -----------------------------------------------


def pause(x: int) -> int:
    time.sleep(0.001)
    return x


def where(x: Any) -> tuple[int, int]:
    return os.getpid(), threading.get_ident()


@pytest.mark.parametrize(
    "options", [{"backend": "sequential"}, {"n_jobs": 1}, {"n_jobs": 1, "backend": "processes"}]
)
async def test_sequential_with_a_timeout_runs_on_one_thread_worker(
    options: dict[str, Any],
) -> None:
    gate = Gate()
    unpicklable = threading.Lock()  # no pickling on this path
    with pytest.raises(TypeError):
        pickle.dumps(unpicklable)
    p = Parallel(timeout=0.2, batch_size=1, **options)
    try:
        places = await p(delayed(where)(unpicklable) for _ in range(3))
        assert {pid for pid, _ in places} == {os.getpid()}
        assert threading.get_ident() not in {ident for _, ident in places}
        began = time.monotonic()
        with pytest.raises(TimeoutError, match=r"task 1 \(wait_gate\)"):
            await p([delayed(identity)(0), delayed(wait_gate)(gate, 1), delayed(identity)(2)])
        assert time.monotonic() - began < 0.2 + PROMPT
    finally:
        gate.open()


async def test_sequential_with_a_timeout_runs_one_call_at_a_time() -> None:
    tracker = Tracker()
    p = Parallel(backend="sequential", timeout=5)
    assert await p(tracker.calls(20, pause)) == list(range(20))
    assert tracker.peak_running == 1


@pytest.mark.parametrize("backend", ["processes", "loky", "multiprocessing", "dask"])
def test_require_sharedmem_with_an_explicit_process_backend_is_a_value_error(
    backend: str,
) -> None:
    with pytest.raises(ValueError, match=rf"require='sharedmem'.*{backend!r}"):
        Parallel(n_jobs=2, backend=backend, require="sharedmem")


def test_require_sharedmem_picks_threads_over_a_configured_backend() -> None:
    """As joblib: a backend from parallel_config gives way to the constraint."""
    with parallel_config(backend="processes"):
        assert Parallel(n_jobs=2, require="sharedmem")._backend_name == "threads"
    assert Parallel(n_jobs=2, backend="threads", require="sharedmem")._backend_name == "threads"


def test_n_jobs_that_contradicts_a_backend_object_is_a_value_error() -> None:
    backend = ThreadBackend(2)
    with pytest.raises(ValueError, match=r"n_jobs=3.*2 workers"):
        Parallel(n_jobs=3, backend=backend)
    assert Parallel(n_jobs=2, backend=backend).n_jobs == 2
    assert Parallel(backend=backend).n_jobs == 2


@pytest.mark.parametrize(
    ("option", "backend"),
    [
        ({"idle_timeout": 5}, "threads"),
        ({"idle_timeout": 5}, "sequential"),
        ({"idle_timeout": 5}, "dask"),
        ({"address": "tcp://127.0.0.1:1"}, "threads"),
        ({"address": "tcp://127.0.0.1:1"}, "processes"),
    ],
)
def test_a_backend_option_the_backend_does_not_take_is_a_value_error(
    option: dict[str, Any], backend: str
) -> None:
    (name,) = option
    with parallel_config(**option), pytest.raises(ValueError, match=rf"{name}.*'{backend}'"):
        Parallel(n_jobs=2, backend=backend)


def test_backend_options_of_the_named_backend_are_accepted() -> None:
    with parallel_config(backend="processes", idle_timeout=5):
        Parallel(n_jobs=2)
        Parallel(n_jobs=1)  # the debugging path of the same backend


# -- E21 and F: leaving an async for ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["generator", "generator_unordered"])
async def test_an_unclosed_running_stream_warns_when_collected(mode: str) -> None:
    closed = anyio.Event()
    stream = Parallel(n_jobs=2, backend="threads", return_as=mode)(endless_calls(closed))  # type: ignore[call-overload]
    async for _ in stream:
        break
    with pytest.warns(ResourceWarning, match="not closed while its run was still going"):
        del stream
        gc.collect()
    with anyio.fail_after(PROMPT):
        await closed.wait()  # it still stops the run


async def test_a_finished_or_closed_stream_does_not_warn() -> None:
    stream = Parallel(n_jobs=2, backend="threads", return_as="generator")(
        delayed(square)(i) for i in range(5)
    )
    assert [r async for r in stream] == [0, 1, 4, 9, 16]
    del stream
    closed = anyio.Event()
    stream2 = Parallel(n_jobs=2, backend="threads", return_as="generator")(endless_calls(closed))
    async with stream2:
        async for _ in stream2:
            break
    assert closed.is_set()
    del stream2
    gc.collect()  # filterwarnings=error: a ResourceWarning here would fail the test


async def test_aclosing_stops_the_run_at_break() -> None:
    closed = anyio.Event()
    stream = Parallel(n_jobs=2, backend="threads", return_as="generator")(endless_calls(closed))
    async with aclosing(stream) as results:
        async for _ in results:
            break
    assert closed.is_set()


@pytest.mark.parametrize("backend", ["sequential", "threads", "processes"])
async def test_the_failing_task_is_named_by_its_own_index_inside_a_batch(backend: str) -> None:
    """A batch (tasks 4-7) that stops at its third call names task 6, not task 4."""
    p = Parallel(n_jobs=2, batch_size=4, backend=backend)
    with anyio.fail_after(30), pytest.raises(RuntimeError, match=r"^task 6 \(raise_at\)"):
        await p(delayed(raise_at)(i, StopIteration, 6) for i in range(8))


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("batch_size", ["auto", 1, 4])
async def test_a_generator_taken_one_call_ahead_keeps_every_call_in_order(
    kind: str, batch_size: Any
) -> None:
    """An unsized input's takes ask for one call more than their batch (to find its end);
    the call held back starts the next batch, or joins an async batch as it grows to its
    floor: whatever the lengths and sizes, every call runs once, in its own slot. (A fresh
    function per input: auto batching learns per function, and a learned size skips the
    async floor.)"""
    for n in (100, 1, 2, 3, 4, 5, 8, 9, 17, 33, 100):

        def triple(x: int) -> int:
            return 3 * x

        async def triple_async(x: int) -> int:
            return 3 * x

        func: Any = triple_async if kind == "async" else triple
        results = await Parallel(n_jobs=2, backend="threads", batch_size=batch_size)(
            delayed(func)(x) for x in range(n)
        )
        assert results == [3 * x for x in range(n)], (n, results)
