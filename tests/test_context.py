"""``aioparallel.propagate``: the caller's context variables are set in process workers while
each call runs, and reset after; threads and the sequential backend see the caller's whole
context already. Variables and tasks live in ``tests.observe_helpers`` (the workers import
it to find the same variables)."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator

import pytest

from aioparallel import Parallel, PicklingError, delayed, propagate
from aioparallel._context import forget
from tests import observe_helpers as oh

UNSET = "<unset>"


@pytest.fixture
def propagated() -> Iterator[None]:
    propagate(oh.REQUEST_ID, oh.TENANT)
    try:
        yield
    finally:
        forget(oh.REQUEST_ID, oh.TENANT)


@pytest.mark.anyio
@pytest.mark.usefixtures("propagated")
async def test_values_are_set_per_call_and_reset_after() -> None:
    calls = [delayed(oh.read_then_set)(), delayed(oh.read)()]  # one batch: one worker
    async with Parallel(n_jobs=2, batch_size=2) as parallel:
        request = oh.REQUEST_ID.set("req-1")
        first = await parallel(calls)
        oh.REQUEST_ID.set("req-2")
        tenant = oh.TENANT.set("acme")
        second = await parallel(calls)
        oh.REQUEST_ID.reset(request)  # both unset again, as before the test
        oh.TENANT.reset(tenant)
        unset = await parallel(calls)
    # the first call's own set() ended with it: the next call sees the caller's value
    assert [r[:2] for r in first] == [("req-1", UNSET), ("req-1", UNSET)]
    assert [r[:2] for r in second] == [("req-2", "acme"), ("req-2", "acme")]
    assert [r[:2] for r in unset] == [(UNSET, UNSET), (UNSET, UNSET)]
    assert len({r[2] for r in first + second + unset}) <= 2  # the same workers, reused


@pytest.mark.anyio
@pytest.mark.usefixtures("propagated")
async def test_async_tasks_see_the_values_in_their_own_context() -> None:
    token = oh.REQUEST_ID.set("req-async")
    calls = [delayed(oh.read_async)(x) for x in range(4)] + [delayed(oh.read)()]
    try:
        async with Parallel(n_jobs=2, batch_size=5) as parallel:
            results = await parallel(calls)
    finally:
        oh.REQUEST_ID.reset(token)
    assert [r[0] for r in results] == ["req-async"] * 5


@pytest.mark.anyio
@pytest.mark.usefixtures("propagated")
async def test_a_value_that_does_not_pickle_fails_its_calls_naming_the_variable() -> None:
    token = oh.REQUEST_ID.set(oh.UNPICKLABLE)  # type: ignore[arg-type]
    try:
        async with Parallel(n_jobs=2) as parallel:
            with pytest.raises(PicklingError) as caught:
                await parallel([delayed(oh.read)()])
            oh.REQUEST_ID.set("fine again")
            assert (await parallel([delayed(oh.read)()]))[0][0] == "fine again"
    finally:
        oh.REQUEST_ID.reset(token)
    message = str(caught.value)
    assert "task 0 (read)" in message
    assert "'request_id'" in message
    assert "tests.observe_helpers.REQUEST_ID" in message
    assert "set a picklable value" in message


def test_propagate_takes_module_level_context_variables_only() -> None:
    local: contextvars.ContextVar[str] = contextvars.ContextVar("local")
    with pytest.raises(ValueError, match="'local': it is not a module-level attribute"):
        propagate(local)
    with pytest.raises(TypeError, match="not str"):
        propagate("request_id")  # type: ignore[arg-type]


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["threads", "sequential"])
async def test_threads_and_sequential_see_the_callers_context(backend: str) -> None:
    token = oh.REQUEST_ID.set("in-process")  # not propagated: no need
    try:
        results = await Parallel(n_jobs=2, backend=backend)(delayed(oh.read)(x) for x in range(3))
    finally:
        oh.REQUEST_ID.reset(token)
    assert [r[0] for r in results] == ["in-process"] * 3
