"""The Backend protocol: the one plug-in point between a run and its workers.

A backend is an async context manager that starts (or borrows) its workers, plus
``open_run``, which gives a run a ``run_batch`` callable for the run's lifetime (per-run
resources such as the memmap folder live in that context). ``run_batch`` executes one batch
on one worker and returns one result per call, in order; a call that raised is a
`Failure` in its slot. These names are public (``from aioparallel import Backend,
Batch, Failure, RunBatch, RunOptions``) so that users can write their own backend; the docs'
"Writing a backend" page shows one, and tests/test_custom_backend.py runs the contract suite
on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .._call import Call

__all__ = ["Backend", "Batch", "Failure", "RunBatch", "RunOptions"]


class Failure:
    """A task's exception standing in its result slot.

    A backend's ``run_batch`` puts ``Failure(exc)`` where a call raised ``exc`` (of any
    type, ``BaseException`` included), so that a task that *returns* an exception is never
    mistaken for one that raised it. The run re-raises ``exc`` (or, with
    ``return_exceptions=True``, makes it the task's result) and adds a note naming the task.

    Parameters
    ----------
    exc
        What the call raised.
    """

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc

    def __repr__(self) -> str:
        return f"Failure({self.exc!r})"


@dataclass(slots=True)
class Batch:
    """Consecutive calls of a run, for one worker.

    Parameters
    ----------
    start
        Position in the input of ``calls[0]`` (so ``calls[i]`` is task ``start + i``).
    calls
        The calls, in input order: run each as ``call.func(*call.args, **call.kwargs)``.
    nbytes
        Pickled size of the calls, set by backends that pickle them; ``batch_size="auto"``
        keeps batches under a size with it. Leave it at 0 otherwise.
    started
        ``time.perf_counter()`` when the batch began to run, set by backends that may first
        wait for a worker: ``batch_size="auto"`` sizes batches on how long the work took,
        not on how long the batch queued. Leave it at None otherwise.
    """

    start: int
    calls: Sequence[Call[Any]]
    nbytes: int = 0
    started: float | None = None


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What a backend needs to know about a run, from ``Parallel``'s parameters.

    A backend that cannot honour an option it is given (a ``timeout`` it cannot enforce)
    raises ``ValueError`` from ``open_run``, rather than ignoring it. The array options only
    concern backends that send arrays to other processes.

    Parameters
    ----------
    timeout
        Seconds one task may run, from its start on the worker (not while queued); a task
        past it is a ``Failure(TimeoutError(...))``. None: no limit.
    stop_on_error
        True (``return_exceptions=False``): ``run_batch`` may stop at the first ``Failure``
        and return the results up to and including it.
    max_nbytes
        numpy arrays above this many bytes reach process workers as memmaps; None disables.
    mmap_mode
        How workers open those memmaps: ``"r"``, ``"r+"`` or ``"c"``.
    temp_folder
        Folder for the memmap files; None picks the default.
    """

    timeout: float | None = None
    stop_on_error: bool = True
    max_nbytes: int | None = 1024**2
    mmap_mode: str = "r"
    temp_folder: str | None = None
    #: Async tasks one worker keeps in flight at once.
    worker_concurrency: int = 16


RunBatch = Callable[[Batch], Awaitable[list[Any]]]
"""Type of ``run_batch``: runs one batch on one worker and returns one result (or
`Failure`) per call, in order. With ``stop_on_error`` the list may end at the first
Failure."""


@runtime_checkable
class Backend(Protocol):
    """Workers that run batches of calls: the protocol a custom backend implements.

    Pass an object with these members as ``Parallel(backend=obj)`` or
    ``parallel_config(backend=obj)``; no base class is needed (it is a
    `typing.Protocol`, checked with ``isinstance``).

    - ``async with backend`` starts (or borrows) the workers and releases them on exit.
      ``Parallel`` enters the object for each call (once for all calls inside
      ``async with Parallel(...)``), and concurrent calls may enter it concurrently: keep
      per-entry state out of ``self``, or count entries.
    - ``open_run(options)`` holds one run's resources; the context yields that run's
      ``run_batch`` and closes the resources on every path, cancellation included.
    - ``run_batch(batch)`` runs ``batch.calls`` in order on one worker and returns one value
      per call; a call that raised is ``Failure(exc)`` in its slot. The run calls it from
      ``n_workers`` tasks at once, at most. When the run is cancelled, ``run_batch`` is
      cancelled too and must return promptly (a call that cannot be interrupted may be
      abandoned, as threads are, but must not be waited for).

    Attributes
    ----------
    name
        Shown in messages (``verbose``, errors): one word.
    n_workers
        How many batches it runs at once; ``Parallel``'s ``n_jobs``, when given, must equal
        it.
    batches_per_worker
        Optional (default 1): batches the run keeps in flight per worker, its lanes being
        ``n_workers * batches_per_worker``. A backend whose round trip is long next to a
        batch (a remote cluster) asks for 2, so that a worker has its next batch before it
        finishes the one it runs; ``pre_dispatch`` still bounds the calls in flight.
    """

    name: str
    n_workers: int

    async def __aenter__(self) -> Backend: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    def open_run(self, options: RunOptions) -> AbstractAsyncContextManager[RunBatch]:
        """Per-run resources; the context yields the run's ``run_batch``."""
        ...


def batches_per_worker(backend: Backend) -> int:
    """The backend's optional ``batches_per_worker`` (at least 1; 1 when it has none)."""
    return max(1, int(getattr(backend, "batches_per_worker", 1)))
