"""The parent holds every task's deadline on thread workers (issue 22 item 4), and the nesting
cap holds on every path (issue 22 item 6).

A thread cannot be killed, and an async task that blocks its thread's event loop (a sync
call inside async code) cannot be cancelled there either: the parent fails it at its
deadline, drops its result, and the run goes on without waiting for the thread. The blocking
tasks here wait on a ``threading.Event`` the test sets at the end, so no thread outlives it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from aioparallel import Parallel, delayed
from aioparallel.backends import threads
from aioparallel.child import async_loop
from aioparallel.child.async_loop import BLOCKED_MARGIN, CANCEL_GRACE
from tests import nesting_helpers as nh

TIMEOUT = 0.3
#: The grace periods, shortened here: these tests check who holds the deadline and what it
#: reports, not how long the library waits (the defaults would make each case ~3.6 s).
SHORT_GRACE, SHORT_MARGIN = 0.3, 0.2
assert SHORT_GRACE < CANCEL_GRACE and SHORT_MARGIN < BLOCKED_MARGIN
#: When the parent must have given up on a task that blocks its loop, at the latest, plus
#: room for a loaded machine.
GIVE_UP = TIMEOUT + SHORT_GRACE + SHORT_MARGIN + 3.0
#: Bound of any stuck call, so a broken fix cannot leave a thread behind for long.
STUCK_LIMIT = 30.0


@pytest.fixture(autouse=True)
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thread workers run ``InFlight`` in this process: its grace and the parent's watch
    both read the module constants."""
    monkeypatch.setattr(async_loop, "CANCEL_GRACE", SHORT_GRACE)
    monkeypatch.setattr(threads, "CANCEL_GRACE", SHORT_GRACE)
    monkeypatch.setattr(threads, "BLOCKED_MARGIN", SHORT_MARGIN)
    monkeypatch.setattr(async_loop, "BLOCKED_MARGIN", SHORT_MARGIN)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at the end of the test: the stuck calls return and their threads end."""
    stop = threading.Event()
    yield stop
    stop.set()


async def blocks_loop(stop: threading.Event) -> str:
    """Async, but blocks its event loop in sync sleeps until ``stop``: nothing on that loop
    can cancel it."""
    deadline = time.monotonic() + STUCK_LIMIT
    while not stop.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)  # noqa: ASYNC251  (the fault under test)
    return "late"


async def blocks_briefly(seconds: float) -> str:
    """Blocks its loop past the timeout, then returns a value that must be dropped."""
    time.sleep(seconds)  # noqa: ASYNC251  (the fault under test)
    return "late"


async def quick(x: int) -> int:
    await asyncio.sleep(0)  # the worker's own loop is asyncio, whatever the caller's
    return x


def quick_sync(x: int) -> int:
    return x


def blocks_sync(stop: threading.Event) -> str:
    stop.wait(STUCK_LIMIT)
    return "late"


def timed_out(outcome: Any, index: int, name: str) -> bool:
    return isinstance(outcome, TimeoutError) and f"task {index} ({name})" in str(outcome)


SETUPS = [
    pytest.param({"n_jobs": 2, "backend": "threads"}, id="threads"),
    pytest.param({"n_jobs": 1}, id="n_jobs=1"),
]
#: ``backend="sequential"`` with a timeout takes the one-thread path of ``n_jobs=1``: checked
#: once, by the first test.
WITH_SEQUENTIAL = [*SETUPS, pytest.param({"backend": "sequential"}, id="sequential")]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The deadline is the caller's to hold: asyncio's and trio's ways to wake it (uvloop is
    asyncio's way). Each case waits out a timeout and a grace period: the matrix stays small."""
    return str(request.param)


# -- item 4: the deadline of an async task on a thread worker --------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("setup", WITH_SEQUENTIAL)
async def test_async_task_blocking_its_loop_times_out(
    setup: dict[str, Any], release: threading.Event
) -> None:
    parallel = Parallel(timeout=TIMEOUT, return_exceptions=True, **setup)
    began = time.monotonic()
    with anyio.fail_after(GIVE_UP + 5):
        results = await parallel(
            [delayed(quick)(0), delayed(blocks_loop)(release), delayed(quick)(2), delayed(quick)(3)]
        )
    assert time.monotonic() - began < GIVE_UP
    assert timed_out(results[1], 1, "blocks_loop"), results[1]
    # task 0 began on the same loop: it finished, or was held up behind task 1 (as the
    # other tasks in flight on a process worker killed for a stuck task fail with it)
    assert results[0] == 0 or "while task 1 (blocks_loop) blocked" in str(results[0])
    assert results[2:] == [2, 3]  # not begun when the loop blocked: run on another thread


@pytest.mark.anyio
@pytest.mark.parametrize("setup", SETUPS)
async def test_async_task_past_its_timeout_has_no_result(setup: dict[str, Any]) -> None:
    """It blocks its loop past the timeout, then returns (before the parent gives up): still
    a TimeoutError, never the late value."""
    parallel = Parallel(timeout=TIMEOUT, return_exceptions=True, **setup)
    results = await parallel([delayed(blocks_briefly)(TIMEOUT + 0.3), delayed(quick)(1)])
    assert timed_out(results[0], 0, "blocks_briefly"), results[0]
    assert results[1] == 1


@pytest.mark.anyio
@pytest.mark.parametrize("setup", SETUPS)
async def test_blocked_async_task_stops_the_run(
    setup: dict[str, Any], release: threading.Event
) -> None:
    parallel = Parallel(timeout=TIMEOUT, **setup)
    with anyio.fail_after(GIVE_UP + 5), pytest.raises(TimeoutError) as caught:
        await parallel([delayed(quick)(0), delayed(blocks_loop)(release), delayed(quick)(2)])
    assert "task 1 (blocks_loop)" in str(caught.value)  # the first in input order, or the
    # one held up behind it, naming it


@pytest.mark.anyio
@pytest.mark.parametrize("setup", SETUPS)
async def test_sync_and_async_mixed_each_time_out(
    setup: dict[str, Any], release: threading.Event
) -> None:
    calls = [
        delayed(quick_sync)(0),
        delayed(blocks_loop)(release),
        delayed(quick)(2),
        delayed(blocks_sync)(release),
        delayed(quick_sync)(4),
    ]
    parallel = Parallel(timeout=TIMEOUT, return_exceptions=True, **setup)
    with anyio.fail_after(2 * GIVE_UP + 5):
        results = await parallel(calls)
    assert results[0] == 0 and results[2] == 2 and results[4] == 4
    assert timed_out(results[1], 1, "blocks_loop"), results[1]
    assert timed_out(results[3], 3, "blocks_sync"), results[3]


@pytest.mark.anyio
async def test_many_async_tasks_behind_a_blocked_loop_still_run(release: threading.Event) -> None:
    """The tasks of the batch that had not started when the loop blocked run elsewhere."""
    parallel = Parallel(
        n_jobs=2, backend="threads", timeout=TIMEOUT, return_exceptions=True, batch_size=8
    )
    calls = [delayed(blocks_loop)(release), *(delayed(quick)(i) for i in range(1, 8))]
    with anyio.fail_after(2 * GIVE_UP + 5):
        results = await parallel(calls)
    assert timed_out(results[0], 0, "blocks_loop"), results[0]
    assert results[1:] == list(range(1, 8))


_EXIT_SCRIPT = """
import asyncio, time
from aioparallel import Parallel, delayed

async def spin_async():
    while True:
        time.sleep(0.01)

def spin():
    while True:
        time.sleep(0.01)

async def main():
    for f in (spin_async, spin):
        for setup in ({"n_jobs": 2, "backend": "threads"}, {"n_jobs": 1}):
            p = Parallel(timeout=0.2, return_exceptions=True, **setup)
            print(type((await p([delayed(f)()]))[0]).__name__, flush=True)

asyncio.run(main())
"""


def test_stuck_threads_do_not_hold_up_interpreter_exit() -> None:
    """A call that never returns, given up on at its timeout, does not keep the interpreter
    from exiting (anyio's worker threads are joined at exit)."""
    proc = subprocess.run(
        [sys.executable, "-c", _EXIT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["TaskTimeoutError"] * 4


# -- item 6: the nesting cap ---------------------------------------------------------------


@pytest.mark.anyio
async def test_async_task_on_threads_nests_as_a_sync_one() -> None:
    """An implicit backend one thread level down is threads: no worker process starts."""
    me = os.getpid()
    (sync_seen, async_seen) = await Parallel(n_jobs=2, backend="threads")(
        [delayed(nh.inner_pids_sync)(3, None), delayed(nh.inner_pids)(3, None)]
    )
    assert sync_seen == ({me}, [])
    assert async_seen == ({me}, [])


@pytest.mark.anyio
async def test_processes_named_below_an_async_thread_task_run_sequentially() -> None:
    me = os.getpid()
    (seen,) = await Parallel(n_jobs=2, backend="threads")([delayed(nh.inner_pids)(2, "processes")])
    pids, messages = seen
    assert pids == {me}
    assert len(messages) == 1 and "backed parallel loops cannot" in messages[0]


@pytest.mark.anyio
@pytest.mark.parametrize("task", [nh.inner_pids_sync, nh.inner_pids], ids=["sync", "async"])
@pytest.mark.parametrize("backend", ["processes", "loky", "multiprocessing"])
async def test_processes_named_in_a_process_worker_warn_and_run_sequentially(
    task: Any, backend: str
) -> None:
    seen, worker = await Parallel(n_jobs=2)(
        [delayed(task)(2, backend), delayed(nh.inner_pids_sync)(1, None)]
    )
    pids, messages = seen
    assert len(pids) == 1 and os.getpid() not in pids  # in the worker itself
    assert len(messages) == 1 and "backed parallel loops cannot" in messages[0]
    assert "process worker" in messages[0]
    assert worker == ({next(iter(worker[0]))}, [])  # n_jobs=1: nothing to warn about


@pytest.mark.anyio
@pytest.mark.parametrize("task", [nh.inner_pids_sync, nh.inner_pids], ids=["sync", "async"])
async def test_configured_processes_in_a_process_worker_run_sequentially(task: Any) -> None:
    """A backend from parallel_config is not named in the call: sequential, no warning."""
    ((pids, messages),) = await Parallel(n_jobs=2)([delayed(task)(2, None, "processes")])
    assert len(pids) == 1 and os.getpid() not in pids
    assert messages == []


@pytest.mark.anyio
async def test_threads_named_in_a_process_worker_are_honoured() -> None:
    ((pids, messages),) = await Parallel(n_jobs=2)([delayed(nh.inner_pids_sync)(2, "threads")])
    assert len(pids) == 1 and os.getpid() not in pids  # threads of the worker
    assert messages == []
