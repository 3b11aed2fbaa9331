"""The event loop keeps turning while a run receives a large result or starts with a huge
``n_jobs``: work proportional to a result's object count or to ``n_jobs`` stays off it."""

from __future__ import annotations

import functools
import gc
import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from aioparallel import Parallel, delayed
from aioparallel.backends.unpickling import loads_yielding
from benchmarks.probes import Heartbeat
from tests.helpers import MAX_LAG_MS, TASK_WAIT, best_of, square

#: Objects in the large result: about 16 MB pickled, 0.25-0.5 s in one ``pickle.loads``.
MANY = 1_000_000


def many_small_objects(n: int) -> list[tuple[int, str]]:
    """A large result made of many small objects: its unpickling is object creation."""
    return [(i, str(i)) for i in range(n)]


@pytest.mark.asyncio
async def test_a_result_of_many_small_objects_does_not_stall_the_loop() -> None:
    async with Parallel(n_jobs=2, backend="processes") as parallel:
        assert await parallel([delayed(square)(2)]) == [4]  # a worker is warm

        async def lag() -> float:
            # A full collection pytest's heap owes (80-110 ms) would be paid by whichever
            # thread allocates next, ours or the loop's: settle it first.
            gc.collect()
            async with Heartbeat() as beat:
                (result,) = await parallel([delayed(many_small_objects)(MANY)])
            assert result == many_small_objects(MANY)
            return beat.max_ms

        lags = await best_of(lag, MAX_LAG_MS)
    assert min(lags) < MAX_LAG_MS, lags


class _Odd:
    """Pickled through ``__reduce__``, as user classes often are."""

    def __init__(self, value: Any):
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Odd, (self.value,))

    def __eq__(self, other: object) -> bool:
        return type(other) is _Odd and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


def _round_trips() -> list[Any]:
    shared = [1, 2]
    big_text = "é" * 300_000  # outside the pickler's frames, read whole
    return [
        [],
        [None, 1, 2.5, "x", b"y", (1, "2"), {"a": [1, 2]}, {3, 4}, frozenset({5})],
        [b"\x00" * 5_000_000, bytearray(b"\x01" * 3_000_000), big_text],
        [np.arange(2_000_000, dtype=np.int64), np.zeros((3, 4), dtype=np.float32)],
        [shared, shared, [shared]],  # memo: one object, several references
        [_Odd(i) for i in range(10_000)],
        [{"key": i, "value": str(i) * (i % 7)} for i in range(50_000)],
        ["line\nbreaks\n" * 1000],
    ]


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_yielding_loads_round_trips_exactly(protocol: int) -> None:
    for value in _round_trips():
        body = pickle.dumps(value, protocol=protocol)
        loaded = loads_yielding(body)
        expected = pickle.loads(body)
        assert type(loaded) is type(expected)
        for got, want in zip(loaded, expected, strict=True):
            if isinstance(want, np.ndarray):
                assert got.dtype == want.dtype and np.array_equal(got, want)
            else:
                assert got == want and type(got) is type(want)
    shared_twice = loads_yielding(pickle.dumps(_round_trips()[4], protocol=5))
    assert shared_twice[0] is shared_twice[1] is shared_twice[2][0]


def test_yielding_loads_raises_what_pickle_loads_raises() -> None:
    body = pickle.dumps(list(range(100_000)), protocol=5)
    with pytest.raises(pickle.UnpicklingError) as truncated:
        loads_yielding(body[: len(body) // 2])
    with pytest.raises(pickle.UnpicklingError) as expected:
        pickle.loads(body[: len(body) // 2])
    assert str(truncated.value) == str(expected.value)


# -- a huge n_jobs ------------------------------------------------------------------------------


def _unsized(n: int) -> Iterator[Any]:
    return (delayed(square)(i) for i in range(n))


@pytest.mark.asyncio
async def test_a_huge_n_jobs_over_a_short_unsized_input_does_not_stall_the_loop() -> None:
    assert await Parallel(n_jobs=2, backend="threads")(_unsized(2)) == [0, 1]  # imports done
    began = time.perf_counter()
    async with Heartbeat() as beat:
        results = await Parallel(n_jobs=100_000, backend="threads")(_unsized(8))
    elapsed = time.perf_counter() - began
    assert results == [i * i for i in range(8)]
    assert beat.max_ms < MAX_LAG_MS, beat.max_ms
    assert elapsed < 1.0, elapsed


def _meet(barrier: threading.Barrier) -> int:
    """Returns only once every party is in a call at once."""
    return barrier.wait(TASK_WAIT)


@pytest.mark.asyncio
@pytest.mark.parametrize("sized", [False, True])
async def test_fewer_calls_than_workers_still_run_all_at_once(sized: bool) -> None:
    barrier = threading.Barrier(5)
    meet = functools.partial(_meet, barrier)  # not a plain function: batching learns nothing
    calls = (delayed(meet)() for _ in range(5))
    parallel = Parallel(n_jobs=8, backend="threads")
    results = await parallel(list(calls) if sized else calls)
    assert sorted(results) == list(range(5))
