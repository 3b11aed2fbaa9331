"""A worker's end: the kill a call's deadline decides, and after a death, the error each call
the worker took with it fails with.

``watch_deadline`` kills a worker whose current call has run past ``timeout`` and returns the
``Kill`` it decided on, read from the slot at that moment: the blame compares it with the
slot after the death, so a worker that moved on before the signal landed does not get the
next call blamed.

``child.slot.blame`` decides, from the slot as the dead worker left it, which calls failed
and why (a pure function of the slot, the outcomes that arrived and our own kill); this
module turns those verdicts into the errors users read, naming the task, the worker and
what killed it. What happens next to the batch (re-running, splitting, a closed pool) is
``batch.BatchRun``'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from ...child.slot import Blame, Kill, Snapshot
from ..failures import crash_error, killed_error, lost_result_error, timeout_error

if TYPE_CHECKING:
    from .worker import WorkerProcess

__all__ = ["Death", "crash_errors", "watch_deadline"]

#: A batch position -> (the task's index in its run, its function's name).
TaskOf = Callable[[int], tuple[int, str]]


@dataclass(frozen=True)
class Death:
    """How one worker ended, as the parent saw it."""

    pid: int
    exitcode: int | None
    #: The slot, final once the worker is dead.
    snap: Snapshot
    #: We killed it, for this call (a timeout, or an async call stuck cancelling).
    killed: Kill | None
    #: The run's ``timeout``, for the messages.
    timeout: float | None


def crash_errors(
    death: Death, verdicts: Blame, todo: list[int], task_of: TaskOf, stop_on_error: bool
) -> dict[int, Exception]:
    """The error for each batch position the death failed. With ``stop_on_error`` the run
    stops with the culprit's error: calls whose results were lost with it are not reported
    (nor run again)."""
    why = _kill_reason(death, todo, task_of)
    died_on = _died_on(death.snap, todo, task_of)
    failed = verdicts.failed
    if stop_on_error and verdicts.culprit >= 0:
        failed = {j: v for j, v in failed.items() if v.kind != "lost"}
    errors: dict[int, Exception] = {}
    for j, verdict in failed.items():
        position = todo[j]
        index, name = task_of(position)
        pid, exitcode = death.pid, death.exitcode
        error: Exception
        if verdict.kind == "timeout":
            started = death.killed.started if death.killed else death.snap.started
            elapsed = time.monotonic() - started
            timeout = death.timeout or 0.0
            error = timeout_error(index, name, timeout, elapsed, pid, verdict.phase)
        elif verdict.kind == "crashed" or (verdict.kind == "in_flight" and why is None):
            error = crash_error(index, name, pid, exitcode, verdict.phase)
        elif why is not None:
            error = killed_error(index, name, pid, why, verdict.kind == "in_flight")
        else:
            error = lost_result_error(index, name, pid, exitcode, died_on)
        errors[position] = error
    return errors


def _kill_reason(death: Death, todo: list[int], task_of: TaskOf) -> str | None:
    """Why we killed the worker, for the calls it took with it; None: we did not."""
    killed = death.killed
    if killed is None:
        return None
    index, name = task_of(todo[killed.position])
    task = f"task {index} ({name})"
    if killed.why == "stuck":
        return (
            f"{task} did not finish cancelling after its timeout (it blocks the event loop "
            "or ignores cancellation)"
        )
    return f"{task} ran past timeout={death.timeout:g}s"


def _died_on(snap: Snapshot, todo: list[int], task_of: TaskOf) -> str | None:
    """The task the worker was running when it died, for the messages; None: none."""
    timed = snap.timed
    if timed is None or timed[1] >= len(todo):
        return None
    index, name = task_of(todo[timed[1]])
    return f"task {index} ({name})"


async def watch_deadline(
    worker: WorkerProcess,
    seq: int,
    timeout: float,  # noqa: ASYNC109 (a per-call limit, not this function's)
) -> Kill:
    """Kill the worker when its current call of job ``seq`` has spent more than ``timeout``
    on it: unpickling its arguments (the first call's clock starts when the job does),
    running, or pickling its result. Returns at once after the kill, with the ``Kill``."""
    while True:
        timed = worker.snapshot(seq).timed
        if timed is None:  # not started, or between calls
            await anyio.sleep(min(timeout, 0.05))
            continue
        phase, position, started = timed  # loading, running or sending: the clock runs
        late = started + timeout - time.monotonic()
        if late > 0:
            await anyio.sleep(late)
            continue
        worker.kill_now()
        return Kill(position, phase, started=started)
