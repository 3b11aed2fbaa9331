"""Property tests: ordering, the pre_dispatch bound and failure handling over random runs.

Each example runs its own event loop (``anyio.run``), on asyncio or trio.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aioparallel import Parallel, delayed
from tests.helpers import Tracker, async_calls, fail_at, square

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

loops = st.sampled_from(["asyncio", "trio"])
backends = st.sampled_from(["sequential", "threads"])
modes = st.sampled_from(["list", "generator", "generator_unordered"])
batch_sizes = st.one_of(st.just("auto"), st.integers(1, 6))
pre_dispatches = st.one_of(
    st.just("2*n_jobs"), st.just("all"), st.integers(1, 8), st.just("1.5*n_jobs")
)


async def collect(p: Parallel[Any], calls: Any) -> list[Any]:
    if p.return_as == "list":
        return list(await p(calls))
    async with p(calls) as stream:
        return [r async for r in stream]


@SETTINGS
@given(
    xs=st.lists(st.integers(-1000, 1000), max_size=120),
    n_jobs=st.integers(1, 4),
    backend=backends,
    mode=modes,
    batch_size=batch_sizes,
    pre_dispatch=pre_dispatches,
    async_input=st.booleans(),
    loop=loops,
)
def test_results_follow_the_input(
    xs: list[int],
    n_jobs: int,
    backend: str,
    mode: str,
    batch_size: Any,
    pre_dispatch: Any,
    async_input: bool,
    loop: str,
) -> None:
    async def main() -> list[Any]:
        p = Parallel(
            n_jobs=n_jobs,
            backend=backend,
            return_as=mode,  # type: ignore[arg-type]
            batch_size=batch_size,
            pre_dispatch=pre_dispatch,
        )
        calls = async_calls(square, xs) if async_input else (delayed(square)(x) for x in xs)
        return await collect(p, calls)

    results = anyio.run(main, backend=loop)
    expected = [x * x for x in xs]
    if mode == "generator_unordered":
        assert sorted(results) == sorted(expected)
    else:
        assert results == expected


@SETTINGS
@given(
    n=st.integers(0, 80),
    n_jobs=st.integers(1, 4),
    pre_dispatch=st.integers(1, 6),
    batch_size=st.one_of(st.just("auto"), st.just(1)),
    mode=modes,
    loop=loops,
)
def test_in_flight_never_exceeds_pre_dispatch(
    n: int, n_jobs: int, pre_dispatch: int, batch_size: Any, mode: str, loop: str
) -> None:
    tracker = Tracker()

    async def main() -> list[Any]:
        p = Parallel(
            n_jobs=n_jobs,
            backend="threads",
            return_as=mode,  # type: ignore[arg-type]
            batch_size=batch_size,
            pre_dispatch=pre_dispatch,
        )
        return await collect(p, tracker.calls(n))

    results = anyio.run(main, backend=loop)
    assert sorted(results) == list(range(n))
    assert tracker.max_ahead <= pre_dispatch
    assert tracker.peak_running <= min(n_jobs, pre_dispatch)


@SETTINGS
@given(
    n=st.integers(1, 60),
    data=st.data(),
    n_jobs=st.integers(1, 4),
    backend=backends,
    mode=modes,
    batch_size=batch_sizes,
    loop=loops,
)
def test_a_failing_task_fails_the_run_and_leaves_nothing_running(
    n: int,
    data: st.DataObject,
    n_jobs: int,
    backend: str,
    mode: str,
    batch_size: Any,
    loop: str,
) -> None:
    bad = data.draw(st.sets(st.integers(0, n - 1), min_size=1), label="bad")
    tracker = Tracker()

    async def main() -> None:
        p = Parallel(
            n_jobs=n_jobs,
            backend=backend,
            return_as=mode,  # type: ignore[arg-type]
            batch_size=batch_size,
        )
        await collect(p, tracker.calls(n, partial(fail_at, bad=bad)))

    with pytest.raises(ValueError, match="task input") as info:
        anyio.run(main, backend=loop)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    failed = {int(i) for i in re.findall(r"raised by task (\d+) ", notes)}
    assert len(failed) == 1 and failed <= bad, notes
    assert str(info.value) == f"task input {failed.pop()} is bad"
    if backend == "sequential" or n_jobs == 1:  # one lane: the first bad input fails first
        assert f"raised by task {min(bad)} " in notes
    # The loop is closed, so nothing new can start; threads cannot be killed, but these
    # short tasks end promptly.
    assert tracker.wait_idle(), "tasks still running after the run failed"
    assert tracker.started <= tracker.taken <= n
