"""The worker's world: what a worker holds, what it leaves behind, and what it remembers.

- leaving ``async with Parallel()`` while another task is mid-call fails that call with an
  error saying so, and leaks nothing (no descriptor is closed under its reader);
- a worker killed for a cancellation, a timeout or a crash takes its task's subprocesses
  with it (docs/cancellation.md);
- a task's ``os.chdir`` or ``sys.path`` change does not leak into the next run (docs/workers.md);
- a cancellation's traceback carries no internal exception as context.

Tasks live here at module level: workers import this module by name.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioparallel import Parallel, WorkerCrashedError, delayed
from tests.proc_helpers import child_pids, wait_gone
from tests.reliability.helpers import LONG, POLL_LIMIT, stamp, wait_file_sync

N_JOBS = 2

# -- tasks ---------------------------------------------------------------------------------


def start_sleeper_then(folder: str, x: int, then: str) -> int:
    """Start ``sleep`` in a subprocess, note its pid in ``folder/sleeper.pid``, then ``then``:
    block (to be cancelled or timed out) or die (``os._exit``)."""
    if x != 1:
        return x
    sleeper = subprocess.Popen(["sleep", str(LONG)])
    path = Path(folder, "sleeper.pid")
    path.with_suffix(".tmp").write_text(str(sleeper.pid))
    path.with_suffix(".tmp").rename(path)
    if then == "exit":
        os._exit(3)
    time.sleep(LONG)
    return x


def wander(x: int) -> tuple[int, str, list[str]]:
    """Change the worker's working directory and import path, as careless code does."""
    os.chdir("/")
    sys.path.insert(0, "/nowhere-wander")
    return os.getpid(), os.getcwd(), list(sys.path)


def where_am_i(x: int) -> tuple[int, str, list[str]]:
    return os.getpid(), os.getcwd(), list(sys.path)


def stamp_then_sleep(folder: str, x: int) -> int:
    """Stamp ``<x>.started``, then sleep long (to be cut short)."""
    stamp(folder, f"{x}.started")
    time.sleep(LONG)
    return x


# -- helpers -----------------------------------------------------------------------------


async def _wait_file(path: Path) -> None:
    with anyio.fail_after(POLL_LIMIT):
        while True:
            if await anyio.Path(path).exists():
                return
            await anyio.sleep(0.01)


# -- B7: leaving ``async with`` under a running call ----------------------------------------


@pytest.mark.anyio
async def test_leaving_async_with_fails_a_running_call_clearly(tmp_path: Path) -> None:
    outcome: list[BaseException] = []
    before = child_pids()

    async def call(p: Parallel[Any]) -> None:
        try:
            await p(delayed(stamp_then_sleep)(str(tmp_path), x) for x in range(1))
        except Exception as exc:
            outcome.append(exc)

    with anyio.fail_after(POLL_LIMIT):
        async with anyio.create_task_group() as tg:
            async with Parallel(n_jobs=N_JOBS) as p:
                tg.start_soon(call, p)
                await _wait_file(tmp_path / "0.started")
    [error] = outcome
    assert isinstance(error, WorkerCrashedError), repr(error)
    assert "closed" in str(error) and "task 0 (stamp_then_sleep)" in str(error), str(error)
    assert error.task_index == 0
    assert wait_gone(child_pids() - before, POLL_LIMIT) == []


# -- D14: a killed worker takes its task's subprocesses ---------------------------------------


@pytest.mark.parametrize("how", ["cancel", "timeout", "exit"])
@pytest.mark.anyio
async def test_a_killed_worker_takes_its_subprocesses(tmp_path: Path, how: str) -> None:
    then = "exit" if how == "exit" else "block"
    calls = [delayed(start_sleeper_then)(str(tmp_path), x, then) for x in range(3)]
    pid_file = tmp_path / "sleeper.pid"
    # the timeout counts the task's whole time on its worker, the first unpickling (an
    # import of this module) included: warm workers and a margin keep a loaded machine in it
    timeout = 3.0 if how == "timeout" else None
    try:
        if how == "cancel":
            with anyio.move_on_after(POLL_LIMIT) as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(Parallel(n_jobs=N_JOBS), calls)
                    await _wait_file(pid_file)
                    tg.cancel_scope.cancel()
            assert not scope.cancelled_caught
        else:
            expected = TimeoutError if how == "timeout" else WorkerCrashedError
            async with Parallel(n_jobs=N_JOBS, timeout=timeout, batch_size=1) as p:
                warm = [delayed(start_sleeper_then)(str(tmp_path), 0, then)] * (4 * N_JOBS)
                await p(warm)
                with pytest.raises(expected):
                    await p(calls)
        assert wait_file_sync(pid_file)
        sleeper = int(pid_file.read_text())
        assert wait_gone([sleeper], POLL_LIMIT) == [], f"sleep {sleeper} outlived its worker"
    finally:
        if pid_file.exists():  # never leave it behind, whatever failed
            try:
                os.kill(int(pid_file.read_text()), 9)
            except ProcessLookupError:
                pass


# -- D15: the next run sees the parent's cwd and sys.path ----------------------------------------


@pytest.mark.anyio
async def test_a_task_that_wanders_off_does_not_move_the_next_run(tmp_path: Path) -> None:
    async with Parallel(n_jobs=N_JOBS, batch_size=1) as p:
        first = await p(delayed(wander)(x) for x in range(2 * N_JOBS))
        wandered = {pid for pid, _, _ in first}
        assert all(cwd == "/" for _, cwd, _ in first)
        second = await p(delayed(where_am_i)(x) for x in range(4 * N_JOBS))
    seen = {pid for pid, _, _ in second}
    assert seen & wandered, "the second run did not reuse a worker of the first"
    for pid, cwd, path in second:
        assert cwd == os.getcwd(), f"worker {pid} runs in {cwd}"
        assert "/nowhere-wander" not in path, f"worker {pid} kept a task's sys.path change"


# -- E19: no internal exception context --------------------------------------------------------


def _chain(exc: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__context__, e.__cause__, *getattr(e, "exceptions", ())]
    return seen


@pytest.mark.anyio
async def test_a_cancelled_run_has_no_internal_exception_context(tmp_path: Path) -> None:
    """The caller's TimeoutError (and the cancellation under it) chains nothing of ours:
    the cancellation lands while the parent waits for results."""
    calls = [delayed(stamp_then_sleep)(str(tmp_path), x) for x in range(2)]

    async def expire_once_running(scope: anyio.CancelScope) -> None:
        await _wait_file(tmp_path / "0.started")
        await anyio.sleep(0.05)  # the parent now waits in its pipe reader
        scope.deadline = anyio.current_time()

    async with anyio.create_task_group() as tg:
        with pytest.raises(TimeoutError) as info:
            with anyio.fail_after(POLL_LIMIT) as scope:
                tg.start_soon(expire_once_running, scope)
                await Parallel(n_jobs=N_JOBS)(calls)
    chain = _chain(info.value)
    internal = [repr(e) for e in chain if type(e) is not TimeoutError and isinstance(e, OSError)]
    assert not internal, f"internal exceptions in the context chain: {internal}"
