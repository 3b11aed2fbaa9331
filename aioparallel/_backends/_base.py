"""The Backend protocol: the one plug-in point between a run and its workers.

A backend is an async context manager that starts (or borrows) its workers, plus
``open_run``, which gives a run a ``run_batch`` callable for the run's lifetime (per-run
resources such as the memmap folder live in that context). ``run_batch`` executes one batch
on one worker and returns one result per call, in order; a call that raised is a
:class:`Failure` in its slot.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .._call import Call

__all__ = ["Backend", "Batch", "Failure", "RunBatch", "RunOptions"]


class Failure:
    """A task's exception standing in its result slot (never a user's return value)."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc

    def __repr__(self) -> str:
        return f"Failure({self.exc!r})"


@dataclass(slots=True)
class Batch:
    """Consecutive calls of a run; ``start`` is the input index of ``calls[0]``."""

    start: int
    calls: Sequence[Call[Any]]
    #: Pickled size, set by backends that pickle; auto batching caps batch bytes with it.
    nbytes: int = 0


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What a backend needs to know about a run."""

    #: Seconds one task may run (from its start on the worker, not while queued).
    timeout: float | None = None
    #: Stop a batch at its first failure (``return_exceptions=False``).
    stop_on_error: bool = True
    #: Arrays above this many bytes are memmapped (process backend); None disables.
    max_nbytes: int | None = 1024**2
    mmap_mode: str = "r"
    temp_folder: str | None = None
    #: Async tasks (SPEC §8) one worker keeps in flight at once.
    worker_concurrency: int = 16


#: Runs one batch; returns one result (or :class:`Failure`) per call. With
#: ``stop_on_error`` the list may end at the first Failure.
RunBatch = Callable[[Batch], Awaitable[list[Any]]]


@runtime_checkable
class Backend(Protocol):
    """Workers that run batches of calls. Enter it to start them; exit to release them."""

    #: Canonical name, shown in messages.
    name: str
    #: How many batches it can run at once.
    n_workers: int

    async def __aenter__(self) -> Backend: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    def open_run(self, options: RunOptions) -> AbstractAsyncContextManager[RunBatch]:
        """Per-run resources; the context yields the run's ``run_batch``."""
        ...
