"""Property tests: ordering, the pre_dispatch bound and failure handling over random runs.

Each property is checked twice. On sequential and threads, every example runs its own event
loop (``anyio.run``), on asyncio or trio. On processes, fewer examples (a cold start is a
spawn per worker) share one loop for the whole test, run through a blocking portal, so its
warm pool serves every example as it serves a long-lived service.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aioparallel import Parallel, delayed
from tests.helpers import Tracker, async_calls, collect, fail_at, square

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

#: Process examples: a few, each a whole run on the shared warm pool.
PROCESS_SETTINGS = settings(SETTINGS, max_examples=8)
#: Workers of the process examples: the machine's two cores (a pool per size is kept warm).
PROCESS_JOBS = 2

loops = st.sampled_from(["asyncio", "trio"])
backends = st.sampled_from(["sequential", "threads"])
modes = st.sampled_from(["list", "generator", "generator_unordered"])
batch_sizes = st.one_of(st.just("auto"), st.integers(1, 6))
pre_dispatches = st.one_of(
    st.just("2*n_jobs"), st.just("all"), st.integers(1, 8), st.just("1.5*n_jobs")
)


#: How an example runs its ``main``: its own loop, or the test's shared one.
Runner = Callable[[Callable[[], Awaitable[Any]]], Any]


def own_loop(loop: str) -> Runner:
    return partial(anyio.run, backend=loop)


@pytest.fixture
def portal() -> Iterator[BlockingPortal]:
    """One asyncio loop (in a thread) for every example of a test; its warm process pool is
    shut down with it, before the leak check looks."""
    with start_blocking_portal("asyncio") as portal:
        yield portal


xs_strategy = st.lists(st.integers(-1000, 1000), max_size=120)


def check_results_follow_the_input(
    run: Runner,
    xs: list[int],
    n_jobs: int,
    backend: str,
    mode: str,
    batch_size: Any,
    pre_dispatch: Any,
    async_input: bool,
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

    results = run(main)
    expected = [x * x for x in xs]
    if mode == "generator_unordered":
        assert sorted(results) == sorted(expected)
    else:
        assert results == expected


@SETTINGS
@given(
    xs=xs_strategy,
    n_jobs=st.integers(1, 4),
    backend=backends,
    mode=modes,
    batch_size=batch_sizes,
    pre_dispatch=pre_dispatches,
    async_input=st.booleans(),
    loop=loops,
)
def test_results_follow_the_input(loop: str, **example: Any) -> None:
    check_results_follow_the_input(own_loop(loop), **example)


@PROCESS_SETTINGS
@given(
    xs=xs_strategy,
    mode=modes,
    batch_size=batch_sizes,
    pre_dispatch=pre_dispatches,
    async_input=st.booleans(),
)
def test_results_follow_the_input_on_processes(portal: BlockingPortal, **example: Any) -> None:
    check_results_follow_the_input(portal.call, n_jobs=PROCESS_JOBS, backend="processes", **example)


def check_in_flight_never_exceeds_pre_dispatch(
    run: Runner, n: int, n_jobs: int, backend: str, pre_dispatch: int, batch_size: Any, mode: str
) -> None:
    tracker = Tracker()

    async def main() -> list[Any]:
        p = Parallel(
            n_jobs=n_jobs,
            backend=backend,
            return_as=mode,  # type: ignore[arg-type]
            batch_size=batch_size,
            pre_dispatch=pre_dispatch,
        )
        return await collect(p, tracker.calls(n))

    results = run(main)
    assert sorted(results) == list(range(n))
    assert tracker.max_ahead <= pre_dispatch
    assert tracker.peak_running <= min(n_jobs, pre_dispatch)


@SETTINGS
@given(
    n=st.integers(0, 80),
    n_jobs=st.integers(1, 4),
    pre_dispatch=st.integers(1, 6),
    batch_size=st.one_of(st.just("auto"), st.just(1)),
    mode=modes,
    loop=loops,
)
def test_in_flight_never_exceeds_pre_dispatch(loop: str, **example: Any) -> None:
    check_in_flight_never_exceeds_pre_dispatch(own_loop(loop), backend="threads", **example)


@PROCESS_SETTINGS
@given(
    n=st.integers(0, 80),
    pre_dispatch=st.integers(1, 6),
    batch_size=st.one_of(st.just("auto"), st.just(1)),
    mode=modes,
)
def test_in_flight_never_exceeds_pre_dispatch_on_processes(
    portal: BlockingPortal, **example: Any
) -> None:
    check_in_flight_never_exceeds_pre_dispatch(
        portal.call, n_jobs=PROCESS_JOBS, backend="processes", **example
    )


def check_a_failing_task_fails_the_run(
    run: Runner,
    n: int,
    data: st.DataObject,
    n_jobs: int,
    backend: str,
    mode: str,
    batch_size: Any,
) -> Tracker:
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
        run(main)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    failed = {int(i) for i in re.findall(r"raised by task (\d+) ", notes)}
    assert len(failed) == 1 and failed <= bad, notes
    assert str(info.value) == f"task input {failed.pop()} is bad"
    if backend == "sequential" or n_jobs == 1:  # one lane: the first bad input fails first
        assert f"raised by task {min(bad)} " in notes
    assert tracker.started <= tracker.taken <= n
    return tracker


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
def test_a_failing_task_fails_the_run_and_leaves_nothing_running(loop: str, **example: Any) -> None:
    tracker = check_a_failing_task_fails_the_run(own_loop(loop), **example)
    # The loop is closed, so nothing new can start; threads cannot be killed, but these
    # short tasks end promptly.
    assert tracker.wait_idle(), "tasks still running after the run failed"


@PROCESS_SETTINGS
@given(n=st.integers(1, 60), data=st.data(), mode=modes, batch_size=batch_sizes)
def test_a_failing_task_fails_the_run_and_spares_the_warm_pool(
    portal: BlockingPortal, **example: Any
) -> None:
    """Workers busy with the failed run's calls are killed (their calls never end); the
    pool serves the next run in full."""
    check_a_failing_task_fails_the_run(
        portal.call, n_jobs=PROCESS_JOBS, backend="processes", **example
    )
    check_results_follow_the_input(
        portal.call,
        list(range(20)),
        n_jobs=PROCESS_JOBS,
        backend="processes",
        mode="list",
        batch_size=1,
        pre_dispatch="2*n_jobs",
        async_input=False,
    )
