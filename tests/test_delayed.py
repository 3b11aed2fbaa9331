"""delayed(): what it keeps alive, and what the wrapper it returns still promises.

A service that builds a closure per request and defers it with ``delayed`` must not grow:
once the caller drops the function, its wrapper and its ``Call``s, everything they captured
can be collected. Checked with weak references to what the closures capture, not with RSS.
"""

from __future__ import annotations

import functools
import gc
import inspect
import pickle
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from aioparallel import Call, Parallel, delayed
from tests.helpers import add, square


class Sentinel:
    """Something a closure captures; a weak reference to it says whether it is still alive."""


def _wrap_closures(n: int) -> list[weakref.ref[Sentinel]]:
    """Build ``n`` distinct lambdas, each capturing its own sentinel; wrap each with delayed,
    call the wrapper and the Call it made; return only weak references to the sentinels."""
    refs = []
    for i in range(n):
        sentinel = Sentinel()
        refs.append(weakref.ref(sentinel))
        func = lambda x, s=sentinel: (s, x)  # noqa: E731  (a distinct function each time)
        call = delayed(func)(i)
        assert call()[1] == i
    return refs


def test_wrapped_functions_and_their_captures_can_be_collected() -> None:
    refs = _wrap_closures(1_000)
    gc.collect()
    alive = sum(ref() is not None for ref in refs)
    assert alive == 0, f"{alive} of 1,000 closures wrapped by delayed() are still alive"


def test_closures_of_a_local_function_can_be_collected() -> None:
    """The per-request shape: a local function closing over request data, deferred per item."""

    def handle(request: Sentinel) -> list[Call[Any]]:
        def task(x: int) -> tuple[Sentinel, int]:
            return request, x

        return [delayed(task)(x) for x in range(3)]

    refs = []
    for _ in range(100):
        request = Sentinel()
        refs.append(weakref.ref(request))
        assert [call()[1] for call in handle(request)] == [0, 1, 2]
        del request
    gc.collect()
    assert [ref for ref in refs if ref() is not None] == []


def test_the_wrapper_keeps_its_function_alive_while_held() -> None:
    sentinel = Sentinel()
    ref = weakref.ref(sentinel)
    wrapped = delayed(lambda x, s=sentinel: (s, x))
    del sentinel
    gc.collect()
    assert ref() is not None
    assert wrapped(5)()[1] == 5
    del wrapped
    gc.collect()
    assert ref() is None


def documented(x: int, y: int = 1) -> int:
    """Documented function."""
    return x + y


documented.marker = "kept"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "func",
    [documented, lambda x: x, square, functools.partial(add, y=2), Sentinel, print],
    ids=["function", "lambda", "helper", "partial", "class", "builtin"],
)
def test_the_wrapper_records_the_call(func: Callable[..., Any]) -> None:
    call = delayed(func)(1)
    assert isinstance(call, Call)
    assert call.func is func
    assert tuple(call) == (func, (1,), {})


def test_the_wrapper_keeps_metadata() -> None:
    wrapped = delayed(documented)
    assert wrapped.__name__ == "documented"
    assert wrapped.__qualname__ == "documented"
    assert wrapped.__doc__ == "Documented function."
    assert wrapped.__module__ == __name__
    assert wrapped.__wrapped__ is documented  # type: ignore[attr-defined]
    assert wrapped.marker == "kept"  # type: ignore[attr-defined]
    assert inspect.signature(wrapped) == inspect.signature(documented)
    assert "documented" in repr(wrapped)


def test_the_wrapper_of_a_nameless_callable_still_works() -> None:
    """functools.partial has no ``__name__``: the wrapper still records calls and names them."""
    wrapped = delayed(functools.partial(add, 1))
    assert wrapped(2)() == 3
    assert "partial(add)" in repr(wrapped)


def test_the_wrapper_pickles_like_its_function() -> None:
    wrapped = pickle.loads(pickle.dumps(delayed(square)))
    assert wrapped(3)() == 9


def test_each_item_gets_its_own_call() -> None:
    calls = [delayed(square)(x) for x in range(3)]
    assert [call() for call in calls] == [0, 1, 4]
    assert len({id(call) for call in calls}) == 3


@pytest.mark.anyio
async def test_a_run_of_local_closures_releases_them(anyio_backend: str) -> None:
    """Through a real run (threads): nothing the run saw keeps the closures alive after it."""
    refs = []

    def make(i: int) -> Callable[[int], int]:
        sentinel = Sentinel()
        refs.append(weakref.ref(sentinel))
        return lambda x: x + (sentinel is not None) * i

    results = await Parallel(n_jobs=2, backend="threads")(delayed(make(i))(i) for i in range(50))
    assert results == [2 * i for i in range(50)]
    gc.collect()
    assert [ref for ref in refs if ref() is not None] == []
