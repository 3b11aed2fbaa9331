"""What the user reads when a call fails on a process worker: one function per way to fail.

Each names the task (its input index and function) and says what to do about it; the
worker's traceback, where there is one, is chained as the exception's cause.
"""

from __future__ import annotations

import pickle

from .._errors import (
    PicklingError,
    RemoteTraceback,
    SerializationError,
    TaskTimeoutError,
    UnpicklingError,
    WorkerCrashedError,
    attach_task,
    describe_exit,
)
from ..child.protocol import TaskError
from ..child.slot import LOADING as SLOT_LOADING
from ..child.slot import SENDING as SLOT_SENDING

__all__ = [
    "async_timeout_error",
    "closed_error",
    "crash_error",
    "killed_error",
    "lost_result_error",
    "raised_in_worker",
    "rebuild",
    "repeated_crash_error",
    "serialization_error",
    "timeout_error",
]

_DOING = {SLOT_LOADING: "unpickling the arguments of", SLOT_SENDING: "pickling the result of"}


def raised_in_worker(error: TaskError, index: int, name: str) -> BaseException:
    """The task's own exception, rebuilt in the parent; a PicklingError (or UnpicklingError)
    saying so if it could not cross back."""
    exc = rebuild(error, f"task {index} ({name})")
    attach_task(exc, index, name, error.tb)
    return exc


def rebuild(error: TaskError, who: str = "the initializer") -> BaseException:
    """The exception ``who`` raised in a worker, rebuilt in the parent with the worker's
    traceback as its cause; a PicklingError (or UnpicklingError) saying so if it could not
    cross back."""
    exc: BaseException | None = None
    if error.exc_bytes is not None:
        try:
            exc = pickle.loads(error.exc_bytes)
        except Exception:
            exc = None
    if exc is None:
        if error.type_name == "SerializationError":  # the worker could not pickle the result
            exc = PicklingError(f"{who}: {error.message}")
        else:
            kind, doing = (
                (PicklingError, "pickled")
                if error.exc_bytes is None
                else (UnpicklingError, "unpickled")
            )
            exc = kind(
                f"{who} raised {error.type_name}: {error.message} "
                f"(the exception itself could not be {doing} back to the parent)"
            )
    exc.__cause__ = RemoteTraceback(f"\n\nWorker traceback of {who}:\n{error.tb}")
    return exc


def serialization_error(
    index: int,
    name: str,
    what: str,
    cause: BaseException | None = None,
    tb: str | None = None,
    kind: type[SerializationError] = PicklingError,
) -> SerializationError:
    """``kind``: PicklingError or UnpicklingError, by which side of the trip failed."""
    error = kind(f"task {index} ({name}) {what}")
    error.__cause__ = cause
    attach_task(error, index, name, tb)
    return error


_WHILE = {
    SLOT_LOADING: " while unpickling its arguments",
    SLOT_SENDING: " while pickling its result",
}


def timeout_error(
    index: int, name: str, timeout: float, elapsed: float, pid: int, phase: int = 0
) -> TaskTimeoutError:
    """The task spent more than ``timeout`` on its worker; ``phase`` says where it was then
    (the timeout covers receiving the arguments and returning the result too)."""
    error = TaskTimeoutError(
        f"task {index} ({name}) ran past timeout={timeout:g}s ({elapsed:.1f}s)"
        f"{_WHILE.get(phase, '')}; its worker process {pid} was killed and replaced"
    )
    attach_task(error, index, name)
    return error


def async_timeout_error(
    index: int, name: str, timeout: float, elapsed: float, pid: int | None, stuck: bool
) -> TimeoutError:
    """An async task ran past ``timeout`` and was cancelled inside its worker (a process,
    or a thread: ``pid`` None)."""
    if stuck and pid is None:
        what = (
            "was cancelled but ignores cancellation: its thread keeps running it in the "
            "background (threads cannot be killed) and its result will be dropped"
        )
    elif stuck:
        what = (
            f"was cancelled, but did not finish cancelling within {elapsed - timeout:.1f}s "
            "(it ignores cancellation, or a sync call inside it blocks the event loop), so "
            f"its worker process {pid} was killed (its other tasks in flight fail with "
            "WorkerCrashedError)"
        )
    else:
        what = "was cancelled in its worker (its finally blocks ran); the worker carries on"
    error = TimeoutError(
        f"task {index} ({name}) ran past timeout={timeout:g}s ({elapsed:.1f}s) and {what}"
    )
    attach_task(error, index, name)
    return error


def crash_error(
    index: int, name: str, pid: int, exitcode: int | None, phase: int
) -> WorkerCrashedError:
    """The worker died while running the call (or unpickling its arguments, or pickling its
    result: ``phase``)."""
    error = WorkerCrashedError(
        f"the worker process (pid {pid}) {_DOING.get(phase, 'running')} task {index} "
        f"({name}) died ({describe_exit(exitcode)}): a segfault, os._exit(), an "
        "out-of-memory kill or a signal from outside; tasks of its batch that had not "
        "started run on a fresh worker",
        task_index=index,
        exitcode=exitcode,
    )
    attach_task(error, index, name)
    return error


def lost_result_error(
    index: int, name: str, pid: int, exitcode: int | None, died_on: str | None
) -> WorkerCrashedError:
    """The call had finished on the worker, but its result neither reached the pipe nor the
    slot's journal when the worker died (``died_on``: the task it was running then, or None
    between calls): a safeguard, as the worker keeps a result before the call counts as
    finished. It is not run again: it may have had side effects."""
    when = f"running {died_on}" if died_on else "between calls"
    error = WorkerCrashedError(
        f"task {index} ({name}) had finished, but its result was lost when its worker process "
        f"(pid {pid}) died {when} ({describe_exit(exitcode)}). It is not run again, as it may "
        "have had side effects; run it again yourself if that is safe.",
        task_index=index,
        exitcode=exitcode,
    )
    attach_task(error, index, name)
    return error


def killed_error(index: int, name: str, pid: int, why: str, in_flight: bool) -> WorkerCrashedError:
    """We killed the worker for another task (``why`` says which, and what it did) while this
    call was in flight on its event loop (``in_flight``), or had finished with its result
    unsent. It is not run again: it had started."""
    what = "was in flight on" if in_flight else "had finished (its result unsent) on"
    error = WorkerCrashedError(
        f"task {index} ({name}) {what} worker process {pid}, which was killed because {why}. "
        "It is not run again, as it had started; lower worker_concurrency to put fewer tasks "
        "at risk, or fix the task that was killed.",
        task_index=index,
    )
    attach_task(error, index, name)
    return error


def repeated_crash_error(index: int, name: str, crashes: int) -> WorkerCrashedError:
    """Workers kept dying between calls, before this one could run."""
    error = WorkerCrashedError(
        f"worker processes died {crashes} times in a row before task {index} ({name}) could run",
        task_index=index,
    )
    attach_task(error, index, name)
    return error


def closed_error(index: int, name: str, pid: int | None) -> WorkerCrashedError:
    """The private pool was shut down (its ``async with Parallel()`` block left) while
    this call ran on worker ``pid``, or before it could run (``pid`` None)."""
    if pid is None:
        what = f"before task {index} ({name}) could run"
    else:
        what = f"while task {index} ({name}) was running; its worker process {pid} was killed"
    error = WorkerCrashedError(
        f"the Parallel's worker pool was closed (its 'async with' block was left) {what}. "
        "Leave 'async with Parallel()' only after the calls made on it have finished.",
        task_index=index,
    )
    attach_task(error, index, name)
    return error
