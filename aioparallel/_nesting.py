"""Nested ``Parallel`` calls: how deep in workers a call is made, and joblib's cap.

A ``Parallel`` called from a task already running on a thread worker would otherwise start
``n_jobs`` more threads at every level of a recursion, without bound (joblib's "thread bomb").
As in joblib, a ``Parallel`` whose backend comes from ``parallel_config`` or the default
(not named in the call itself) uses:

- depth 0 (the caller's own code): that backend;
- depth 1 (a task on a thread worker, sync or async): threads, where the backend would be
  processes;
- depth 2 and more: the sequential path.

Each backend declares its rule in its registry entry (``backends.base``): ``"processes"``
for one that starts processes, ``"threads"`` for thread workers, none for the others.
Process workers count as nested on their own (``_system.in_worker``): there, a ``Parallel``
that names no backend runs sequentially. A process backend named in the call, below a thread
worker or inside a process worker, runs sequentially too, with the warning joblib gives
(a worker starting workers of its own at every level is the process bomb); threads named
in the call are honoured everywhere.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from ._system import in_worker

if TYPE_CHECKING:
    from .backends.base import BackendEntry

__all__ = ["cap_nesting", "deeper", "thread_depth"]

P = ParamSpec("P")
R = TypeVar("R")

#: Thread workers between the caller and the code now running; set in the worker thread's
#: copy of the context (anyio runs each worker call in a copy of the caller's context).
_thread_depth: ContextVar[int] = ContextVar("aioparallel_thread_depth", default=0)


def thread_depth() -> int:
    """0 in the caller's code; 1 in a task on a thread worker; 2 in a task of a Parallel
    called from there, and so on."""
    return _thread_depth.get()


def deeper(func: Callable[P, R]) -> Callable[P, R]:
    """``func``, run one thread-worker level deeper (for the thread backend's worker calls)."""

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        token = _thread_depth.set(_thread_depth.get() + 1)
        try:
            return func(*args, **kwargs)
        finally:
            _thread_depth.reset(token)

    return run


def cap_nesting(entry: BackendEntry, explicit: bool, n_jobs: int | None) -> str:
    """The backend a ``Parallel`` created here runs on, given the one it resolved to (by the
    nesting rule ``entry`` declares)."""
    if entry.nesting is None:
        return entry.name
    depth = thread_depth()
    worker = in_worker()
    if entry.nesting == "processes" and (depth or worker):
        if explicit and n_jobs not in (None, 1):
            where = "inside a process worker" if worker else "below threads (a thread worker)"
            warnings.warn(
                f"Process-backed parallel loops cannot be nested {where}: this "
                f"Parallel(n_jobs={n_jobs}, backend={entry.name!r}) runs its calls sequentially "
                "(n_jobs=1), as in joblib; name backend='threads' to run them in parallel here",
                UserWarning,
                stacklevel=4,
            )
        if not explicit and depth == 1 and not worker:
            return "threads"
        return "sequential"
    if explicit or depth < 2:
        return entry.name
    return "sequential"
