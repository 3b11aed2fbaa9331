"""Auto batching on small runs: what the web backend pattern (one small map per request)
needs (issue 18, W9).

Each batch is a round trip to a worker; for a 20-call run of 1 ms calls that round trip is
a large share of the work, so the number of batches is the run's overhead. A backend that
records the batches it is given (the documented custom backend, run on the loop) shows
how the input is cut.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from aioparallel import Parallel, delayed
from aioparallel.run import batching
from aioparallel.run.batching import AutoBatcher
from tests.helpers import BatchSizes
from tests.test_custom_backend import InlineBackend

pytestmark = pytest.mark.anyio


class RecordingBackend(BatchSizes, InlineBackend):  # type: ignore[misc,valid-type]
    """The documented inline backend, recording each batch's size."""

    def __init__(self, n_workers: int = 2) -> None:
        super().__init__(n_workers)


def fresh_function() -> Any:
    """A function no run has learned about yet (each test's parameters run in one process)."""

    def one_ms_task(x: int) -> int:
        time.sleep(0.001)
        return x

    return one_ms_task


async def test_a_second_run_of_a_function_starts_with_what_the_first_learned() -> None:
    backend, task = RecordingBackend(), fresh_function()
    first = await Parallel(backend=backend)(delayed(task)(i) for i in range(20))
    first_sizes, backend.sizes = backend.sizes, []
    second = await Parallel(backend=backend)(delayed(task)(i) for i in range(20))
    assert first == second == list(range(20))
    assert first_sizes[0] == 1  # nothing known yet: one call, then grow
    # (its last take, which ends the input, is shared out as a sized input's tail would be)
    assert len(backend.sizes) <= 5 < len(first_sizes), (first_sizes, backend.sizes)
    # a run's first batch is still one call: a first task that waits for the others (or
    # crashes, or is slow) is never batched with them
    assert backend.sizes[0] == 1
    # another function learns on its own
    backend.sizes = []
    await Parallel(backend=backend)(delayed(fresh_function())(i) for i in range(20))
    assert backend.sizes[0] == 1


def test_the_tail_is_not_cut_into_batches_too_small_to_pay_their_way() -> None:
    """Near the end the input is shared between the workers, but not in batches of under
    ~10 ms of work (MIN_TAIL_SECONDS): each costs a round trip and the parent's CPU; nor so
    that a stub of a batch is left behind."""
    batcher = AutoBatcher()
    batcher.size = 16
    batcher.record(16, 0.032)  # 2 ms per call: the size stays
    assert batcher.next_size(100, 2) == 16  # not yet the tail
    assert batcher.next_size(12, 2) == 5  # a quarter would be 3 calls: 6 ms of work
    assert batcher.next_size(7, 2) == 4  # not 5, then a stub of 2: halves
    assert batcher.next_size(4, 2) == 4  # halves would be stubs: all at once
    assert batcher.next_size(2, 2) == 2  # what is left
    slow = AutoBatcher()
    slow.record(1, 2.0)  # 2 s per call: the tail is shared call by call
    assert slow.next_size(4, 2) == 1


async def test_a_generator_as_long_as_its_functions_last_run_is_cut_as_a_list_would_be() -> None:
    """A generator's length is unknown, but the function's last run made 20 calls: the run
    cuts it as it would a list of 20, its tail shared between the workers, not at the batch
    size learned on longer runs (the last request of a web backend's burst went in batches
    of 1, 16 and 3, the 16 on one worker while the other idled)."""
    task = fresh_function()
    batching._learned[task] = (16, 0.002, batching.MAX_BATCH_CALLS)  # as earlier runs left
    batching.note_length(task, 20)
    backend = RecordingBackend()
    results = await Parallel(backend=backend)(delayed(task)(i) for i in range(20))
    generator_sizes, backend.sizes = backend.sizes, []
    assert results == list(range(20))
    assert max(generator_sizes) <= 10, generator_sizes
    batching._learned[task] = (16, 0.002, batching.MAX_BATCH_CALLS)
    await Parallel(backend=backend)([delayed(task)(i) for i in range(20)])
    assert max(backend.sizes) <= 10, backend.sizes  # a list of 20, for comparison


async def test_the_default_pre_dispatch_has_room_for_the_tail_as_it_is_cut() -> None:
    """The default pre_dispatch bound is two batches per worker of the size cut, not of the
    size learned: a function learned at 2 calls a batch, whose tail is shared out in larger
    batches, went in batches of 1 while a batch of 7 filled the bound of 8 (a web backend's
    first request of a burst: 1, 7, 1, 1, 1, 1, 1, 1, 7), a round trip per call.

    The calls take microseconds, so that the tail is cut the same way on a loaded machine:
    any call under 0.5 ms leaves the 19 calls after the first in one batch; up to ~1 ms, in
    two (a 1 ms sleep, measured at 2-3 ms on a busy CI machine, made five)."""

    def quick_task(x: int) -> int:
        return x

    batching._learned[quick_task] = (2, 0.001, batching.MAX_BATCH_CALLS)
    backend = RecordingBackend()
    calls = [delayed(quick_task)(i) for i in range(20)]
    assert await Parallel(backend=backend)(calls) == list(range(20))
    assert backend.sizes[0] == 1 and 1 not in backend.sizes[1:], backend.sizes
    assert len(backend.sizes) <= 3, backend.sizes


def test_what_earlier_runs_learned_does_not_keep_a_short_tail_on_one_worker() -> None:
    """Earlier runs found the function fast; these calls may be slow: until this run has
    measured one, its tail still gives every worker a share (one call each for 3 calls on 4
    workers; 7 calls go 2, 2, 2, 1: as soon done as one by one, if the calls are alike)."""
    learned = AutoBatcher()
    learned.size, learned.call_seconds = 64, 1e-5  # as ``start_from`` sets them
    assert learned.next_size(3, 4) == 1
    assert learned.next_size(7, 4) == 2
    learned.record(1, 1e-5)  # measured in this run: the tail may be kept in larger batches
    assert learned.next_size(7, 4) == 7


def test_what_a_function_learned_is_not_its_last_batch_alone() -> None:
    """The time per call kept for a function's next runs (on which a crowded pool sends a
    small run whole) is its run's over all batches, averaged with earlier runs': not the last
    batch's, a one-call tail whose round trip on a loaded machine took 3 ms (CI cut a
    20-call run of a fast function in 15, 3 and 2 on it), nor one run's hiccup alone."""
    task = fresh_function()

    def next_run() -> AutoBatcher:
        batcher = AutoBatcher()
        batcher.start_from(task)
        return batcher

    run = next_run()
    run.record(100, 0.005)  # 50 us per call
    run.record(1, 0.003)  # a tail of one call, its round trip slow
    run.remember(task)
    hiccup = next_run()
    assert hiccup.crowded_size(20) == 20
    hiccup.record(20, 0.06)  # 3 ms per call, this run only
    hiccup.remember(task)
    assert next_run().crowded_size(20) == 20  # (3 + 0.08) / 2 ms per call: 40 ms fits 25


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


async def test_fewer_calls_than_workers_run_one_per_worker_after_learning(
    anyio_backend: str,
) -> None:
    """4 calls on ``n_jobs=4`` run at once on 4 workers, even after earlier runs taught auto
    batching that the function is fast."""
    await Parallel(n_jobs=4)(delayed(pid_after)(0) for _ in range(3000))
    assert batching._learned[pid_after][0] > 4  # what the next run starts from
    pids = await Parallel(n_jobs=4)(delayed(pid_after)(0.3) for _ in range(4))
    assert len(set(pids)) == 4, pids


def test_a_backend_asks_for_longer_batches_with_batch_seconds() -> None:
    """Calls of 25 ms: one per batch by default (past 20 ms), ~0.2 s of them on a backend
    that asks for it (dask: each batch is a task for its scheduler)."""
    default, cluster = AutoBatcher(), AutoBatcher(0.2)
    for batcher in (default, cluster):
        for _ in range(4):
            batcher.record(batcher.size, 0.025 * batcher.size)
    assert default.size == 1
    assert cluster.size == 8  # 1, 2, 4, 8 calls: 0.2 s
    cluster.record(8, 8 * 0.2)  # 1.6 s: past the 1 s top of a 0.2 s target, halved
    assert cluster.size == 4


async def test_the_run_takes_the_backends_batch_seconds() -> None:
    backend, task = RecordingBackend(), fresh_function()
    backend.batch_seconds = 0.5  # 1 ms calls: up to ~500 a batch
    await Parallel(backend=backend)(delayed(task)(i) for i in range(300))
    assert max(backend.sizes) >= 32, backend.sizes  # 20 ms batches stop at 16 here
