"""How a batch's outcomes reach the caller, for a run of many calls (``run``) and of one
(``single``): a task's exception named with its task and raised as itself (or returned,
with ``return_exceptions``), and an error from inside a backend's task group raised as
itself, not as the group."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .._call import Call, function_name
from .._errors import attach_task
from .._pending import PendingResults
from ..backends.base import Failure
from .stream import ResultStream

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["raise_unwrapped", "settle"]

#: A Parallel call a task returned without awaiting it: no result (the in-process backends
#: hand it over as is; pickling refuses it on the others).
_UNAWAITED = frozenset({PendingResults, ResultStream})
#: The result types ``settle`` looks at one by one.
_OUTCOMES = _UNAWAITED | {Failure}


def settle(
    values: list[Any], start: int, calls: Sequence[Call[Any]], return_exceptions: bool
) -> BaseException | None:
    """A batch's outcomes as the caller gets them, in place: a task's exception (a
    ``Failure``) named with its task, and as a value with ``return_exceptions``; else the
    first one is returned, as the error that stops the run."""
    for i, value in enumerate(values if not _OUTCOMES.isdisjoint(map(type, values)) else ()):
        if type(value) in _UNAWAITED:  # the task returned Parallel(...)(calls) un-awaited
            value = values[i] = Failure(value.returned_by_task())
        if type(value) is Failure:
            if not _names_a_task(value.exc):  # a custom backend's Failure need not
                attach_task(value.exc, start + i, function_name(calls[i].func))
            if not return_exceptions:
                return _raisable(value.exc, start + i, calls[i])
            values[i] = value.exc
    return None


def _names_a_task(exc: BaseException) -> bool:
    """True once a backend has named the task on ``exc`` (ours all do)."""
    notes = getattr(exc, "__notes__", None) or ()
    return any(str(note).startswith("aioparallel: raised by task ") for note in notes)


def _raisable(exc: BaseException, index: int, call: Call[Any]) -> BaseException:
    """A task's exception as the run re-raises it: as is, except the ``StopIteration``
    family, which would read as the end of a coroutine or of a result stream (PEP 479)."""
    if not isinstance(exc, (StopIteration, StopAsyncIteration)):
        return exc
    error = RuntimeError(
        f"task {index} ({function_name(call.func)}) raised {type(exc).__name__}, which "
        "cannot propagate out of a coroutine or an async iterator (PEP 479); it is chained "
        "as this error's __cause__. Pass return_exceptions=True to get it as the task's result."
    )
    error.__cause__ = exc
    return error


def raise_unwrapped(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Raise the first real exception inside (possibly nested) exception groups, as a run
    raises a task group's error: the error itself, not a group, with its own cause."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    raise exc from exc.__cause__
