"""The backend contract (docs/backends.md) that every backend passes, over the anyio loop matrix.

``helpers.Tracker`` counts what the producer took and what the tasks did through a log
file, so the backend-parametrized tests hold for process workers too (add "processes" to
BACKENDS). Tasks that must block wait on a ``threading.Event`` (``helpers.Gate``) that the
test opens in a ``finally``, so worker threads end before the leak check; the sequential
backend runs calls on the event loop thread, where nothing may block, so those tests run on
the thread backend only.
"""

from __future__ import annotations

import re
import threading
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

import anyio
import pytest

from aioparallel import Parallel, ProgressEvent, delayed
from tests.conftest import choice_fixture
from tests.helpers import (
    PROMPT,
    Gate,
    Tracker,
    add,
    async_calls,
    async_items,
    collect,
    endless_calls,
    fail_at,
    identity,
    reverse_chain,
    square,
    wait_event,
    wait_gate,
)

pytestmark = pytest.mark.anyio

#: Every backend that must pass the contract.
BACKENDS = ["sequential", "threads", "processes"]


backend = choice_fixture(BACKENDS)  # and ``mode``: each return_as, from conftest.py


def expect(mode: str, results: list[Any], expected: list[Any]) -> None:
    if mode == "generator_unordered":
        assert sorted(results, key=repr) == sorted(expected, key=repr)
    else:
        assert results == expected


def failing_line_visible(exc: BaseException, func_name: str) -> bool:
    """The task's failing frame is in the traceback, or in the worker's chained as the cause."""
    if any(frame.name == func_name for frame in traceback.extract_tb(exc.__traceback__)):
        return True
    cause = exc.__cause__
    return cause is not None and f"in {func_name}" in str(cause)


# -- §1 results and inputs ----------------------------------------------------------------------


def _sync_gen(n: int) -> Iterator[Any]:
    return (delayed(square)(i) for i in range(n))


INPUTS = {
    "list": lambda n: [delayed(square)(i) for i in range(n)],
    "generator": _sync_gen,
    "async_generator": lambda n: async_calls(square, range(n)),
    "joblib_tuples": lambda n: [(square, (i,), {}) for i in range(n)],
    "range_map": lambda n: map(delayed(square), range(n)),
}


@pytest.mark.parametrize("kind", list(INPUTS))
async def test_results_in_input_order(backend: str, mode: str, kind: str) -> None:
    p = Parallel(n_jobs=2, backend=backend, return_as=mode)  # type: ignore[call-overload]
    results = await collect(p, INPUTS[kind](50))
    expect(mode, results, [i * i for i in range(50)])


async def test_empty_input(backend: str, mode: str) -> None:
    p = Parallel(n_jobs=2, backend=backend, return_as=mode)  # type: ignore[call-overload]
    assert await collect(p, []) == []
    assert await collect(p, async_calls(square, [])) == []


async def test_keyword_arguments(backend: str) -> None:
    calls = [delayed(add)(i, y=10 * i) for i in range(5)]
    assert await Parallel(n_jobs=2, backend=backend)(calls) == [11 * i for i in range(5)]


@pytest.mark.parametrize("mode", ["list", "generator"])
async def test_input_order_under_reverse_completion(mode: str) -> None:
    """Tasks finish last-to-first; the ordered modes still give input order."""
    events = [threading.Event() for _ in range(4)]
    p = Parallel(n_jobs=4, backend="threads", batch_size=1, return_as=mode)  # type: ignore[call-overload]
    results = await collect(p, (delayed(reverse_chain)(events, i) for i in range(4)))
    assert results == [0, 1, 2, 3]


async def test_unordered_streams_in_completion_order() -> None:
    """Task i returns only once the consumer has read task i + 1's result."""
    received = [threading.Event() for _ in range(4)]
    calls = [delayed(wait_event)(received[i + 1] if i < 3 else None, i) for i in range(4)]
    p = Parallel(n_jobs=4, backend="threads", batch_size=1, return_as="generator_unordered")
    results = []
    async with p(calls) as stream:
        async for value in stream:
            results.append(value)
            received[value].set()
    assert results == [3, 2, 1, 0]


# -- §3 laziness and backpressure ---------------------------------------------------------------


async def test_input_taken_at_most_pre_dispatch_ahead(backend: str, mode: str) -> None:
    tracker = Tracker()
    p = Parallel(n_jobs=2, backend=backend, pre_dispatch=3, batch_size=1, return_as=mode)  # type: ignore[call-overload]
    results = await collect(p, tracker.calls(60))
    expect(mode, results, list(range(60)))
    assert 1 <= tracker.max_ahead <= 3


async def test_explicit_default_pre_dispatch_is_a_hard_bound(backend: str) -> None:
    """pre_dispatch="2*n_jobs" given explicitly bounds calls even with auto batching; only
    the untouched default widens with the batch size."""
    tracker = Tracker()
    p = Parallel(n_jobs=2, backend=backend, pre_dispatch="2*n_jobs")
    assert await p(tracker.calls(2000)) == list(range(2000))
    assert 1 <= tracker.max_ahead <= 4


async def test_pre_dispatch_bounds_dispatch_while_tasks_block() -> None:
    """Four workers, pre_dispatch=2: with two calls blocked, no third is taken from the input."""
    tracker, gate = Tracker(), Gate()
    p = Parallel(n_jobs=4, backend="threads", pre_dispatch=2, batch_size=1)
    results: list[Any] = []

    async def run() -> None:
        results.extend(await p(tracker.calls(20, partial(wait_gate, gate))))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            assert await anyio.to_thread.run_sync(gate.wait_for_waiting, 2)
            await anyio.wait_all_tasks_blocked()
            assert (tracker.taken, tracker.started) == (2, 2)
            gate.open()
    finally:
        gate.open()
    assert results == list(range(20))
    assert tracker.max_ahead <= 2


async def test_unread_results_count_against_the_bound(backend: str) -> None:
    """return_as='generator' with a slow consumer: the producer stays pre_dispatch ahead."""
    read = 0
    ahead: list[int] = []

    def producer() -> Iterator[Any]:
        for i in range(12):
            ahead.append(i + 1 - read)  # items taken (with this one) minus results read
            yield delayed(square)(i)

    p = Parallel(n_jobs=2, backend=backend, pre_dispatch=4, batch_size=1, return_as="generator")
    stream = p(producer())
    async with stream:
        async for value in stream:
            assert value == read * read
            read += 1
            if read <= 3:  # let the run race ahead as far as it may
                await anyio.wait_all_tasks_blocked()
    assert read == 12
    assert max(ahead) <= 4
    if backend == "sequential":  # deterministic: the bound is reached, not just respected
        assert max(ahead) == 4


# -- §6 errors ----------------------------------------------------------------------------------


async def test_task_error_reraised_with_type_and_task_note(backend: str, mode: str) -> None:
    p = Parallel(n_jobs=2, backend=backend, return_as=mode)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="task input 3 is bad") as info:
        await collect(p, (delayed(fail_at)(i, bad=(3,)) for i in range(10)))
    assert "aioparallel: raised by task 3 (fail_at)" in getattr(info.value, "__notes__", [])
    assert failing_line_visible(info.value, "fail_at")


async def test_first_error_stops_dispatch(backend: str, mode: str) -> None:
    tracker = Tracker()
    p = Parallel(n_jobs=2, backend=backend, return_as=mode)  # type: ignore[call-overload]
    with anyio.fail_after(10), pytest.raises(ValueError, match="task input 5 is bad"):
        await collect(p, tracker.calls(None, partial(fail_at, bad=(5,))))  # endless input
    if backend != "processes":  # a killed worker never logs its task's end
        assert await anyio.to_thread.run_sync(tracker.wait_idle)
    taken = tracker.taken
    await anyio.wait_all_tasks_blocked()
    assert tracker.taken == taken, "the producer was consumed after the run failed"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_producer_error_reraised_as_is(backend: str, mode: str, kind: str) -> None:
    error = RuntimeError("the producer broke")

    def sync_producer() -> Iterator[Any]:
        yield delayed(square)(1)
        yield delayed(square)(2)
        raise error

    async def async_producer() -> AsyncIterator[Any]:
        yield delayed(square)(1)
        yield delayed(square)(2)
        raise error

    p = Parallel(n_jobs=2, backend=backend, return_as=mode)  # type: ignore[call-overload]
    with pytest.raises(RuntimeError) as info:
        await collect(p, sync_producer() if kind == "sync" else async_producer())
    assert info.value is error


@pytest.mark.parametrize("bad_item", [42, "f", (square, 1, {}), (square, (1,))])
async def test_non_delayed_item_is_a_type_error_naming_its_index(
    backend: str, mode: str, bad_item: Any
) -> None:
    p = Parallel(n_jobs=2, backend=backend, return_as=mode)  # type: ignore[call-overload]
    calls = [delayed(square)(1), delayed(square)(2), bad_item, delayed(square)(3)]
    with pytest.raises(TypeError, match=r"item 2\b"):
        await collect(p, calls)
    with pytest.raises(TypeError, match=r"item 2\b"):
        await collect(p, async_items(calls))


async def test_return_exceptions_puts_errors_in_their_slots(backend: str, mode: str) -> None:
    p = Parallel(n_jobs=2, backend=backend, return_as=mode, return_exceptions=True)  # type: ignore[call-overload]
    results = await collect(p, (delayed(fail_at)(i, bad=(1, 4)) for i in range(6)))
    assert len(results) == 6
    if mode == "generator_unordered":
        errors = [r for r in results if isinstance(r, BaseException)]
        assert sorted(r for r in results if not isinstance(r, BaseException)) == [0, 4, 9, 25]
    else:
        errors = [results[1], results[4]]
        assert [results[i] for i in (0, 2, 3, 5)] == [0, 4, 9, 25]
    assert all(type(e) is ValueError for e in errors), errors
    assert sorted(str(e) for e in errors) == ["task input 1 is bad", "task input 4 is bad"]


async def test_a_returned_exception_is_a_value(backend: str, mode: str) -> None:
    p = Parallel(n_jobs=2, backend=backend, return_as=mode)  # type: ignore[call-overload]
    results = await collect(p, [delayed(ValueError)("returned, not raised"), delayed(square)(2)])
    assert len(results) == 2 and 4 in results
    (error,) = [r for r in results if isinstance(r, ValueError)]
    assert str(error) == "returned, not raised"


# -- §1 and §6: stopping early ------------------------------------------------------------------


@pytest.mark.parametrize("closing", ["async_with", "aclose"])
async def test_breaking_out_of_async_for_stops_the_run(backend: str, closing: str) -> None:
    """``break`` inside ``async with stream:`` (the documented form), or ``break`` and then
    ``aclose()``: either way the run stops there and the producer is not consumed further."""
    for mode in ("generator", "generator_unordered"):
        tracker = Tracker()
        p = Parallel(n_jobs=2, backend=backend, return_as=mode, pre_dispatch=2, batch_size=1)
        stream = p(tracker.calls(None))  # endless input
        seen = 0
        if closing == "async_with":
            async with stream:
                async for _ in stream:
                    seen += 1
                    if seen == 3:
                        break
        else:
            async for _ in stream:
                seen += 1
                if seen == 3:
                    break
            await stream.aclose()
        if backend != "processes":  # a killed worker never logs its task's end
            assert await anyio.to_thread.run_sync(tracker.wait_idle)
        taken = tracker.taken
        await anyio.wait_all_tasks_blocked()
        assert tracker.taken == taken, "the producer was consumed after the stream was closed"
        assert taken <= seen + 2


@pytest.mark.parametrize("mode", ["generator", "generator_unordered"])
async def test_aclose_closes_an_async_producer(backend: str, mode: str) -> None:
    closed = anyio.Event()

    p = Parallel(n_jobs=2, backend=backend, return_as=mode)  # type: ignore[call-overload]
    stream = p(endless_calls(closed))
    async for _ in stream:
        break
    await stream.aclose()
    assert closed.is_set()


async def test_a_stream_closed_before_iteration_stays_closed(backend: str) -> None:
    tracker = Tracker()
    stream = Parallel(n_jobs=2, backend=backend, return_as="generator")(tracker.calls(3))
    await stream.aclose()
    try:
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
        assert tracker.taken == 0
    finally:
        await stream.aclose()


async def test_dropping_the_iterator_stops_the_run(backend: str) -> None:
    """Breaking out without closing: dropping the iterator cancels the run, and warns."""
    closed = anyio.Event()

    with pytest.warns(ResourceWarning, match="not closed while its run was still going"):
        async for _ in Parallel(n_jobs=2, backend=backend, return_as="generator")(
            endless_calls(closed)
        ):
            break
    with anyio.fail_after(PROMPT):
        await closed.wait()


async def test_cancelling_the_caller_stops_dispatch(backend: str, mode: str) -> None:
    tracker = Tracker()
    fired: list[float] = []
    with anyio.CancelScope() as scope:

        def cancel_after_five(event: ProgressEvent) -> None:
            # a sync callback runs in a worker thread: reach the loop through anyio
            if event.done >= 5 and not fired:
                fired.append(time.monotonic())
                anyio.from_thread.run_sync(scope.cancel)

        p = Parallel(n_jobs=2, backend=backend, return_as=mode, progress=cancel_after_five)  # type: ignore[call-overload]
        await collect(p, tracker.calls(None))  # endless input
    returned = time.monotonic()
    assert scope.cancelled_caught
    assert returned - fired[0] < PROMPT
    if backend != "processes":  # a killed worker never logs its task's end
        assert await anyio.to_thread.run_sync(tracker.wait_idle)
    taken = tracker.taken
    await anyio.wait_all_tasks_blocked()
    assert tracker.taken == taken, "the producer was consumed after the cancellation"


async def test_fail_after_returns_promptly_sequential() -> None:
    tracker = Tracker()
    began = time.monotonic()
    with pytest.raises(TimeoutError), anyio.fail_after(0.1):
        await Parallel(backend="sequential")(tracker.calls(None))  # endless input
    assert time.monotonic() - began < 0.1 + PROMPT
    taken = tracker.taken
    await anyio.wait_all_tasks_blocked()
    assert tracker.taken == taken


async def test_fail_after_returns_promptly_while_threads_block(mode: str) -> None:
    tracker, gate = Tracker(), Gate()
    p = Parallel(n_jobs=2, backend="threads", batch_size=1, return_as=mode)  # type: ignore[call-overload]
    began = time.monotonic()
    try:
        with pytest.raises(TimeoutError), anyio.fail_after(0.2):
            await collect(p, tracker.calls(100, partial(wait_gate, gate)))
        assert time.monotonic() - began < 0.2 + PROMPT
        assert tracker.done == 0
    finally:
        gate.open()
    assert await anyio.to_thread.run_sync(tracker.wait_idle)
    await anyio.wait_all_tasks_blocked()
    assert tracker.started == tracker.taken == 2, "calls were dispatched after the cancellation"


async def test_move_on_after_while_awaiting_a_stream() -> None:
    gate = Gate()
    tracker = Tracker()
    stream = Parallel(n_jobs=2, backend="threads", return_as="generator", batch_size=1)(
        tracker.calls(10, partial(wait_gate, gate))
    )
    try:
        with anyio.move_on_after(0.2) as scope:
            async for _ in stream:
                pass
        assert scope.cancelled_caught
        with anyio.fail_after(PROMPT):
            await stream.aclose()
    finally:
        gate.open()
    assert await anyio.to_thread.run_sync(tracker.wait_idle)
    assert tracker.taken <= 2 + 2 * 2


# -- §1 one object, many calls ------------------------------------------------------------------


async def test_concurrent_calls_on_one_object(backend: str, mode: str) -> None:
    p = Parallel(n_jobs=2, backend=backend, return_as=mode)  # type: ignore[call-overload]
    results: dict[int, list[Any]] = {}

    async def one(k: int) -> None:
        results[k] = await collect(p, (delayed(add)(i, y=1000 * k) for i in range(20)))

    async with anyio.create_task_group() as tg:
        for k in range(4):
            tg.start_soon(one, k)
    for k in range(4):
        expect(mode, results[k], [i + 1000 * k for i in range(20)])


async def test_concurrent_calls_really_overlap() -> None:
    """A call blocked on a gate does not hold up another call on the same warm object."""
    gate = Gate()
    async with Parallel(n_jobs=2, backend="threads") as p:
        slow: list[Any] = []

        async def run_slow() -> None:
            slow.extend(await p([delayed(wait_gate)(gate, "slow")]))

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_slow)
                assert await anyio.to_thread.run_sync(gate.wait_for_waiting, 1)
                assert await p(delayed(square)(i) for i in range(5)) == [0, 1, 4, 9, 16]
                assert slow == []
                gate.open()
        finally:
            gate.open()
        assert slow == ["slow"]


async def test_async_with_keeps_the_object_usable(backend: str) -> None:
    p = Parallel(n_jobs=2, backend=backend)
    async with p as entered:
        assert entered is p
        for k in range(3):
            assert await p(delayed(add)(i, y=k) for i in range(5)) == [i + k for i in range(5)]
        with pytest.raises(RuntimeError, match="already entered"):
            async with p:
                pass
    # usable again after the block, and re-enterable
    assert await p([delayed(square)(4)]) == [16]
    async with p:
        assert await p([delayed(square)(5)]) == [25]


async def test_async_with_releases_workers_on_error(backend: str) -> None:
    p = Parallel(n_jobs=2, backend=backend)
    with pytest.raises(ValueError, match="task input 0"):
        async with p:
            await p([delayed(fail_at)(0, bad=(0,))])
    assert await p([delayed(square)(2)]) == [4]


# -- timeout (threads) --------------------------------------------------------------------------


async def test_timeout_names_the_task() -> None:
    gate = Gate()
    p = Parallel(n_jobs=2, backend="threads", timeout=0.2, batch_size=1)
    calls = [delayed(identity)(0), delayed(wait_gate)(gate, 1), delayed(identity)(2)]
    began = time.monotonic()
    try:
        with pytest.raises(TimeoutError, match=r"task 1 \(wait_gate\)") as info:
            await p(calls)
        assert time.monotonic() - began < 0.2 + PROMPT
        assert "aioparallel: raised by task 1 (wait_gate)" in info.value.__notes__
    finally:
        gate.open()


async def test_timeout_with_return_exceptions() -> None:
    gate = Gate()
    p = Parallel(n_jobs=2, backend="threads", timeout=0.2, batch_size=1, return_exceptions=True)
    calls = [delayed(identity)(0), delayed(wait_gate)(gate, 1), delayed(identity)(2)]
    try:
        results = await p(calls)
    finally:
        gate.open()
    assert results[0] == 0 and results[2] == 2
    assert isinstance(results[1], TimeoutError)
    assert "task 1" in str(results[1])


async def test_timeout_does_not_count_time_queued() -> None:
    """A call queued behind busy workers (concurrent calls on a warm Parallel) gets its full
    timeout once it starts: waiting for a thread is not part of it."""
    from aioparallel.backends.base import Batch, RunOptions
    from aioparallel.backends.threads import ThreadBackend

    gate = Gate()
    queued_result: list[Any] = []
    queued_done = anyio.Event()
    try:
        async with ThreadBackend(2) as threads:
            untimed = threads.open_run(RunOptions(timeout=None))
            timed = threads.open_run(RunOptions(timeout=0.1))
            async with untimed as run_untimed, timed as run_timed:

                async def queued() -> None:
                    queued_result.extend(await run_timed(Batch(2, [delayed(identity)(2)])))
                    queued_done.set()

                async with anyio.create_task_group() as tg:
                    for i in range(2):  # occupy both workers
                        tg.start_soon(run_untimed, Batch(i, [delayed(wait_gate)(gate, i)]))
                    assert await anyio.to_thread.run_sync(gate.wait_for_waiting, 2)
                    tg.start_soon(queued)
                    with anyio.move_on_after(0.5):  # well past the queued call's timeout
                        await queued_done.wait()
                    gate.open()
    finally:
        gate.open()
    assert queued_result == [2]


# -- §5 progress --------------------------------------------------------------------------------

_TIME = r"(?: [ \d]{2}\d\.\ds|[ \d]\d\.\dmin)"  # joblib's short_format_time
USING = r"^\[Parallel\(n_jobs=(?P<jobs>\d+)\)\]: Using backend \w+ with \d+ concurrent workers\.$"
TASKS = rf"^\[Parallel\(n_jobs=\d+\)\]: Done (?P<done>[ \d]{{2}}\d) tasks      \| elapsed: {_TIME}$"
OUT_OF = (
    rf"^\[Parallel\(n_jobs=\d+\)\]: Done (?P<done>[ \d]{{2}}\d) out of (?P<total>[ \d]{{2}}\d) "
    rf"\| elapsed: {_TIME} remaining: {_TIME}$"
)
FINISHED = (
    rf"^\[Parallel\(n_jobs=\d+\)\]: Done (?P<done>[ \d]{{2}}\d) out of (?P=done) "
    rf"\| elapsed: {_TIME} finished$"
)


def test_message_patterns_match_the_spec_example() -> None:
    assert re.match(
        OUT_OF, "[Parallel(n_jobs=2)]: Done   3 out of  10 | elapsed:    0.2s remaining:    0.5s"
    )
    assert re.match(
        FINISHED, "[Parallel(n_jobs=2)]: Done  10 out of  10 | elapsed:  1.5min finished"
    )
    assert re.match(TASKS, "[Parallel(n_jobs=2)]: Done 100 tasks      | elapsed:  123.4s")


def exhaustion_gated(n: int) -> Iterator[Any]:
    """n calls that may finish only once the input is exhausted: every completion is reported
    after dispatch is done, which makes the verbose messages deterministic."""
    exhausted = threading.Event()
    for i in range(n):
        yield delayed(wait_event)(exhausted, i)
    exhausted.set()


async def test_verbose_zero_prints_nothing(
    backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await Parallel(n_jobs=2, backend=backend)(delayed(square)(i) for i in range(10))
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("verbose", [10, 50])
async def test_verbose_after_dispatch_reports_remaining(
    verbose: int, capsys: pytest.CaptureFixture[str]
) -> None:
    p = Parallel(n_jobs=8, backend="threads", batch_size=1, verbose=verbose)
    assert await p(exhaustion_gated(6)) == list(range(6))
    out, err = capsys.readouterr()
    shown, silent = (err, out) if verbose < 50 else (out, err)
    assert silent == ""
    lines = shown.splitlines()
    assert re.match(USING, lines[0]) and "n_jobs=8" in lines[0], lines
    # joblib's rule once dispatch is done: frequency = total // verbose + 1 = 1, so every
    # completion but the second-to-last is reported, then the `finished` line
    reported = [re.match(OUT_OF, line) for line in lines[1:-1]]
    assert all(reported), lines
    assert [(int(m["done"]), int(m["total"])) for m in reported if m] == [
        (1, 6),
        (2, 6),
        (3, 6),
        (4, 6),
    ]
    finished = re.match(FINISHED, lines[-1])
    assert finished and int(finished["done"]) == 6, lines


async def test_verbose_while_dispatching_follows_the_sqrt_filter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    p = Parallel(backend="sequential", batch_size=1, verbose=10)
    assert await p(delayed(square)(i) for i in range(5)) == [0, 1, 4, 9, 16]
    lines = capsys.readouterr().err.splitlines()
    assert re.match(USING, lines[0]), lines
    # completions while the input is still being consumed, reported at dispatched batches
    # 1 and 4 (joblib's _verbosity_filter at verbose=10)
    tasks = [re.match(TASKS, line) for line in lines[1:3]]
    assert [int(m["done"]) for m in tasks if m] == [1, 4], lines


@pytest.mark.parametrize("kind", ["list", "generator"])
async def test_verbose_last_line_is_finished_sequential(
    kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = INPUTS[kind](5)
    await Parallel(backend="sequential", batch_size=1, verbose=10)(calls)
    lines = capsys.readouterr().err.splitlines()
    assert re.match(FINISHED, lines[-1]), lines


def check_events(events: list[ProgressEvent], n: int) -> None:
    assert events, "no progress event"
    done = [e.done for e in events]
    # done increases; the last event may repeat it to announce the total, once the end of
    # the input is found after the last completion
    assert done == sorted(done) and len(done) - len(set(done)) <= 1, f"done must increase: {done}"
    if len(done) > 1 and done[-1] == done[-2]:
        assert events[-2].total is None and events[-1].total == n
    assert done[0] >= 1 and done[-1] == n
    assert events[-1].total == n
    assert all(e.total in (None, n) for e in events)
    elapsed = [e.elapsed for e in events]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_progress_callback(backend: str, kind: str) -> None:
    events: list[ProgressEvent] = []

    async def async_callback(event: ProgressEvent) -> None:
        events.append(event)
        await anyio.lowlevel.checkpoint()

    callback = events.append if kind == "sync" else async_callback
    p = Parallel(n_jobs=2, backend=backend, progress=callback)
    assert await p([delayed(square)(i) for i in range(20)]) == [i * i for i in range(20)]
    check_events(events, 20)
    assert all(e.total == 20 for e in events)  # a sized input's total is known from the start


async def test_progress_callback_learns_the_total_of_a_generator() -> None:
    events: list[ProgressEvent] = []
    p = Parallel(n_jobs=8, backend="threads", batch_size=1, progress=events.append)
    await p(exhaustion_gated(6))
    check_events(events, 6)


async def test_slow_progress_callback_does_not_delay_dispatch(backend: str) -> None:
    """An async callback blocked on its first event: every task still runs meanwhile."""
    tracker = Tracker()
    release = anyio.Event()
    events: list[ProgressEvent] = []

    async def blocked_callback(event: ProgressEvent) -> None:
        events.append(event)
        await release.wait()

    p = Parallel(n_jobs=2, backend=backend, batch_size=1, progress=blocked_callback)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(p, tracker.calls(30))
            assert await anyio.to_thread.run_sync(tracker.wait_until, lambda t: t.done == 30)
            release.set()
    finally:
        release.set()
    check_events(events, 30)


async def test_async_progress_callbacks_are_serialized(backend: str) -> None:
    """One callback at a time, in order, and the last one completes before the run returns."""
    tracker = Tracker()
    release = anyio.Event()
    running = 0
    peak = 0
    finished: list[int] = []

    async def callback(event: ProgressEvent) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await release.wait()
            finished.append(event.done)
        finally:
            running -= 1

    p = Parallel(n_jobs=2, backend=backend, batch_size=1, progress=callback)
    returned = anyio.Event()

    async def run() -> None:
        await p(tracker.calls(10))
        returned.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            assert await anyio.to_thread.run_sync(tracker.wait_until, lambda t: t.done == 10)
            await anyio.wait_all_tasks_blocked()  # every result is in; reporting is blocked
            assert peak == 1, "the callback runs concurrently with itself"
            assert not returned.is_set()
            release.set()
    finally:
        release.set()
    assert finished == sorted(finished) and finished[-1] == 10, finished


async def test_progress_true_draws_a_tqdm_bar(
    backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    p = Parallel(n_jobs=2, backend=backend, progress=True)
    assert await p([delayed(square)(i) for i in range(10)]) == [i * i for i in range(10)]
    out, err = capsys.readouterr()
    assert out == ""
    assert "100%" in err and "10/10" in err, err
