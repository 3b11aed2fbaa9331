"""A run holds one function's calls as their argument tuples (``OneFuncCalls``): it must
behave as the list of ``Call`` objects it stands for, and let those objects go as they are
taken (held in batches, they reached the garbage collector's oldest generation and started
full collections of the caller's whole heap, tens of ms each on the event loop)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aioparallel import Call, Parallel, delayed
from aioparallel._call import OneFuncCalls
from aioparallel.run.source import Source
from tests.helpers import add, async_calls, square


class MyCall(Call[Any]):
    pass


def test_held_as_one_only_for_calls_of_one_function_without_keywords() -> None:
    one = OneFuncCalls.of([delayed(square)(1), delayed(square)(2)])
    assert one is not None and one.func is square and one.args == [(1,), (2,)]
    assert OneFuncCalls.of([]) is None
    assert OneFuncCalls.of([delayed(square)(1), delayed(add)(2)]) is None
    assert OneFuncCalls.of([delayed(add)(1), delayed(add)(2, y=1)]) is None
    assert OneFuncCalls.of([MyCall(square, (1,), {})]) is None  # its own behaviour stays


OPS = st.sampled_from(["slice", "del", "add", "radd", "iadd", "index"])
EXTRA = st.sampled_from(["same", "other", "keywords", "none"])


def _extra(kind: str, n: int) -> list[Call[Any]]:
    if kind == "same":
        return [delayed(square)(100 + n), delayed(square)(200 + n)]
    if kind == "other":
        return [delayed(add)(n)]
    if kind == "keywords":
        return [delayed(square)(x=n)]
    return []


@given(st.lists(st.tuples(OPS, st.integers(-12, 12), st.integers(-12, 12), EXTRA), max_size=12))
def test_behaves_as_the_list_it_stands_for(
    ops: list[tuple[str, int, int, str]],
) -> None:
    """Each list operation a run makes on taken calls gives the same calls either way."""
    model = [delayed(square)(i) for i in range(10)]
    held: Any = OneFuncCalls.of(list(model))
    for op, a, b, kind in ops:
        extra = _extra(kind, a)
        if op == "slice":
            held, model = held[a:b], model[a:b]
        elif op == "del":
            del held[a:b]
            del model[a:b]
        elif op == "add":
            held, model = held + extra, model + extra
        elif op == "radd":
            held, model = extra + held, extra + model
        elif op == "iadd":
            held += extra
            model += extra
        elif model:
            assert held[a % len(model)] == model[a % len(model)]
        assert len(held) == len(model)
        assert list(held) == model
        assert [c.func for c in held] == [c.func for c in model]
        assert all(type(c) is Call for c in held)


def test_adding_in_place_extends_the_same_object() -> None:
    held: Any = OneFuncCalls.of([delayed(square)(1)])
    same = held
    held += [delayed(square)(2)]
    assert held is same and same.args == [(1,), (2,)]
    held += [delayed(add)(3)]  # another function: a list from now on
    assert type(held) is list and held[2] == Call(add, (3,), {})
    assert same.args == [(1,), (2,)]


async def _take_all(source: Source, n: int) -> list[Any]:
    """Takes until ``n`` calls came: a take may return fewer (it yields to the loop after
    a millisecond)."""
    taken: list[Any] = []
    while sum(map(len, taken)) < n:
        taken.append(await source.take(n - sum(map(len, taken))))
    return taken


@pytest.mark.anyio
async def test_take_holds_one_function_s_calls_as_their_arguments() -> None:
    for source in (
        Source(delayed(square)(i) for i in range(300)),
        Source(async_calls(square, range(300))),
    ):
        for first, n in ((0, 200), (200, 100)):
            taken = await _take_all(source, n)
            assert {type(calls) for calls in taken} == {OneFuncCalls}
            assert [a for calls in taken for a in calls.args] == [
                (i,) for i in range(first, first + n)
            ]
        assert len(await source.take(1)) == 0 and source.exhausted  # the generator ended
    mixed = Source([delayed(square)(1), delayed(add)(2)])
    assert type(await mixed.take(2)) is list


def _live_calls() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is Call)


@pytest.mark.anyio
async def test_a_run_lets_go_of_the_calls_it_takes() -> None:
    """While batches of 1,000 calls are in flight, at most a chunk of the input's ``Call``
    objects is alive (held as batches, all of a batch's were)."""
    n, live = 20_000, []

    def produce() -> Iterator[Call[int]]:
        for i in range(n):
            if i % 2_500 == 2_499:
                live.append(_live_calls())
            yield delayed(square)(i)

    async with Parallel(n_jobs=2, batch_size=1_000) as parallel:
        out = await parallel(produce())
    assert out == [i * i for i in range(n)]
    assert max(live) < 300, live
