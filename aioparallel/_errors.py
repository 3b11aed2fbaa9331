"""The exception hierarchy, and how a worker's traceback is attached to its exception.

::

    Exception
     ├── AioParallelError              base of the errors this library raises itself
     │    ├── WorkerCrashedError       a worker process died while running a task
     │    ├── InitializerError         the ``initializer`` failed in a worker: the run stops
     │    ├── TaskTimeoutError         a task ran past ``timeout=``; also the builtin
     │    │                            ``TimeoutError`` and ``multiprocessing.TimeoutError``
     │    ├── NotACallError            an input item is not a ``delayed`` call; also ``TypeError``
     │    └── SerializationError       a function, argument or result could not be (un)pickled
     │         ├── PicklingError       ... pickled; also ``pickle.PicklingError``
     │         └── UnpicklingError     ... unpickled; also ``pickle.UnpicklingError``
     └── RemoteTraceback               the worker's traceback text, chained as ``__cause__``

A task's own exception is re-raised with its original type; our errors carry a note naming the
task too. The double bases let code written for joblib (``except multiprocessing.TimeoutError``,
``except pickle.PicklingError``) and for asyncio (``except TimeoutError``) catch them unchanged,
while ``except TaskTimeoutError`` tells a task's timeout from the caller's own ``asyncio.timeout``.

Each public class says it is ``aioparallel``'s (its ``__module__``), so a traceback reads
``aioparallel.NotACallError``, the name to import, not the private module defining it.
"""

from __future__ import annotations

import multiprocessing
import pickle
import sys

__all__ = [
    "AioParallelError",
    "InitializerError",
    "NotACallError",
    "PicklingError",
    "RemoteTraceback",
    "SerializationError",
    "TaskTimeoutError",
    "UnpicklingError",
    "WorkerCrashedError",
    "attach_task",
]


class AioParallelError(Exception):
    """Base class of the errors aioparallel raises itself."""


class WorkerCrashedError(AioParallelError):
    """A worker process died while it ran a task (killed, ``os._exit``, segfault, out of memory).

    ``task_index`` is the failed task's position in the input; ``exitcode`` is the process
    exit code, negative for a signal (as in `subprocess`).
    """

    def __init__(self, message: str, task_index: int | None = None, exitcode: int | None = None):
        super().__init__(message)
        self.task_index = task_index
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.task_index, self.exitcode))


class InitializerError(AioParallelError):
    """The ``initializer`` raised (its exception is the ``__cause__``), or its worker process
    died running it. No task can run on that worker, so the run stops with this error, even
    with ``return_exceptions=True``: it is no task's outcome."""


class TaskTimeoutError(AioParallelError, TimeoutError, multiprocessing.TimeoutError):
    """A task ran past ``timeout=`` on its worker, on every backend.

    It is the builtin ``TimeoutError`` and ``multiprocessing.TimeoutError`` too (what joblib
    raises), so code catching either keeps working; catch this class to tell a task's timeout
    from your own ``asyncio.timeout`` or ``anyio.fail_after``.
    """


class NotACallError(AioParallelError, TypeError):
    """An input item that is neither a ``delayed`` call nor an ``(f, args, kwargs)`` tuple
    (``f(x)`` called directly, ``f`` itself, ``delayed(f)`` not called)."""


class SerializationError(AioParallelError):
    """A function, argument or result could not be pickled or unpickled."""


class PicklingError(SerializationError, pickle.PicklingError):
    """A function, argument, result or exception could not be pickled."""


class UnpicklingError(SerializationError, pickle.UnpicklingError):
    """A function, argument or result pickled but could not be rebuilt (unpickled)."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, kept as text."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


for _public in (
    AioParallelError,
    WorkerCrashedError,
    InitializerError,
    TaskTimeoutError,
    NotACallError,
    SerializationError,
    PicklingError,
    UnpicklingError,
    RemoteTraceback,
):
    _public.__module__ = "aioparallel"  # pickled by reference there too (a lazy name)
del _public


def describe_exit(exitcode: int | None) -> str:
    """``'exit code 3'`` or ``'signal SIGKILL'`` for a subprocess return code."""
    if exitcode is None:
        return "unknown exit status"
    if exitcode < 0:
        import signal

        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def attach_task(exc: BaseException, index: int, func_name: str, tb: str | None = None) -> None:
    """Name the task on ``exc`` and chain the worker's traceback text as its cause."""
    note = f"aioparallel: raised by task {index} ({func_name})"
    if tb is not None:
        exc.__cause__ = RemoteTraceback(
            f"\n\nWorker traceback of task {index} ({func_name}):\n{tb}"
        )
    notes = getattr(exc, "__notes__", None)
    if notes is not None and note in notes:
        return
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:  # Python 3.10 shows __notes__ too (through exceptiongroup's traceback hook)
        exc.__dict__["__notes__"] = [*(notes or []), note]
